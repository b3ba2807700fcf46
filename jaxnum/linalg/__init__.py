"""Linear algebra: operators, randomized SVD and Nystrom, least squares, Krylov, matrix roots."""

from jaxnum._src.status import Status
from jaxnum.linalg.krylov import (
    CGResult,
    LanczosResult,
    SpectralDensity,
    cg,
    lanczos,
    spectral_density,
    top_eigenvalues,
)
from jaxnum.linalg.least_squares import condition_number, lstsq
from jaxnum.linalg.matrix_roots import matrix_inverse_root
from jaxnum.linalg.operators import (
    LinearOperator,
    as_operator,
    hessian_operator,
    jacobian_operator,
)
from jaxnum.linalg.randomized import randomized_eigh, randomized_range_finder, randomized_svd

__all__ = [
    "CGResult",
    "LanczosResult",
    "LinearOperator",
    "SpectralDensity",
    "Status",
    "as_operator",
    "cg",
    "condition_number",
    "hessian_operator",
    "jacobian_operator",
    "lanczos",
    "lstsq",
    "matrix_inverse_root",
    "randomized_eigh",
    "randomized_range_finder",
    "randomized_svd",
    "spectral_density",
    "top_eigenvalues",
]
