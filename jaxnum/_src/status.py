"""One status vocabulary for every solver, read as sentences for one solve or a batch.

[`Status`][jaxnum.linalg.Status] is shared by ``minimize`` (every method), ``gauss_newton``,
``newton_root``, the strong-Wolfe line search and ``cg``: the same code means the
same thing everywhere (``Status.NO_DECREASE`` is one number), and each member
carries its sentence (``Status.MAXITER.message``).
"""

from __future__ import annotations

import enum
from typing import Any

import jax.numpy as jnp
import numpy as np


class Status(enum.IntEnum):
    """Why a solver stopped (a result's ``status`` is one of these, as an int32 array).

    Members and where they occur:

    - ``CONVERGED``: the first-order test holds: gradient norm <= tol (minimize,
      gauss_newton), ``||F|| <= tol`` (newton_root), residual norm <= tol (cg).
    - ``CONVERGED_F``: the relative decrease of f is <= ftol (minimize).
    - ``CONVERGED_STEP``: an accepted step is at the rounding level of x
      (gauss_newton, newton_root).
    - ``MAXITER``: the iteration budget is spent (every solver).
    - ``NO_DECREASE``: no step lowers the objective (the Newton methods'
      damping at its bound, gauss_newton, newton_root; a line search's zero step).
    - ``LINESEARCH_FAILED``: minimize "lbfgs": no decrease even along -grad
      after the memory was dropped.
    - ``NONFINITE_X0``: x0 has NaN or inf entries (minimize).
    - ``NONFINITE_START``: f, F, the residuals, their gradient or Jacobian is not
      finite at x0 (or x0 is not, for solvers that do not tell the two apart).
    - ``UNBOUNDED``: f = -inf at a trial point (minimize, the line search).
    - ``NEGATIVE_CURVATURE``: cg met a direction with ``p^H A p <= 0`` (A is not
      positive definite; Newton-CG's truncated solve stops there by design).
    - ``BREAKDOWN``: cg met a non-finite residual, ``p^H A p`` or iterate, or
      ``r^H M r <= 0`` (NaN in b, A or M, b outside a singular A's range, or M not
      positive definite).
    - ``STAGNATED``: cg's recursive residual met tol but the true residual did not,
      even after restarts from x (the dtype cannot reach tol on this system).
    - ``WOLFE``, ``APPROXIMATE_WOLFE``, ``BEST_POINT``: a line search's accepted
      step (strong Wolfe; Hager-Zhang's approximate test; no Wolfe point within the
      budget, the best point seen, which decreases f).

    Examples:
      >>> Status.MAXITER.message
      'stopped: maximum number of iterations reached'
      >>> int(Status.NO_DECREASE), Status(4).name
      (4, 'NO_DECREASE')
    """

    CONVERGED = 0
    CONVERGED_F = 1
    CONVERGED_STEP = 2
    MAXITER = 3
    NO_DECREASE = 4
    LINESEARCH_FAILED = 5
    NONFINITE_X0 = 6
    NONFINITE_START = 7
    UNBOUNDED = 8
    NEGATIVE_CURVATURE = 9
    BREAKDOWN = 10
    WOLFE = 11
    APPROXIMATE_WOLFE = 12
    BEST_POINT = 13
    STAGNATED = 14

    @property
    def message(self) -> str:
        """This status as a sentence."""
        return _MESSAGES[self]

    @property
    def success(self) -> bool:
        """Whether this status is a success (a convergence test or an accepted line-search
        step that satisfies Wolfe's conditions)."""
        return self in SUCCESS


_MESSAGES = {
    Status.CONVERGED: "converged: the gradient (or residual) norm is at most tol",
    Status.CONVERGED_F: "converged: the relative decrease of f is at most ftol",
    Status.CONVERGED_STEP: "converged: an accepted step is at most xtol (||x|| + xtol)",
    Status.MAXITER: "stopped: maximum number of iterations reached",
    Status.NO_DECREASE: "stopped: no step decreases the objective (a stationary point that "
    "is no minimum, e.g. where a Jacobian is singular, or a local minimum of ||F|| that is "
    "not a root)",
    Status.LINESEARCH_FAILED: "stopped: the line search found no decrease, even along -grad",
    Status.NONFINITE_X0: "stopped: x0 has NaN or inf entries",
    Status.NONFINITE_START: "stopped: the objective, residuals or their derivative are not "
    "finite at x0",
    Status.UNBOUNDED: "stopped: f = -inf at a trial point: the objective is unbounded below",
    Status.NEGATIVE_CURVATURE: "stopped: a direction of non-positive curvature p^H A p <= 0 "
    "(the operator is not positive definite)",
    Status.BREAKDOWN: "stopped: CG broke down: the residual, p^H A p or the next iterate is "
    "not finite, or r^H M r <= 0 (NaN or inf in b or the operator, b outside the range of "
    "a singular operator, or a preconditioner that is not positive definite)",
    Status.STAGNATED: "stopped: the recursive residual met tol but the true residual "
    "||b - A x|| does not, even after restarting from x (rounding in this dtype limits "
    "the attainable accuracy)",
    Status.WOLFE: "strong Wolfe conditions hold",
    Status.APPROXIMATE_WOLFE: "approximate Wolfe conditions hold (f changes at rounding level)",
    Status.BEST_POINT: "no Wolfe point within the evaluation budget; took the best point seen",
}

SUCCESS = frozenset(
    {
        Status.CONVERGED,
        Status.CONVERGED_F,
        Status.CONVERGED_STEP,
        Status.WOLFE,
        Status.APPROXIMATE_WOLFE,
    }
)


def is_success(status: Any) -> Any:
    """``status`` (an array, maybe traced or batched) is a success, elementwise."""
    status = jnp.asarray(status)
    out = jnp.zeros(status.shape, bool)
    for s in SUCCESS:
        out = out | (status == int(s))
    return out


def code(status: Status) -> Any:
    """``status`` as an int32 scalar array (the dtype every result's ``status`` has)."""
    return jnp.asarray(int(status), jnp.int32)


def status_message(status: Any) -> str | list:
    """The sentence of a concrete ``status``; for a batch (a vmapped solve), a nested
    list of sentences of the batch's shape.

    Raises:
      TypeError: ``status`` is traced (read ``.status`` inside jit, ``.message`` after).
    """
    try:
        codes = np.asarray(status)
    except Exception as err:  # a tracer: no value yet
        raise TypeError(
            "message needs a concrete status: read .status inside jax.jit and .message "
            "on the result the jitted function returns"
        ) from err
    if codes.ndim == 0:
        return Status(int(codes)).message
    return np.vectorize(lambda c: Status(int(c)).message, otypes=[object])(codes).tolist()


def _result_success(result: Any) -> Any:
    return is_success(result.status)


def _result_message(result: Any) -> str | list:
    return status_message(result.status)


success_property = property(
    _result_success,
    doc="``status`` is a success (a convergence test, or for a line search a Wolfe "
    "point): an array, elementwise for a vmapped solve.",
)
message_property = property(
    _result_message,
    doc="The status as a sentence (needs a concrete ``status``; a vmapped result gives "
    "a nested list of sentences).",
)
