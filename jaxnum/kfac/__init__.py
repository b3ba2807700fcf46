"""K-FAC (Martens and Grosse 2015) as an optax transformation, for Flax models.

- Capture: linen layers :class:`Dense` and :class:`Conv` (2-D, the KFC
  approximation), NNX layers :class:`jaxnum.kfac.nnx.Linear` and
  :class:`jaxnum.kfac.nnx.Conv`, and for plain-function models the
  registering layers :func:`dense` and :func:`conv`. A layer called several
  times in one forward pass contributes every use (summed, as KFC sums
  positions).
- :func:`value_grad_and_stats` (linen or plain function;
  :func:`jaxnum.kfac.nnx.value_grad_and_stats` for NNX): loss, gradients and
  statistics from one forward and two backward passes (true or empirical
  Fisher), averaged over a ``shard_map`` axis with ``axis_name``.
- :func:`scale_by_kfac` and the ready chain :func:`optimizer`;
  :func:`scale_by_adaptive_kfac` (``optimizer(None)``) picks step size and
  momentum from the exact quadratic model (:func:`fisher_gram_fn`); the factor
  mathematics in :mod:`jaxnum.kfac.factors`.
"""

from jaxnum.kfac import nnx
from jaxnum.kfac.adaptive import (
    ScaleByAdaptiveKFACState,
    fisher_gram_fn,
    scale_by_adaptive_kfac,
)
from jaxnum.kfac.capture import LOSSES, Conv, Dense, value_grad_and_stats
from jaxnum.kfac.factors import (
    KroneckerFactors,
    dense_factors,
    factored_damping,
    kronecker_precondition,
    update_moving_average,
)
from jaxnum.kfac.functional import conv, dense
from jaxnum.kfac.transform import ScaleByKFACState, optimizer, scale_by_kfac

__all__ = [
    "LOSSES",
    "Conv",
    "Dense",
    "KroneckerFactors",
    "ScaleByAdaptiveKFACState",
    "ScaleByKFACState",
    "conv",
    "dense",
    "dense_factors",
    "factored_damping",
    "fisher_gram_fn",
    "kronecker_precondition",
    "nnx",
    "optimizer",
    "scale_by_adaptive_kfac",
    "scale_by_kfac",
    "update_moving_average",
    "value_grad_and_stats",
]
