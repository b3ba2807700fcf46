"""gradcheck: automatic derivatives against finite differences, in float64."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxnum._src.checks import check_int, check_nonnegative
from jaxnum._src.trees import check_floating_tree, check_like, tree_vdot
from jaxnum.autodiff.finite_differences import derivative

MODES = ("fwd", "rev")
LOCALIZE_MAX_ENTRIES = 4096


class GradcheckReport(NamedTuple):
    """What [`gradcheck`][jaxnum.autodiff.gradcheck] found.

    Attributes:
      passed: every compared value within ``atol + rtol * max(|AD|, |FD|)``.
      order: 1 (gradients) or 2 (Hessian-vector products).
      max_abs_error / max_rel_error: over all compared values.
      worst_mode: the AD mode of the worst value ("fwd" or "rev").
      worst_path: pytree path of the worst leaf of the differentiated argument.
      worst_index: index of the worst entry in that leaf (None when not localised).
      ad_value / fd_value: the AD and finite-difference values there.
      num_evaluations: evaluations of ``f`` (or of its gradient, for order 2).
      note: how the check ran (upcast to float64, directional or full...).
    """

    passed: bool
    order: int
    max_abs_error: float
    max_rel_error: float
    worst_mode: str
    worst_path: str
    worst_index: tuple[int, ...] | None
    ad_value: float
    fd_value: float
    num_evaluations: int
    note: str

    def __str__(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        where = self.worst_path + ("" if self.worst_index is None else str(list(self.worst_index)))
        return (
            f"gradcheck order {self.order}: {verdict}; worst {self.worst_mode} at {where}: "
            f"AD {self.ad_value:.10g} vs FD {self.fd_value:.10g} (abs err "
            f"{self.max_abs_error:.3g}, rel err {self.max_rel_error:.3g}); {self.note}"
        )


class GradcheckError(AssertionError):
    """Raised by [`gradcheck`][jaxnum.autodiff.gradcheck] with ``raise_on_failure=True``; carries
    the report."""

    def __init__(self, report: GradcheckReport):
        super().__init__(str(report))
        self.report = report


class _Comparison(NamedTuple):
    abs_err: float
    rel_err: float
    failed: bool
    mode: str
    leaf: int
    index: tuple[int, ...] | None
    ad: float
    fd: float


def _upcast(tree: Any) -> Any:
    def cast(x):
        x = jnp.asarray(x)
        return x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(cast, tree)


def _scalarize(f, args, argnum, u):
    """g(x) = <u, f(args with args[argnum] = x)>, a scalar function of one pytree."""

    def g(x):
        full = list(args)
        full[argnum] = x
        out = f(*full)
        return sum(
            jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(out), strict=True)
        )

    return g


def _ad_directional(g, x, v, mode, order, w):
    """AD value of the probe: g'(x) v (order 1) or w^T H(x) v (order 2)."""
    try:
        if order == 1:
            if mode == "fwd":
                return jax.jvp(g, (x,), (v,))[1]
            return tree_vdot(jax.grad(g)(x), v)
        if mode == "fwd":
            return tree_vdot(w, jax.jvp(jax.grad(g), (x,), (v,))[1])
        return tree_vdot(w, jax.grad(lambda y: tree_vdot(jax.grad(g)(y), v))(x))
    except TypeError as e:
        if "custom_vjp" in str(e) and mode == "fwd":
            raise ValueError(
                "gradcheck: mode 'fwd' is not available: f uses a jax.custom_vjp function, "
                "which has no forward mode (jvp); check it with modes=('rev',)"
            ) from e
        raise


def _fd_directional(g, x, v, order, w, h):
    if order == 1:
        return derivative(g, x, v, method="richardson", h=h)
    return derivative(lambda y: tree_vdot(w, jax.grad(g)(y)), x, v, method="richardson", h=h)


def _random_like(key, tree):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten(
        [
            jax.random.normal(k, jnp.shape(x), jnp.result_type(x))
            for k, x in zip(keys, leaves, strict=True)
        ]
    )


