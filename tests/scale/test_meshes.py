"""The public functions that take arrays, on sharded inputs, equal their one-device results.

Four meshes of the 4 simulated CPU devices (tests/conftest.py): 1-D ``(4,)`` and
2-D ``(2, 2)``, each with ``AxisType.Explicit`` axes (the default of
``jax.make_mesh`` in jax 0.10) and with ``AxisType.Auto`` axes. Every input is
split over its rows ("rows"), and on the 2-D meshes the matrices over their
columns too ("cols"). Each function runs under ``jax.jit`` inside
``jax.set_mesh(mesh)`` and must give the values it gives on plain one-device
arrays. The user code here (objectives, residuals, matvecs) is written as code
for Explicit axes has to be (a vector is gathered before it meets a sharded
matrix: ``_whole``), so what fails under Explicit fails inside jaxnum.

Not walked here, to keep the file quick:

- the transformations on sharded parameters and batches (``loss_scaling``,
  ``clip_by_global_norm``, ``scaled_value_and_grad``, ``minimize`` with L-BFGS,
  so ``scale_by_lbfgs`` and ``scale_by_strong_wolfe``, K-FAC, ``hvp_fn`` on a
  model): tests/scale/test_sharding.py, in float64, on both axis types;
- functions whose mesh-dependent code another entry runs: ``hvp_fn`` and
  ``trace_estimate`` (inside ``hessian_trace``), ``hessian_diag`` (the
  ``diagonal_estimate`` of ``hvp_fn``), ``lanczos`` (inside ``top_eigenvalues``
  and ``spectral_density``), ``randomized_range_finder`` and
  ``init_from_svd(key=...)`` (inside ``randomized_svd``), ``lstsq``'s "qr" and
  "normal" (the same gathered X as "svd" and "cholesky"), ``minimize`` with
  Newton-CG (the ``scale_by_newton_cg`` step below in a loop);
- the debugging tools that run eagerly one operation at a time
  (``first_nonfinite``, ``gradcheck``, ``taylor_test``, ``fd_error_curve``) and
  the pure-Python ones (``float_formats``, ``Policy``).

Speed: all functions of one mesh are traced into one jitted program (one
compilation per mesh, and one for the one-device reference); when that
program fails, each function is run on its own to name the ones that fail.

Tolerance: float32 throughout. A sharded reduction adds its partial sums in
another order than one device does, so results differ by a few ulps of the
largest term; iterative methods (Krylov, power iterations, Newton steps)
carry such differences through a few iterations. Every entry must agree to
``RTOL = 1e-5`` relative to the largest entry of its output (``|a - b| <=
RTOL * max|b|``): about 80 ulps of float32, far below what any layout bug
(a per-shard norm, a missed term) gives.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxnum as jn
from jaxnum import autodiff, linalg, lora, optim

RTOL = 1e-5
KEY = jax.random.key(3)

MESHES = {
    "1d-explicit": ((4,), ("rows",), AxisType.Explicit),
    "1d-auto": ((4,), ("rows",), AxisType.Auto),
    "2d-explicit": ((2, 2), ("rows", "cols"), AxisType.Explicit),
    "2d-auto": ((2, 2), ("rows", "cols"), AxisType.Auto),
}


def _mesh(name: str):
    assert jax.device_count() >= 4, "tests/conftest.py simulates 4 host devices"
    shape, names, axis_type = MESHES[name]
    return jax.make_mesh(shape, names, axis_types=(axis_type,) * len(names))


# --------------------------------------------------------------------------------------
# Data (float32, small) and how it is laid out
# --------------------------------------------------------------------------------------


def _data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    A = rng.standard_normal((8, 6)).astype(np.float32)  # a data matrix, a LoRA kernel
    B = rng.standard_normal((8, 8))
    S = (B @ B.T / 8 + np.diag(np.arange(1.0, 9.0))).astype(np.float32)  # SPD, cond ~ 10
    bad = A.copy()
    bad[1, 2], bad[6, 0], bad[7, 5] = np.inf, np.nan, -np.inf
    return {
        "A": A,
        "S": S,
        "b": rng.standard_normal(8).astype(np.float32),
        "x": (0.3 * rng.standard_normal(8)).astype(np.float32),  # a point (parameters)
        "logits": (1000.0 + 5.0 * rng.standard_normal((8, 6))).astype(np.float32),
        "bad": bad,
        "tiny": (1e-5 * A).astype(np.float32),  # partly below float16's normal range
    }


def _layout(mesh, a: np.ndarray) -> NamedSharding:
    """Rows over "rows"; a matrix's columns over "cols" on the 2-D meshes."""
    if a.ndim == 1:
        return NamedSharding(mesh, P("rows"))
    return NamedSharding(mesh, P("rows", "cols" if "cols" in mesh.axis_names else None))


# --------------------------------------------------------------------------------------
# User code, as it has to be written for Explicit axes
# --------------------------------------------------------------------------------------


