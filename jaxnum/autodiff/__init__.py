"""Differentiation tools: Hessian- and Gauss-Newton-vector products, finite differences."""

from jaxnum.autodiff.finite_differences import derivative, fd_error_curve
from jaxnum.autodiff.hvp import gnvp_fn, hvp, hvp_fn

__all__ = ["derivative", "fd_error_curve", "gnvp_fn", "hvp", "hvp_fn"]