def _one_hot_like(tree, leaf_index, entry):
    leaves, treedef = jax.tree.flatten(tree)
    out = [jnp.zeros_like(x) for x in leaves]
    out[leaf_index] = (
        out[leaf_index].reshape(-1).at[entry].set(1.0).reshape(jnp.shape(leaves[leaf_index]))
    )
    return treedef.unflatten(out)


def _only_leaf(tree, leaf_index):
    leaves, treedef = jax.tree.flatten(tree)
    return treedef.unflatten(
        [x if i == leaf_index else jnp.zeros_like(x) for i, x in enumerate(leaves)]
    )


def gradcheck(
    f: Callable[..., Any],
    *args: Any,
    order: int = 1,
    modes: Sequence[str] = MODES,
    argnum: int = 0,
    num_probes: int = 2,
    full: bool = False,
    eps: float | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    key: jax.Array | None = None,
    raise_on_failure: bool = False,
) -> GradcheckReport:
    """Checks the derivatives JAX computes for ``f`` against finite differences.

    Runs in float64 (floating arguments are upcast; the report's note says so),
    with Richardson-extrapolated central differences (truncation O(h**4)).

    - Directional (default): for each leaf of ``args[argnum]``, ``num_probes``
      random directions supported on that leaf and a random output cotangent u;
      compares ``u^T J v`` from each AD mode with the finite difference of
      ``u^T f`` along v. Cost O(leaves x probes) evaluations, whatever the size,
      and the worst leaf is named by its pytree path. On a failure the worst
      entry of that leaf is localised by coordinate differences (leaves up to
      4096 entries).
    - ``full=True``: every coordinate direction (O(n) evaluations).
    - ``order=2``: Hessian-vector products (fwd-over-rev for "fwd",
      rev-over-rev for "rev") against differences of gradients.

    A wrong ``custom_vjp`` rule shows in "rev", a wrong ``custom_jvp`` rule in
    both modes. A ``custom_vjp`` function has no forward mode: asking for
    "fwd" on one raises a ValueError that says so.

    Args:
      f: the function; its output may be any pytree of floating arrays.
      *args: its arguments; ``args[argnum]`` is differentiated.
      order: 1 or 2.
      modes: AD modes to check, from ("fwd", "rev").
      argnum: which argument to differentiate.
      num_probes: random directions per leaf (directional mode).
      full: check every coordinate instead of random directions.
      eps: the finite-difference step (None: the balancing step of
        [`derivative`][jaxnum.autodiff.derivative] for Richardson differences in float64).
      atol: a value passes if ``|AD - FD| <= atol + rtol * max(|AD|, |FD|)``
        (None: 1e-8).
      rtol: see ``atol`` (None: 1e-6).
      key: PRNG key for the probes (default ``jax.random.key(0)``: the check is
        deterministic unless a key is given).
      raise_on_failure: raise [`GradcheckError`][jaxnum.autodiff.GradcheckError] instead of
          returning a
        failed report.

    Returns:
      A [`GradcheckReport`][jaxnum.autodiff.GradcheckReport].

    Examples:
      >>> gradcheck(lambda x: jnp.sum(jnp.sin(x) ** 2), jnp.array([0.1, 0.7])).passed
      True

    References:
      Griewank and Walther, "Evaluating Derivatives", 2008; PyTorch's
      ``torch.autograd.gradcheck`` and JAX's ``jax.test_util.check_grads`` for the
      interface; Nocedal and Wright, Sec. 8.1 for the differences.
    """
    fn = "gradcheck"
    order = check_int(order, fn, "order", 1, 2)
    modes = tuple(modes)
    if not modes or any(m not in MODES for m in modes):
        raise ValueError(f"{fn}: modes={modes!r}; expected a non-empty subset of {MODES}")
    argnum = check_int(argnum, fn, "argnum", 0)
    if not argnum < len(args):
        raise ValueError(f"{fn}: argnum={argnum!r} out of range for {len(args)} argument(s)")
    num_probes = check_int(num_probes, fn, "num_probes", 1)
    check_floating_tree(args[argnum], fn, f"args[{argnum}]")
    if eps is not None and not eps > 0:
        raise ValueError(f"{fn}: eps (the finite-difference step) must be > 0, got {eps!r}")
    for name, tol in (("atol", atol), ("rtol", rtol)):
        if tol is not None:
            check_nonnegative(tol, fn, name)
    atol = 1e-8 if atol is None else atol
    rtol = 1e-6 if rtol is None else rtol
    key = jax.random.key(0) if key is None else key
    with jax.enable_x64(True):
        return _gradcheck64(
            f, args, order, modes, argnum, num_probes, full, eps, atol, rtol, key, raise_on_failure
        )


