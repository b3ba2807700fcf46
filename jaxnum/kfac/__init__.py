"""K-FAC (Martens and Grosse 2015), in progress (issue 6).

Built so far: the Kronecker-factor mathematics in :mod:`jaxnum.kfac.factors`
(statistics, moving averages, factored Tikhonov damping with the pi
heuristic, the preconditioned gradient); in :mod:`jaxnum.kfac.capture` the
linen capture layers :class:`Dense` and :class:`Conv` (2-D, the KFC
approximation) with :func:`value_grad_and_stats` (true or empirical Fisher);
:func:`scale_by_kfac` and the ready chain :func:`optimizer`. Not built yet:
the NNX layers, plain-function registration, shard_map. A layer called
several times in one forward pass contributes every use (summed, as KFC sums
positions).
"""

from jaxnum.kfac.capture import LOSSES, Conv, Dense, value_grad_and_stats
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
    "Conv",
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
