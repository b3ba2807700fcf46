"""K-FAC (Martens and Grosse 2015) as an optax transformation, for Flax models.

- Capture: linen layers [`Dense`][jaxnum.kfac.Dense] and [`Conv`][jaxnum.kfac.Conv] (2-D, the KFC
  approximation), NNX layers [`jaxnum.kfac.nnx.Linear`][jaxnum.kfac.nnx.Linear] and
  [`jaxnum.kfac.nnx.Conv`][jaxnum.kfac.nnx.Conv], and for plain-function models the
  registering layers [`dense`][jaxnum.kfac.dense] and [`conv`][jaxnum.kfac.conv]. A layer called
  several
  times in one forward pass contributes every use (summed, as KFC sums
  positions).
- [`value_grad_and_stats`][jaxnum.kfac.value_grad_and_stats] (linen or plain function;
  [`jaxnum.kfac.nnx.value_grad_and_stats`][jaxnum.kfac.nnx.value_grad_and_stats] for NNX): loss,
  gradients and
  statistics ([`KroneckerFactors`][jaxnum.kfac.KroneckerFactors] per layer) from one forward and two
  backward passes (true or empirical Fisher), averaged over a ``shard_map``
  axis with ``axis_name``.
- [`scale_by_kfac`][jaxnum.kfac.scale_by_kfac] (the preconditioner) and the ready chain
  [`optimizer`][jaxnum.kfac.optimizer] (a fixed learning rate, momentum, KL clip);
  [`adaptive_optimizer`][jaxnum.kfac.adaptive_optimizer] picks step size and momentum every step
  from the
  exact quadratic model ([`fisher_gram_fn`][jaxnum.kfac.fisher_gram_fn]).

- [`scale_by_ekfac`][jaxnum.kfac.scale_by_ekfac] and its chain [`ekfac`][jaxnum.kfac.ekfac]
  (George et al. 2018): K-FAC's eigenbasis with the diagonal re-estimated in
  it from per-example statistics (``value_grad_and_stats(..., per_example=True)``).

The factor mathematics (batch factors, moving averages, factored damping, the
Kronecker solve) are internal steps of [`scale_by_kfac`][jaxnum.kfac.scale_by_kfac], not exported.
"""

from jaxnum.kfac import nnx
from jaxnum.kfac._factors import KroneckerFactors, PerExampleFactors
from jaxnum.kfac.adaptive import (
    ScaleByAdaptiveKFACState,
    adaptive_optimizer,
    fisher_gram_fn,
)
from jaxnum.kfac.capture import LOSSES, Conv, Dense, value_grad_and_stats
from jaxnum.kfac.chains import optimizer
from jaxnum.kfac.eigenbasis import ScaleByEKFACState, ekfac, scale_by_ekfac
from jaxnum.kfac.functional import conv, dense
from jaxnum.kfac.transform import ScaleByKFACState, scale_by_kfac

__all__ = [
    "LOSSES",
    "Conv",
    "Dense",
    "KroneckerFactors",
    "PerExampleFactors",
    "ScaleByAdaptiveKFACState",
    "ScaleByEKFACState",
    "ScaleByKFACState",
    "adaptive_optimizer",
    "conv",
    "dense",
    "ekfac",
    "fisher_gram_fn",
    "nnx",
    "optimizer",
    "scale_by_ekfac",
    "scale_by_kfac",
    "value_grad_and_stats",
]