def _gradcheck64(f, args, order, modes, argnum, num_probes, full, eps, atol, rtol, key, raise_):
    original = jax.tree.leaves(args[argnum])
    upcast = any(jnp.result_type(x) != jnp.float64 for x in original)
    args = _upcast(args)
    x = args[argnum]
    out = jax.eval_shape(lambda: f(*args))
    key_u, key_w, key_v = jax.random.split(key, 3)
    u = _random_like(key_u, out)
    g = _scalarize(f, args, argnum, u)
    w = _random_like(key_w, x) if order == 2 else None
    paths = [
        f"args[{argnum}]" + jax.tree_util.keystr(p)
        for p, _ in jax.tree_util.tree_flatten_with_path(x)[0]
    ]
    leaves = jax.tree.leaves(x)

    results: list[_Comparison] = []
    evaluations = 0

    def compare(v, leaf, index):
        nonlocal evaluations
        fd = float(_fd_directional(g, x, v, order, w, eps))
        evaluations += 4
        for mode in modes:
            ad = float(_ad_directional(g, x, v, mode, order, w))
            err = abs(ad - fd)
            scale = max(abs(ad), abs(fd))
            rel = err / scale if scale else err
            failed = not err <= atol + rtol * scale  # a nan AD or FD value fails
            results.append(_Comparison(err, rel, failed, mode, leaf, index, ad, fd))

    if full:
        for i, leaf in enumerate(leaves):
            for entry in range(int(np.size(leaf))):
                compare(_one_hot_like(x, i, entry), i, np.unravel_index(entry, np.shape(leaf)))
    else:
        probe_keys = jax.random.split(key_v, len(leaves) * num_probes)
        for i in range(len(leaves)):
            for k in range(num_probes):
                compare(_only_leaf(_random_like(probe_keys[i * num_probes + k], x), i), i, None)
        worst = max(results, key=lambda r: (r.failed, r.abs_err))
        if worst.failed and np.size(leaves[worst.leaf]) <= LOCALIZE_MAX_ENTRIES:
            i = worst.leaf
            for entry in range(int(np.size(leaves[i]))):
                compare(_one_hot_like(x, i, entry), i, np.unravel_index(entry, np.shape(leaves[i])))

    failing = [r for r in results if r.failed]
    pool = failing or results
    worst = max(pool, key=lambda r: r.abs_err)
    # Prefer a localised entry of the same leaf, when the localisation ran.
    indexed = [r for r in pool if r.index is not None and r.leaf == worst.leaf]
    if worst.index is None and indexed:
        worst = max(indexed, key=lambda r: r.abs_err)
    note = (
        ("upcast to float64; " if upcast else "float64; ")
        + ("every coordinate" if full else f"{num_probes} random direction(s) per leaf")
        + f"; modes {', '.join(modes)}"
    )
    report = GradcheckReport(
        passed=not failing,
        order=order,
        max_abs_error=max(r.abs_err for r in results),
        max_rel_error=max(r.rel_err for r in results),
        worst_mode=worst.mode,
        worst_path=paths[worst.leaf],
        worst_index=None if worst.index is None else tuple(int(i) for i in worst.index),
        ad_value=worst.ad,
        fd_value=worst.fd,
        num_evaluations=evaluations,
        note=note,
    )
    if raise_ and not report.passed:
        raise GradcheckError(report)
    return report


