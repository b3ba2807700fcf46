"""Precision tools: float formats, mixed-precision policy, loss scaling, clipping,
non-finite diagnostics and streaming softmax."""

from jaxnum.precision.clipping import ClipByGlobalNormState, clip_by_global_norm, global_norm
from jaxnum.precision.formats import FloatFormat, float_format, float_formats
from jaxnum.precision.nonfinite import (
    NonfiniteOp,
    NonfiniteReport,
    first_nonfinite,
    nonfinite_report,
    overflow_fraction,
    underflow_fraction,
)
from jaxnum.precision.online import online_logsumexp, online_softmax
from jaxnum.precision.policy import Policy
from jaxnum.precision.scaling import (
    LossScalingState,
    all_finite,
    current_loss_scale,
    loss_scaling,
    scaled_value_and_grad,
)

__all__ = [
    "ClipByGlobalNormState",
    "FloatFormat",
    "LossScalingState",
    "NonfiniteOp",
    "NonfiniteReport",
    "Policy",
    "all_finite",
    "clip_by_global_norm",
    "current_loss_scale",
    "first_nonfinite",
    "float_format",
    "float_formats",
    "global_norm",
    "loss_scaling",
    "nonfinite_report",
    "online_logsumexp",
    "online_softmax",
    "overflow_fraction",
    "scaled_value_and_grad",
    "underflow_fraction",
]
