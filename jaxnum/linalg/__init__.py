"""Linear algebra: linear operators, randomized SVD and Nystrom eigendecomposition."""

from jaxnum.linalg.operators import (
    LinearOperator,
    as_operator,
    hessian_operator,
    jacobian_operator,
)
from jaxnum.linalg.randomized import randomized_eigh, randomized_range_finder, randomized_svd

__all__ = [
    "LinearOperator",
    "as_operator",
    "hessian_operator",
    "jacobian_operator",
    "randomized_eigh",
    "randomized_range_finder",
    "randomized_svd",
]