class TaylorTest(NamedTuple):
    """Result of [`taylor_test`][jaxnum.autodiff.taylor_test].

    Attributes:
      passed: the fitted slope is at least ``min_slope``.
      slope: slope of log(remainder) against log(h) over the usable steps.
      h: the steps used (above the rounding floor).
      remainder: ``|f(x + h v) - f(x) - h g.v|`` at those steps.
    """

    passed: bool
    slope: float
    h: np.ndarray
    remainder: np.ndarray


def taylor_test(
    f: Callable[[Any], Any],
    x: Any,
    v: Any = None,
    *,
    key: jax.Array | None = None,
    num_steps: int = 16,
    min_slope: float = 1.8,
) -> TaylorTest:
    """Step-size-free gradient check: the first-order Taylor remainder must fall as h**2.

    If ``g = grad f(x)`` is right, ``|f(x + h v) - f(x) - h g.v| = O(h**2)``; if it
    is wrong by ``e``, the remainder is ``h |e.v| + O(h**2)``, slope 1. The fit
    uses only steps whose remainder stays above the rounding floor
    (``10 eps |f(x)|``), so it needs no step size tuned to the dtype and works
    in float32, where a fixed finite-difference step fails; there it detects
    gradient errors of about 10% of ``g.v`` and more (in bfloat16 the rounding
    floor usually leaves too few steps, and the result says not passed with a
    nan slope). Runs in the dtype of ``x`` (no upcast).

    Args:
      f: scalar function of one pytree.
      x: the point.
      v: the direction (random normal when None).
      key: PRNG key for the random direction (default ``jax.random.key(0)``).
      num_steps: halvings of h from ``0.1 * max(1, |x|) / |v|``.
      min_slope: the slope required to pass.

    Returns:
      A [`TaylorTest`][jaxnum.autodiff.TaylorTest].

    Examples:
      >>> taylor_test(lambda x: jnp.sum(jnp.exp(x)), jnp.array([0.5, -1.0])).passed
      True

    References:
      Farrell, Ham, Funke, Rognes, "Automated derivation of the adjoint of
      high-level transient finite element programs", SIAM J. Sci. Comput. 2013,
      Sec. 5 (the Taylor remainder convergence test).
    """
    check_floating_tree(x, "taylor_test", "x")
    num_steps = check_int(num_steps, "taylor_test", "num_steps", 3)  # three points at least
    if v is None:
        v = _random_like(jax.random.key(0) if key is None else key, x)
    check_like(x, v, "taylor_test")
    value, grad = jax.value_and_grad(f)(x)
    slope_dir = float(tree_vdot(grad, v))
    dtype = jnp.result_type(*jax.tree.leaves(x))
    norm = lambda t: max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree.leaves(t))  # noqa: E731
    h0 = 0.1 * max(1.0, norm(x)) / max(norm(v), float(jnp.finfo(dtype).tiny))
    hs = h0 * 0.5 ** np.arange(num_steps)
    step = jax.jit(lambda h: f(jax.tree.map(lambda a, b: (a + h * b).astype(a.dtype), x, v)))
    remainders = np.array(
        [abs(float(step(jnp.asarray(h, dtype))) - float(value) - h * slope_dir) for h in hs]
    )
    floor = 10 * float(jnp.finfo(dtype).eps) * max(abs(float(value)), 1e-30)
    usable = remainders > floor
    if usable.sum() < 3:
        return TaylorTest(False, float("nan"), hs[usable], remainders[usable])
    slope = float(np.polyfit(np.log(hs[usable]), np.log(remainders[usable]), 1)[0])
    return TaylorTest(slope >= min_slope, slope, hs[usable], remainders[usable])
