"""K-FAC (Martens and Grosse 2015), in progress (issue 6).

Built so far: the Kronecker-factor mathematics in :mod:`jaxnum.kfac.factors`
(statistics of a dense layer, moving averages, factored Tikhonov damping with
the pi heuristic, the preconditioned gradient) and, in
:mod:`jaxnum.kfac.capture`, the linen :class:`Dense` capture layer with
:func:`value_grad_and_stats` (true or empirical Fisher), and
:func:`scale_by_kfac` for dense layers. Not built yet: Conv, the NNX layers,
plain-function registration, layers used twice, sharding; :func:`optimizer`
is the ready chain.
"""

from jaxnum.kfac.capture import LOSSES, Dense, value_grad_and_stats
from jaxnum.kfac.factors import (
    KroneckerFactors,
    dense_factors,
    factored_damping,
    kronecker_precondition,
    update_moving_average,
)
from jaxnum.kfac.transform import ScaleByKFACState, optimizer, scale_by_kfac

__all__ = [
    "LOSSES",
    "Dense",
    "KroneckerFactors",
    "ScaleByKFACState",
    "dense_factors",
    "factored_damping",
    "kronecker_precondition",
    "optimizer",
    "scale_by_kfac",
    "update_moving_average",
    "value_grad_and_stats",
]
