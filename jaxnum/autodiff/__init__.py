"""Differentiation tools: Hessian- and Gauss-Newton-vector products, stochastic
trace/diagonal estimators, finite differences."""

from jaxnum.autodiff.estimators import (
    TraceEstimate,
    diagonal_estimate,
    hessian_diag,
    hessian_trace,
    trace_estimate,
)
from jaxnum.autodiff.finite_differences import ErrorCurve, derivative, fd_error_curve
from jaxnum.autodiff.gradient_check import (
    GradcheckError,
    GradcheckReport,
    TaylorTest,
    gradcheck,
    taylor_test,
)
from jaxnum.autodiff.hessian_vector import gnvp_fn, hvp, hvp_fn

__all__ = [
    "ErrorCurve",
    "GradcheckError",
    "GradcheckReport",
    "TaylorTest",
    "TraceEstimate",
    "derivative",
    "diagonal_estimate",
    "fd_error_curve",
    "gnvp_fn",
    "gradcheck",
    "hessian_diag",
    "hessian_trace",
    "hvp",
    "hvp_fn",
    "taylor_test",
    "trace_estimate",
]