def _whole(v):
    """``v`` gathered on every device of an Explicit mesh (user code's job before
    ``S @ v`` with S split over its columns, which Explicit axes refuse otherwise)."""
    mesh = jax.typeof(v).sharding.mesh
    if mesh.empty or AxisType.Explicit not in mesh.axis_types:
        return v
    return jax.sharding.reshard(v, P())


def _matvec(S, v):
    return S @ _whole(v)  # laid out as S's rows


def objective(x, S, b):
    """A smooth non-quadratic function of x (8,) with an SPD-dominated Hessian."""
    return 0.5 * jnp.sum(x * _matvec(S, x)) - jnp.sum(b * x) + 0.1 * jnp.sum(jnp.cos(x))


def residual(x, S, b):
    """Residuals (8,) whose Jacobian S + 0.3 diag(x^2) is near S."""
    return _matvec(S, x) - b + 0.1 * x**3


def _model(params, inputs):
    return jnp.tanh(_matvec(inputs, params))


def _squared_error(outputs, targets):
    return 0.5 * jnp.sum((outputs - targets) ** 2)


# --------------------------------------------------------------------------------------
# The walk: name -> (function of the named arrays, their names[, floor])
# --------------------------------------------------------------------------------------

# The iterative solvers' outputs include values near zero at convergence (residual and
# gradient norms, a model decrease): differences of O(1) terms of the O(1) data, whose
# rounding is RTOL in absolute terms, not relative to their own tiny size. For them the
# tolerance is RTOL * max(largest entry, SOLVER).
SOLVER = 1.0


def _op_products(A, b):
    op = linalg.LinearOperator.from_matrix(A)
    return op.matvec(jnp.linspace(-1.0, 1.0, 6)), op.rmatvec(b), op.rmatmat(A)


def _operator_products(x, S, b):
    H = linalg.hessian_operator(objective, x, S, b)
    J = linalg.jacobian_operator(lambda y: residual(y, S, b), x)
    return H.matvec(b), J.matvec(b), J.rmatvec(b)


def _lora_split_merge(A):
    frozen, adapters = lora.split({"dense": {"kernel": A}}, 2)
    return frozen, adapters, lora.merge(frozen, adapters)


def _newton_cg_update(x, S, b):
    tx = optim.scale_by_newton_cg(1.0, max_cg_iterations=8)
    grad = jax.grad(objective)(x, S, b)
    value = objective(x, S, b)
    return tx.update(grad, tx.init(x), x, value=value, value_fn=lambda y: objective(y, S, b))


WALK: dict[str, tuple] = {
    # jaxnum.precision
    "online_softmax": (lambda L: jn.online_softmax(L, block_size=4), ("logits",)),
    "online_softmax axis=0": (lambda L: jn.online_softmax(L, axis=0, block_size=3), ("logits",)),
    "online_logsumexp": (lambda L: jn.online_logsumexp(L, block_size=4), ("logits",)),
    "global_norm": (lambda A, b: jn.global_norm({"A": A, "b": b}), ("A", "b")),
    "nonfinite_report": (lambda bad, b: jn.nonfinite_report([bad, b]), ("bad", "b")),
    "all_finite": (lambda A, bad: (jn.all_finite(A), jn.all_finite(bad)), ("A", "bad")),
    "underflow_fraction": (lambda t: jn.underflow_fraction(t, jnp.float16), ("tiny",)),
    "overflow_fraction": (lambda A: jn.overflow_fraction(1e5 * A, jnp.float16), ("A",)),
    # jaxnum.autodiff
    "hvp": (lambda x, S, b: autodiff.hvp(objective, x, b, S, b), ("x", "S", "b")),
    "gnvp_fn": (
        lambda x, S, b: autodiff.gnvp_fn(_model, _squared_error, x, S, b)(b),
        ("x", "S", "b"),
    ),
    "hessian_trace": (
        lambda x, S, b: autodiff.hessian_trace(objective, x, S, b, key=KEY, num_samples=6),
        ("x", "S", "b"),
    ),
    "diagonal_estimate": (
        lambda S, x: autodiff.diagonal_estimate(lambda v: _matvec(S, v), x, key=KEY, num_samples=4),
        ("S", "x"),
    ),
    "derivative": (
        lambda x, S, b: autodiff.derivative(lambda y: residual(y, S, b), x, b),
        ("x", "S", "b"),
    ),
    # jaxnum.linalg
    "randomized_svd": (lambda A: linalg.randomized_svd(A, 3, key=KEY, oversample=2), ("A",)),
    "randomized_eigh": (lambda S: linalg.randomized_eigh(S, 3, key=KEY, oversample=2), ("S",)),
    "lstsq svd": (lambda A, b: linalg.lstsq(A, b), ("A", "b")),
    "lstsq cholesky": (lambda A, b: linalg.lstsq(A, b, method="cholesky"), ("A", "b")),
    "condition_number": (linalg.condition_number, ("A",)),
    "cg": (lambda S, b: linalg.cg(S, b, tol=1e-6), ("S", "b"), SOLVER),
    "cg matvec, x0, M": (
        lambda S, b, x: linalg.cg(lambda v: _matvec(S, v), b, x0=x, M=lambda r: 0.2 * r, tol=1e-6),
        ("S", "b", "x"),
        SOLVER,
    ),
    "top_eigenvalues": (lambda S: linalg.top_eigenvalues(S, 2, key=KEY), ("S",)),
    "spectral_density": (
        lambda S: linalg.spectral_density(
            S, key=KEY, num_probes=2, num_iters=4, num_points=8, sigma=0.5
        ),
        ("S",),
    ),
    "LinearOperator.from_matrix": (_op_products, ("A", "b")),
    "hessian_operator, jacobian_operator": (_operator_products, ("x", "S", "b")),
    # jaxnum.lora
    "init_from_svd": (lambda A: lora.init_from_svd(A, 2), ("A",)),
    "split, merge": (_lora_split_merge, ("A",)),
    # jaxnum.optim
    "scale_by_newton_cg": (_newton_cg_update, ("x", "S", "b"), SOLVER),
    "gauss_newton": (
        lambda x, S, b: optim.gauss_newton(residual, x, S, b, maxiter=4),
        ("x", "S", "b"),
        SOLVER,
    ),
    "newton_root": (
        lambda x, S, b: optim.newton_root(residual, x, S, b, maxiter=6),
        ("x", "S", "b"),
        SOLVER,
    ),
}


