"""jaxnum: the numerical mathematics under ML training, as small pure JAX functions.

``import jaxnum as jn``; the subpackages hold the rest (``jaxnum.precision``...).
"""

from jaxnum import autodiff, kfac, kron, linalg, lora, optim, precision, serialization
from jaxnum.kfac import scale_by_kfac
from jaxnum.kron import scale_by_shampoo, scale_by_soap, shampoo, soap
from jaxnum.optim import (
    Status,
    lbfgs,
    minimize,
    scale_by_lbfgs,
    scale_by_newton_cg,
    scale_by_strong_wolfe,
)
from jaxnum.precision import (
    ClipByGlobalNormState,
    FloatFormat,
    LossScalingState,
    NonfiniteOp,
    NonfiniteReport,
    Policy,
    all_finite,
    clip_by_global_norm,
    current_loss_scale,
    first_nonfinite,
    float_formats,
    global_norm,
    loss_scaling,
    nonfinite_report,
    online_logsumexp,
    online_softmax,
    overflow_fraction,
    scaled_value_and_grad,
    underflow_fraction,
)

__version__ = "0.1.0"

__all__ = [
    "ClipByGlobalNormState",
    "FloatFormat",
    "LossScalingState",
    "NonfiniteOp",
    "NonfiniteReport",
    "Policy",
    "Status",
    "all_finite",
    "autodiff",
    "clip_by_global_norm",
    "current_loss_scale",
    "first_nonfinite",
    "float_formats",
    "global_norm",
    "kfac",
    "kron",
    "lbfgs",
    "linalg",
    "lora",
    "loss_scaling",
    "minimize",
    "nonfinite_report",
    "online_logsumexp",
    "online_softmax",
    "optim",
    "overflow_fraction",
    "precision",
    "scale_by_kfac",
    "scale_by_lbfgs",
    "scale_by_newton_cg",
    "scale_by_shampoo",
    "scale_by_soap",
    "scale_by_strong_wolfe",
    "scaled_value_and_grad",
    "serialization",
    "shampoo",
    "soap",
    "underflow_fraction",
]
