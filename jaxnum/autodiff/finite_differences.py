"""Finite-difference and complex-step directional derivatives, and their error curve."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxnum._src.trees import check_floating_tree, check_like, tree_axpy

METHODS = ("forward", "central", "complex", "richardson")
# Exponent k of the default step h = eps**k * max(1, |x|) / |v|: it balances the
# truncation error (h, h**2, -, h**4) against rounding (eps / h). Complex step
# has no subtraction, hence no rounding term, and takes h = eps.
_STEP_EXPONENT = {"forward": 1 / 2, "central": 1 / 3, "complex": 1.0, "richardson": 1 / 5}


def _check_method(method: str, fn: str) -> None:
    if method not in METHODS:
        raise ValueError(f"{fn}: method={method!r} unknown; expected one of {METHODS}")


def _inf_norm(tree: Any) -> jax.Array:
    return jnp.max(jnp.stack([jnp.max(jnp.abs(leaf)) for leaf in jax.tree.leaves(tree)]))


def default_step(x: Any, v: Any, method: str) -> jax.Array:
    """The step [`derivative`][jaxnum.autodiff.derivative] uses when ``h=None``.

    ``h = eps**k * max(1, |x|_inf) / |v|_inf`` with the machine epsilon of
    ``x``'s dtype and k = 1/2 (forward: error h + eps/h), 1/3 (central:
    h**2 + eps/h), 1/5 (Richardson: h**4 + eps/h) or 1 (complex step, which
    subtracts nothing and so has no cancellation).

    References:
      Nocedal and Wright, "Numerical Optimization", 2nd ed., Sec. 8.1 (Eqs. 8.6-8.7).
    """
    _check_method(method, "default_step")
    dtype = jnp.result_type(*jax.tree.leaves(x))
    eps = jnp.finfo(dtype).eps
    scale = jnp.maximum(1.0, _inf_norm(x)) / jnp.maximum(_inf_norm(v), jnp.finfo(dtype).tiny)
    return (eps ** _STEP_EXPONENT[method] * scale).astype(dtype)


def _central(f, x, v, h):
    plus, minus = f(tree_axpy(h, v, x)), f(tree_axpy(-h, v, x))
    return jax.tree.map(lambda a, b: (a - b) / (2 * h), plus, minus)


def _complex_step(f, x, v, h):
    def to_complex(leaf):
        return leaf.astype(jnp.result_type(leaf.dtype, jnp.complex64))

    xc = jax.tree.map(to_complex, x)
    shifted = jax.tree.map(lambda a, b: a + 1j * h * b, xc, v)
    try:
        out = f(shifted)
    except TypeError as e:
        raise ValueError(
            "derivative: method='complex' needs f to accept complex inputs (real-analytic "
            f"and written without real-only operations); f raised: {e}"
        ) from e
    for leaf in jax.tree.leaves(out):
        if not jnp.iscomplexobj(leaf):
            raise ValueError(
                "derivative: method='complex' needs f to be complex-safe, but its output "
                f"has dtype {jnp.result_type(leaf)} (f drops the imaginary part, e.g. through "
                "abs, real, a cast or a comparison); use method='central'"
            )
    return jax.tree.map(lambda a: jnp.imag(a) / h, out)


def _check_step(h: Any, x: Any, fn: str) -> None:
    """A concrete step must be positive and not round to 0 in x's dtype (NaN otherwise)."""
    if isinstance(h, jax.core.Tracer):
        return
    dtype = jnp.result_type(*jax.tree.leaves(x))
    values = np.atleast_1d(np.asarray(h, np.float64))
    if not np.all(values > 0):
        raise ValueError(f"{fn}: the step h must be > 0, got {h!r}")
    if np.any(np.asarray(values, dtype=jnp.finfo(dtype).dtype) == 0):
        raise ValueError(
            f"{fn}: the step h={h!r} rounds to 0 in {jnp.dtype(dtype).name} "
            f"(smallest subnormal {float(jnp.finfo(dtype).smallest_subnormal):.1e}); "
            "use float64 inputs or a larger h"
        )


