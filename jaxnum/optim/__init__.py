"""Second-order optax transformations and the ``minimize`` driver.

L-BFGS ([`scale_by_lbfgs`][jaxnum.optim.scale_by_lbfgs], [`lbfgs`][jaxnum.optim.lbfgs]) with a
More-Thuente strong-Wolfe
line search ([`scale_by_strong_wolfe`][jaxnum.optim.scale_by_strong_wolfe]), and
[`minimize`][jaxnum.optim.minimize], a whole
full-batch solve in one jitted ``lax.while_loop``. Newton-Raphson root finding
([`newton_root`][jaxnum.optim.newton_root]); every solver reports a [`Status`][jaxnum.optim.Status]
and the empirical order of convergence
([`convergence_order`][jaxnum.optim.convergence_order]). Hessian-free Newton with
Levenberg-Marquardt
damping ([`scale_by_newton_cg`][jaxnum.optim.scale_by_newton_cg];
``minimize(method="newton-cg"|"newton")``)
and Gauss-Newton / Levenberg-Marquardt least squares ([`gauss_newton`][jaxnum.optim.gauss_newton]).
"""

from jaxnum._src.status import Status
from jaxnum.optim.driver import MinimizeResult, minimize
from jaxnum.optim.linesearch import (
    StrongWolfeResult,
    StrongWolfeState,
    scale_by_strong_wolfe,
    strong_wolfe_search,
)
from jaxnum.optim.newton import (
    ConvergenceOrder,
    NewtonRootResult,
    convergence_order,
    newton_root,
)
from jaxnum.optim.newton_cg import ScaleByNewtonCGState, scale_by_newton_cg
from jaxnum.optim.nonlinear_least_squares import GaussNewtonResult, gauss_newton
from jaxnum.optim.quasi_newton import (
    ScaleByLBFGSState,
    lbfgs,
    reset_lbfgs_memory,
    scale_by_lbfgs,
)

__all__ = [
    "ConvergenceOrder",
    "GaussNewtonResult",
    "MinimizeResult",
    "NewtonRootResult",
    "ScaleByLBFGSState",
    "ScaleByNewtonCGState",
    "Status",
    "StrongWolfeResult",
    "StrongWolfeState",
    "convergence_order",
    "gauss_newton",
    "lbfgs",
    "minimize",
    "newton_root",
    "reset_lbfgs_memory",
    "scale_by_lbfgs",
    "scale_by_newton_cg",
    "scale_by_strong_wolfe",
    "strong_wolfe_search",
]
