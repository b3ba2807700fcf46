"""K-FAC (Martens and Grosse 2015) as an optax transformation, for Flax models.

- Capture: linen layers :class:`Dense` and :class:`Conv` (2-D, the KFC
  approximation), NNX layers :class:`jaxnum.kfac.nnx.Linear` and
  :class:`jaxnum.kfac.nnx.Conv`, and for plain-function models the
  registering layers :func:`dense` and :func:`conv`. A layer called several
  times in one forward pass contributes every use (summed, as KFC sums
  positions).
- :func:`value_grad_and_stats` (linen or plain function;
  :func:`jaxnum.kfac.nnx.value_grad_and_stats` for NNX): loss, gradients and
  statistics (:class:`KroneckerFactors` per layer) from one forward and two
  backward passes (true or empirical Fisher), averaged over a ``shard_map``
  axis with ``axis_name``.
- :func:`scale_by_kfac` (the preconditioner) and the ready chain
  :func:`optimizer` (a fixed learning rate, momentum, KL clip);
  :func:`adaptive_optimizer` picks step size and momentum every step from the
  exact quadratic model (:func:`fisher_gram_fn`).

The factor mathematics (batch factors, moving averages, factored damping, the
Kronecker solve) are internal steps of :func:`scale_by_kfac`, not exported.
"""

from jaxnum.kfac import nnx
from jaxnum.kfac._factors import KroneckerFactors
from jaxnum.kfac.adaptive import (
    ScaleByAdaptiveKFACState,
    adaptive_optimizer,
    fisher_gram_fn,
)
from jaxnum.kfac.capture import LOSSES, Conv, Dense, value_grad_and_stats
from jaxnum.kfac.chains import optimizer
from jaxnum.kfac.functional import conv, dense
from jaxnum.kfac.transform import ScaleByKFACState, scale_by_kfac

__all__ = [
    "LOSSES",
    "Conv",
    "Dense",
    "KroneckerFactors",
    "ScaleByAdaptiveKFACState",
    "ScaleByKFACState",
    "adaptive_optimizer",
    "conv",
    "dense",
    "fisher_gram_fn",
    "nnx",
    "optimizer",
    "scale_by_kfac",
    "value_grad_and_stats",
]
