"""K-FAC (Martens and Grosse 2015), in progress (issue 6).

Built so far: the Kronecker-factor mathematics in :mod:`jaxnum.kfac.factors`
(statistics of a dense layer, moving averages, factored Tikhonov damping with
the pi heuristic, the preconditioned gradient). The capture layers and the
``scale_by_kfac`` transformation are not built yet.
"""

from jaxnum.kfac.factors import (
    KroneckerFactors,
    dense_factors,
    factored_damping,
    kronecker_precondition,
    update_moving_average,
)

__all__ = [
    "KroneckerFactors",
    "dense_factors",
    "factored_damping",
    "kronecker_precondition",
    "update_moving_average",
]