def derivative(
    f: Callable[[Any], Any],
    x: Any,
    v: Any = None,
    *,
    method: str = "central",
    h: Any = None,
) -> Any:
    """Directional derivative ``d/dt f(x + t v)`` at t = 0, by finite differences.

    Methods, with truncation errors:

    - ``"forward"``: ``(f(x + h v) - f(x)) / h``, O(h);
    - ``"central"``: ``(f(x + h v) - f(x - h v)) / 2h``, O(h**2);
    - ``"richardson"``: ``(4 D(h/2) - D(h)) / 3`` of central differences D, O(h**4);
    - ``"complex"``: ``Im f(x + i h v) / h``, O(h**2) with no subtraction and so
      no cancellation: h can be tiny and the result is exact to rounding. Only
      for real-analytic ``f`` written with complex-safe operations; otherwise a
      ValueError says so.

    With ``h=None`` the step is `default_step`: finite differences lose
    accuracy both to truncation (large h) and to cancellation in
    ``f(x + h v) - f(x)`` (small h: rounding of order eps/h), and the best step
    balances the two (eps**(1/2) for forward, eps**(1/3) for central), scaled by
    the size of ``x``. Use float64 for accuracy: in float32 the best central
    difference has only about 5 correct digits.

    Args:
      f: a function of one pytree argument (close over the others).
      x: the point, a pytree of floating arrays.
      v: the direction, like ``x``; may be omitted when ``x`` has a single entry.
      method: ``"central"`` (default), ``"forward"``, ``"richardson"`` or ``"complex"``.
      h: the step (may be traced), or None for `default_step`.

    Returns:
      The directional derivative, with the structure of ``f(x)``.

    Examples:
      >>> with jax.enable_x64(True):
      ...     err = derivative(jnp.sin, jnp.array(1.0)) - jnp.cos(1.0)
      ...     print(bool(abs(err) < 1e-10))
      True

    References:
      Nocedal and Wright, "Numerical Optimization", 2nd ed., Sec. 8.1; Squire and
      Trapp, "Using complex variables to estimate derivatives of real functions",
      SIAM Review 1998; Richardson, 1911.
    """
    _check_method(method, "derivative")
    check_floating_tree(x, "derivative", "x")
    if v is None:
        sizes = sum(jnp.size(leaf) for leaf in jax.tree.leaves(x))
        if sizes != 1:
            raise ValueError(
                f"derivative: v (the direction) is required when x has {sizes} entries"
            )
        v = jax.tree.map(jnp.ones_like, x)
    check_like(x, v, "derivative")
    if h is None:
        h = default_step(x, v, method)
    else:
        _check_step(h, x, "derivative")
    if method == "forward":
        base, plus = f(x), f(tree_axpy(h, v, x))
        return jax.tree.map(lambda a, b: (a - b) / h, plus, base)
    if method == "central":
        return _central(f, x, v, h)
    if method == "richardson":
        coarse, fine = _central(f, x, v, h), _central(f, x, v, h / 2)
        return jax.tree.map(lambda c, d: (4 * d - c) / 3, coarse, fine)
    return _complex_step(f, x, v, h)


class ErrorCurve(NamedTuple):
    """Finite-difference error against the AD value, per step size.

    Attributes:
      h: the step sizes.
      error: ``max |FD(h) - AD|`` over the outputs, one per step.
      exact: the AD directional derivative (``jax.jvp``).
    """

    h: jax.Array
    error: jax.Array
    exact: Any


def fd_error_curve(
    f: Callable[[Any], Any], x: Any, hs: Any, method: str = "central", v: Any = None
) -> ErrorCurve:
    """Error of [`derivative`][jaxnum.autodiff.derivative] against forward-mode AD for each step in
    ``hs``.

    Plotted on log-log axes it is the V-shaped curve of finite differences:
    truncation error falling as h**p (p = 1 forward, 2 central, 4 Richardson)
    until rounding error eps/h takes over and it rises again. The complex step
    has no rising branch.

    Args:
      f: as for [`derivative`][jaxnum.autodiff.derivative].
      x: as for [`derivative`][jaxnum.autodiff.derivative].
      v: as for [`derivative`][jaxnum.autodiff.derivative].
      method: as for [`derivative`][jaxnum.autodiff.derivative].
      hs: a 1-D array of step sizes.

    Returns:
      An [`ErrorCurve`][jaxnum.autodiff.ErrorCurve].

    Examples:
      >>> with jax.enable_x64(True):
      ...     c = fd_error_curve(jnp.exp, jnp.array(1.0), jnp.array([1e-1, 1e-3]))
      ...     print(bool(c.error[1] < c.error[0] / 1000))  # central: error ~ h**2
      True

    References:
      Nocedal and Wright, "Numerical Optimization", 2nd ed., Sec. 8.1.
    """
    _check_method(method, "fd_error_curve")
    check_floating_tree(x, "fd_error_curve", "x")
    _check_step(hs, x, "fd_error_curve")
    hs = jnp.asarray(hs)
    if hs.ndim != 1 or hs.size == 0:
        raise ValueError(f"fd_error_curve: hs must be a non-empty 1-D array, got shape {hs.shape}")
    if v is None:
        v = jax.tree.map(jnp.ones_like, x)
    check_like(x, v, "fd_error_curve")
    _, exact = jax.jvp(f, (x,), (v,))

    def error(h):
        approx = derivative(
            f, x, v, method=method, h=h.astype(jnp.result_type(*jax.tree.leaves(x)))
        )
        diffs = jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)), approx, exact)
        return jnp.max(jnp.stack(jax.tree.leaves(diffs)))

    return ErrorCurve(h=hs, error=jax.vmap(error)(hs), exact=exact)