def _run_all(arrays: dict):
    return {name: fn(*(arrays[a] for a in args)) for name, (fn, args, *_) in WALK.items()}


# LLVM's optimisations off: they take a third of the compile time here and change no
# value (no fast-math; XLA's HLO passes, which decide layouts and fusion, still run).
_run_all_jit = jax.jit(_run_all, compiler_options={"xla_backend_optimization_level": 0})


@functools.cache
def _one_device():
    """The reference: the same program on plain arrays of the default device."""
    return jax.device_get(_run_all_jit(_data()))


def _mismatch(name: str, actual, expected, floor: float = 0.0) -> str | None:
    """Why ``actual`` is not ``expected``, or None: the same tree, integers and
    non-finite entries equal, the others within ``RTOL * max(max|expected|, floor)``."""
    a_leaves, a_tree = jax.tree.flatten(actual)
    e_leaves, e_tree = jax.tree.flatten(expected)
    if a_tree != e_tree:
        return f"{name}: tree {a_tree} instead of {e_tree}"
    for i, (a, e) in enumerate(zip(a_leaves, e_leaves, strict=True)):
        a, e = np.asarray(a), np.asarray(e)
        if a.shape != e.shape or a.dtype != e.dtype:
            return f"{name}: leaf {i} {a.dtype}{a.shape} instead of {e.dtype}{e.shape}"
        if not np.issubdtype(e.dtype, np.inexact):
            if not np.array_equal(a, e):
                return f"{name}: leaf {i} {a} instead of {e}"
            continue
        finite = np.isfinite(e)
        same_nonfinite = np.array_equal(a[~finite], e[~finite], equal_nan=True)
        if not np.array_equal(finite, np.isfinite(a)) or not same_nonfinite:
            return f"{name}: leaf {i} non-finite entries differ: {a} instead of {e}"
        if finite.any():
            scale = max(np.max(np.abs(e[finite])), floor)
            err = np.max(np.abs(a[finite].astype(np.float64) - e[finite]))
            if err > RTOL * scale:
                return f"{name}: leaf {i} differs by {err:.3g} (> {RTOL} * {scale:.3g})"
    return None


@pytest.mark.parametrize("mesh_name", list(MESHES))
@pytest.mark.slow
def test_walk_equals_one_device(mesh_name):
    """Every function of WALK on sharded inputs under jit equals the one-device result."""
    mesh = _mesh(mesh_name)
    data = _data()
    arrays = {k: jax.device_put(v, _layout(mesh, v)) for k, v in data.items()}
    expected = _one_device()
    with jax.set_mesh(mesh):
        try:
            results = _run_all_jit(arrays)
        except Exception:  # name the functions that fail (each on its own, slower)
            failures = []
            for name, (fn, args, *_) in WALK.items():
                try:
                    jax.jit(fn)(*(arrays[a] for a in args))
                except Exception as e:
                    failures.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0]}")
            pytest.fail(f"{mesh_name}: failing functions:\n" + "\n".join(failures))
    # the inputs really were split: each device holds a quarter of the matrix
    assert arrays["S"].addressable_shards[0].data.size == data["S"].size // 4
    problems = []
    for name, (_, _, *floor) in WALK.items():
        problem = _mismatch(name, jax.device_get(results[name]), expected[name], *floor)
        if problem is not None:
            problems.append(problem)
    assert not problems, f"{mesh_name}:\n" + "\n".join(problems)
