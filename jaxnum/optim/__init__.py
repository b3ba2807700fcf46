"""Second-order optax transformations and the ``minimize`` driver.

L-BFGS (:func:`scale_by_lbfgs`, :func:`lbfgs`) with a More-Thuente strong-Wolfe
line search (:func:`scale_by_strong_wolfe`), and :func:`minimize`, a whole
full-batch solve in one jitted ``lax.while_loop``.
"""

from jaxnum.optim.lbfgs import (
    ScaleByLBFGSState,
    inverse_hessian_product,
    lbfgs,
    scale_by_lbfgs,
    two_loop,
)
from jaxnum.optim.linesearch import (
    StrongWolfeState,
    more_thuente_step,
    scale_by_strong_wolfe,
    strong_wolfe_search,
)
from jaxnum.optim.minimize import MinimizeResult, minimize

__all__ = [
    "MinimizeResult",
    "ScaleByLBFGSState",
    "StrongWolfeState",
    "inverse_hessian_product",
    "lbfgs",
    "minimize",
    "more_thuente_step",
    "scale_by_lbfgs",
    "scale_by_strong_wolfe",
    "strong_wolfe_search",
    "two_loop",
]
