"""The bad-input audit: every public function of jaxnum, the invalid inputs tried, what each gets.

``CASES`` holds one :class:`Case` per (function, invalid input). A case either
expects an exception at trace time (``raises=(type, regex)``: the type and a
pattern its message must match) or, for a value that is only wrong at run time
(a NaN gradient, an inf statistic), checks what the function does with it
(``check``, described in words by ``outcome``). ``tests/test_bad_inputs.py``
runs every case; ``python -m tests.bad_inputs`` runs them too and writes
``docs/audit.md``, whose "what it gets" column holds the actual messages.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import re
from collections.abc import Callable
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxnum as jn
from jaxnum import autodiff as ad
from jaxnum import kfac, lora, optim
from jaxnum import linalg as la

if __name__ == "__main__":
    # Run as a script, this file is a second copy of the module; tests/bad_paths.py imports
    # the module proper, so the page is written by that one.
    from tests import bad_inputs

    bad_inputs.main()
    raise SystemExit


KINDS = ("shape", "dtype", "non-finite", "empty tree", "hyperparameter", "method")

# The paths users take (issue 21), each a class of defects with its own table on the page:
# key -> (title, what was wrong and what is tested now). A Case with ``path=key`` is listed
# there instead of in its subpackage's table. The cases live in tests/bad_paths.py.
PATHS = {
    "nnx": (
        "Flax NNX: nnx.Optimizer and layers found by path",
        "Parameters inside an `nnx.Optimizer` (paths ending in `.value`, `OptArray` leaves),"
        " NNX pure dicts and linen params find the same layers.",
    ),
    "narrow-grads": (
        "Gradients in another dtype than the parameters",
        "float16/bfloat16 gradients of float32 parameters are unscaled and handed on in the"
        " parameters' dtype (or float32), never left to underflow in half precision.",
    ),
    "degenerate": (
        "Degenerate input",
        "NaN starting points, unbounded objectives, zero and huge matrices, overflowing"
        " norms: a status that says what happened or a clear error, never `converged`.",
    ),
    "traced": (
        "Options passed traced",
        "Float options (tolerances, damping, learning rates, loss-scale bounds) given as"
        " tracers, under `jax.jit` or `optax.inject_hyperparams`.",
    ),
    "checkpoint": (
        "Damaged and mismatched checkpoints",
        "Flipped, truncated or junk bytes and states restored into the wrong template raise"
        " jaxnum's own error naming what is wrong.",
    ),
    "optax-wrappers": (
        "optax wrappers around and inside jaxnum",
        "`optax.MultiSteps`, `inject_hyperparams`, `masked`, `apply_if_finite` composed with"
        " jaxnum's transformations, in the orders users write.",
    ),
    "readable": (
        "Readable errors instead of crashes",
        "Inputs that crashed deep inside jax (empty arrays, mixed dtypes, wrong matvec"
        " shapes, complex or integer values, models without capture layers) now fail at"
        " trace time with jaxnum's own message, or work.",
    ),
    "integer-options": (
        "Integer options",
        "Sizes and counts: Python ints and numpy integers accepted alike; TypeError for a"
        " wrong type, ValueError for a wrong range, everywhere.",
    ),
    "peer-suites": (
        "Found by other projects' test suites",
        "Defects found by running scikit-learn's, jmp's, optimistix's, scipy's and matfree's"
        " tests against jaxnum: complex operators, evaluation counts, scale-free damping,"
        " strict dtype promotion, custom_vjp residuals, step bounds.",
    ),
    "meshes": (
        "Explicit and Auto meshes",
        "Arrays sharded on meshes with Explicit axes (`jax.make_mesh`'s default) as well as"
        " Auto axes; the full walk over the public functions is tests/scale/test_meshes.py.",
    ),
}
PAGE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "audit.md"
MESSAGE_CHARS = 120

# The subpackages, in the page's order: (title, module).
SECTIONS = (
    ("jaxnum.precision", jn.precision),
    ("jaxnum.autodiff", jn.autodiff),
    ("jaxnum.linalg", jn.linalg),
    ("jaxnum.lora", jn.lora),
    ("jaxnum.optim", jn.optim),
    ("jaxnum.kron", jn.kron),
    ("jaxnum.kfac", jn.kfac),
    ("jaxnum.kfac.nnx", jn.kfac.nnx),
    ("jaxnum.serialization", jn.serialization),
)


@dataclasses.dataclass(frozen=True)
class Case:
    """One invalid input given to one public function, and what it must get.

    Attributes:
      function: the public dotted name as users write it (``jn.loss_scaling``,
        ``jn.linalg.cg``, ``jn.Policy.parse``).
      kind: one of :data:`KINDS`.
      tried: the invalid input, in a few words.
      call: does it (no arguments).
      raises: ``(exception type, regex its message must match)``.
      check: for a case that does not raise: a predicate on ``call()``'s result.
      outcome: what ``check`` verifies, in words (the table shows it).
    """

    function: str
    kind: str
    tried: str
    call: Callable[[], Any]
    raises: tuple[type[BaseException], str] | None = None
    check: Callable[[Any], bool] | None = None
    outcome: str = ""
    path: str = ""

    def __post_init__(self):
        if self.path and self.path not in PATHS:
            raise ValueError(f"{self.id}: path {self.path!r} is not one of {list(PATHS)}")
        if self.kind not in KINDS:
            raise ValueError(f"{self.id}: kind {self.kind!r} is not one of {KINDS}")
        if (self.raises is None) == (self.check is None):
            raise ValueError(f"{self.id}: give exactly one of raises= and check=")
        if self.check is not None and not self.outcome:
            raise ValueError(f"{self.id}: a check case needs its outcome in words")

    @property
    def id(self) -> str:
        return f"{self.function}: {self.tried}"


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    line = re.sub(r" at 0x[0-9a-fA-F]+", "", line)  # object addresses change from run to run
    return line if len(line) <= MESSAGE_CHARS else line[: MESSAGE_CHARS - 3].rstrip() + "..."


@functools.cache
def run(case: Case) -> str:
    """Runs ``case`` and returns what it gets, as the table shows it.

    Raises:
      AssertionError: the case did not get what it expects.
    """
    if case.raises is not None:
        expected, pattern = case.raises
        try:
            result = case.call()
        except Exception as e:  # the expectation is checked right here
            if not isinstance(e, expected) or not re.search(pattern, str(e)):
                raise AssertionError(
                    f"{case.id}: expected {expected.__name__} matching {pattern!r}, got "
                    f"{type(e).__name__}: {e}"
                ) from e
            return f"{type(e).__name__}: {_first_line(str(e))}"
        raise AssertionError(
            f"{case.id}: expected {expected.__name__} matching {pattern!r}; "
            f"it returned {_first_line(repr(result))}"
        )
    result = case.call()
    if not case.check(result):
        raise AssertionError(
            f"{case.id}: the outcome is not {case.outcome!r}; got {_first_line(repr(result))}"
        )
    return case.outcome


# ---------------------------------------------------------------------------------------------
# Small inputs, built when a case runs.

KEY = jax.random.key(0)


def v3():
    return jnp.ones(3)


def ints(n=3):
    return jnp.arange(n)


def A4():
    return jnp.diag(jnp.arange(1.0, 5.0))


def nan3():
    return jnp.array([1.0, jnp.nan, 1.0])


def sq(x):
    return jnp.sum(x**2)


def tree_equal(a, b) -> bool:
    """Same structure and bit-for-bit equal leaves."""
    if jax.tree.structure(a) != jax.tree.structure(b):
        return False
    return all(
        bool(np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def finite(tree) -> bool:
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


def all_zero(tree) -> bool:
    return all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(tree))


def _loss_scaling_skip(grad_value, dtype=jnp.float32):
    """One finite step of loss_scaling(adam), then one with ``grad_value`` in a gradient."""
    tx = jn.loss_scaling(optax.adam(1e-2), initial_scale=2.0**15)
    params = {"w": jnp.ones(3, dtype)}
    state = tx.init(params)
    _, state = tx.update({"w": jnp.full(3, 2.0**15, dtype)}, state, params)
    bad = {"w": jnp.array([1.0, grad_value, 1.0], dtype)}
    updates, new = tx.update(bad, state, params)
    return state, updates, new


def _skipped(out) -> bool:
    before, updates, after = out
    return (
        all_zero(updates)
        and tree_equal(after.inner_state, before.inner_state)
        and int(after.total_skipped) == 1
        and float(after.scale) == float(before.scale) / 2
        and not bool(after.last_finite)
    )


def _lbfgs_nan_step():
    """scale_by_lbfgs: two finite steps (one pair), then a NaN gradient, then a finite one."""
    tx = jn.scale_by_lbfgs(3)
    x = jnp.ones(4)
    state = tx.init(x)
    _, state = tx.update(jnp.ones(4), state, x)
    _, state = tx.update(2 * jnp.ones(4), state, x + 1.0)
    _, after_nan = tx.update(jnp.full(4, jnp.nan), state, x + 2.0)
    _, after = tx.update(3 * jnp.ones(4), after_nan, x + 3.0)
    return state, after_nan, after


def _lbfgs_nan_checked(out) -> bool:
    before, after_nan, after = out
    return (
        int(after_nan.num_pairs) == int(before.num_pairs) == 1
        and int(after_nan.num_skipped) == 1
        and finite((after_nan.pairs, after_nan.sy, after_nan.yy, after_nan.prev_grad))
        and int(after.num_pairs) == 2
    )


def _lbfgs_chain_nan():
    """lbfgs(): one finite step, then a NaN gradient."""
    tx = jn.lbfgs()
    f = lambda p: jnp.sum((p - 2.0) ** 2)  # noqa: E731
    p = v3()
    g = jax.grad(f)(p)
    u, state = tx.update(g, tx.init(p), p, value=f(p), grad=g, value_fn=f)
    p = p + u
    g = nan3()
    updates, new = tx.update(g, state, p, value=f(p), grad=g, value_fn=f)
    return state, updates, new


def _lbfgs_chain_checked(out) -> bool:
    before, updates, after = out
    return (
        all_zero(updates)
        and tree_equal(after[0].pairs, before[0].pairs)
        and int(after[0].num_skipped) == 1
        and int(after[2].status) == jn.Status.NO_DECREASE
        and int(after[2].num_failures) == 1
    )


def _nan_beyond(x):
    """(x - 3)^2 summed, NaN where x[0] > 1.5 (the minimiser is inside the NaN region)."""
    return jnp.where(x[0] > 1.5, jnp.nan, jnp.sum((x - 3.0) ** 2))


def _wolfe_nan_region():
    tx = jn.scale_by_strong_wolfe()
    f = lambda p: jnp.where(jnp.max(p) > 1.2, jnp.nan, jnp.sum((p - 3.0) ** 2))  # noqa: E731
    x = v3()
    g = jax.grad(f)(x)
    return tx.update(-g, tx.init(x), x, value=f(x), grad=g, value_fn=f)


def _newton_cg_step(value_fn, grads):
    tx = jn.scale_by_newton_cg()
    x = v3()
    state = tx.init(x)
    updates, new = tx.update(grads, state, x, value=value_fn(x), value_fn=value_fn)
    return state, updates, new


def _nan_below(p):
    """sum(p**4), NaN once p[0] < 0.9 (the Newton step lands there)."""
    return jnp.where(p[0] < 0.9, jnp.nan, jnp.sum(p**4))


class _MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return kfac.Dense(2, name="out")(jnp.tanh(kfac.Dense(4, name="hidden")(x)))


@functools.cache
def kfac_problem():
    """(model, params, x, y, grads, stats) of a 3 -> 4 -> 2 linen MLP on 8 examples."""
    model = _MLP()
    x = jax.random.normal(KEY, (8, 3))
    y = jax.random.normal(jax.random.key(1), (8, 2))
    params = model.init(KEY, x)["params"]
    _, grads, stats = kfac.value_grad_and_stats(model, "squared_error")(params, x, y, KEY)
    return model, params, x, y, grads, stats


def _kfac_nan_stats():
    """scale_by_kfac: one finite step, one with a NaN in a statistic, one finite again."""
    _, params, _, _, grads, stats = kfac_problem()
    tx = kfac.scale_by_kfac(inverse_every=1)
    _, state = tx.update(grads, tx.init(params), params, curvature=stats)
    bad = dict(stats)
    bad[("hidden",)] = stats[("hidden",)]._replace(A=stats[("hidden",)].A.at[0, 0].set(jnp.nan))
    _, skipped = tx.update(grads, state, params, curvature=bad)
    updates, after = tx.update(grads, skipped, params, curvature=stats)
    return state, skipped, updates, after


def _kfac_nan_checked(out) -> bool:
    before, skipped, updates, after = out
    return (
        tree_equal(skipped.factors, before.factors)
        and int(skipped.num_skipped) == 1
        and finite((skipped.inverses, after.factors, updates))
    )


def _mlp_loss(p):
    """The squared_error loss of the MLP problem (mean over the batch)."""
    model, _, x, y, _, _ = kfac_problem()
    return 0.5 * jnp.mean(jnp.sum((model.apply({"params": p}, x) - y) ** 2, axis=-1))


def _adaptive_kfac_nan_grads():
    """kfac.adaptive_optimizer: one update with NaN gradients (finite statistics)."""
    model, params, x, _, grads, stats = kfac_problem()
    tx = kfac.adaptive_optimizer()
    state = tx.init(params)
    updates, new = tx.update(
        jax.tree.map(lambda g: g * jnp.nan, grads), state, params, curvature=stats,
        fisher_gram=kfac.fisher_gram_fn(model, "squared_error", params, x),
        value=_mlp_loss(params), value_fn=_mlp_loss,
    )  # fmt: skip
    return state, updates, new


def _kfac_optimizer_nan_grads(wrapped: bool):
    """kfac.optimizer(0.1) (in loss_scaling(dynamic=False, initial_scale=1) if ``wrapped``): a
    finite step, then NaN gradients."""
    _, params, _, _, grads, stats = kfac_problem()
    tx = kfac.optimizer(0.1)
    if wrapped:
        tx = jn.loss_scaling(tx, dynamic=False, initial_scale=1.0)
    _, state = tx.update(grads, tx.init(params), params, curvature=stats)
    nan_grads = jax.tree.map(lambda g: g * jnp.nan, grads)
    updates, new = tx.update(nan_grads, state, params, curvature=stats)
    return state, updates, new


class _NNXNet(nnx.Module):
    def __init__(self):
        self.out = kfac.nnx.Linear(3, 2, rngs=nnx.Rngs(0))

    def __call__(self, x):
        return self.out(x)


def kfac_factors(d_in=4, *, nan=False, zero=False):
    """Kronecker factors A (d_in x d_in) and G (2 x 2): identities, A with a NaN or zero."""
    A = jnp.zeros((d_in, d_in)) if zero else jnp.eye(d_in)
    return kfac.KroneckerFactors(A.at[0, 0].set(jnp.nan) if nan else A, jnp.eye(2))


STATS = "the MLP's statistics"
STATS_SWAPPED = "the MLP's statistics with hidden's replaced by out's"


def kfac_update(tx, **extra):
    """``tx.update`` from ``tx.init`` on the MLP's gradients, with ``extra`` keyword arguments
    (``curvature=STATS`` or ``STATS_SWAPPED`` stand for those statistics)."""
    _, params, _, _, grads, stats = kfac_problem()
    if isinstance(extra.get("curvature"), str):
        swapped = {("hidden",): stats[("out",)], ("out",): stats[("out",)]}
        extra["curvature"] = stats if extra["curvature"] == STATS else swapped
    return tx.update(grads, tx.init(params), params, **extra)


def _ekfac_nan_rows():
    """scale_by_ekfac: a finite step, then per-example rows holding an inf (finite factors)."""
    _, params, _, _, grads, _ = kfac_problem()
    stats = stats_of("squared_error", per_example=True)[2]
    tx = kfac.scale_by_ekfac(eigenbasis_every=1)
    _, state = tx.update(grads, tx.init(params), params, curvature=stats)
    bad = {k: s._replace(inputs=s.inputs.at[0, 0, 0].set(jnp.inf)) for k, s in stats.items()}
    updates, skipped = tx.update(grads, state, params, curvature=bad)
    return state, updates, skipped


def stats_of(loss, *, inputs=None, targets=None, **options):
    """``value_grad_and_stats(_MLP(), loss, **options)`` on the MLP's batch, with ``inputs`` or
    ``targets`` replaced."""
    _, params, x, y, _, _ = kfac_problem()
    f = kfac.value_grad_and_stats(_MLP(), loss, **options)
    return f(params, x if inputs is None else inputs, y if targets is None else targets, KEY)


def ls_state():
    return jn.loss_scaling(optax.sgd(0.1)).init(v3())


def sq_vg(p):
    """``((value, aux), grad)`` of :func:`sq`, as strong_wolfe_search takes it."""
    return (sq(p), None), 2 * p


def restore(template, saved):
    """``from_bytes(template, to_bytes(saved))``: a checkpoint of ``saved`` restored."""
    return jn.serialization.from_bytes(template, jn.serialization.to_bytes(saved))


def W43():
    return jnp.arange(12.0).reshape(4, 3)


# ---------------------------------------------------------------------------------------------
# The cases. E, T: the usual exception types.

E, T = ValueError, TypeError
C = Case

# The lists are laid out by hand (one case: function, kind and input; the call; what it gets).
# fmt: off
PRECISION = [
    C("jn.all_finite", "non-finite", "an inf entry",
      lambda: jn.all_finite({"a": jnp.array([1.0, jnp.inf])}),
      check=lambda r: not bool(r), outcome="returns False"),
    C("jn.all_finite", "dtype", "a Python float inf as a leaf",
      lambda: jn.all_finite({"a": float("inf")}),
      check=lambda r: not bool(r), outcome="returns False (Python scalars are checked too)"),
    C("jn.all_finite", "dtype", "integer leaves only",
      lambda: jn.all_finite({"i": ints()}),
      check=lambda r: bool(r), outcome="returns True (integers cannot hold inf/nan)"),
    C("jn.all_finite", "empty tree", "{}",
      lambda: jn.all_finite({}),
      check=lambda r: bool(r), outcome="returns True (nothing is non-finite)"),

    C("jn.clip_by_global_norm", "hyperparameter", "max_norm=0",
      lambda: jn.clip_by_global_norm(0.0),
      raises=(E, r"clip_by_global_norm: max_norm must be > 0")),
    C("jn.clip_by_global_norm", "hyperparameter", "max_norm=-1",
      lambda: jn.clip_by_global_norm(-1.0),
      raises=(E, r"clip_by_global_norm: max_norm must be > 0")),
    C("jn.clip_by_global_norm", "hyperparameter", "max_norm=nan",
      lambda: jn.clip_by_global_norm(float("nan")),
      raises=(E, r"clip_by_global_norm: max_norm must be > 0, got nan")),
    C("jn.clip_by_global_norm", "dtype", "max_norm='1'",
      lambda: jn.clip_by_global_norm("1"),
      raises=(T, r"clip_by_global_norm: max_norm must be a real scalar")),
    C("jn.clip_by_global_norm", "empty tree", "update({})",
      lambda: jn.clip_by_global_norm(1.0).update({}, None),
      raises=(E, r"clip_by_global_norm: updates is an empty pytree")),
    C("jn.clip_by_global_norm", "dtype", "integer updates",
      lambda: jn.clip_by_global_norm(1.0).update({"i": ints()}, None),
      raises=(T, r"clip_by_global_norm: updates has no floating-point leaves")),
    C("jn.clip_by_global_norm", "non-finite", "an inf gradient",
      lambda: jn.clip_by_global_norm(1.0).update({"w": jnp.array([jnp.inf, 1.0])}, None),
      check=lambda r: bool(jnp.isinf(r[1].norm)) and bool(r[1].clipped) and not finite(r[0]),
      outcome="the state records norm=inf, clipped=True; the updates stay non-finite (never "
      "zeroed) so that a surrounding loss_scaling skips the step"),

    C("jn.current_loss_scale", "empty tree", "opt_state={}",
      lambda: jn.current_loss_scale({}),
      raises=(E, r"current_loss_scale: opt_state must contain exactly one LossScalingState, "
                 r"found 0")),
    C("jn.current_loss_scale", "shape", "an adam state (no loss scaling)",
      lambda: jn.current_loss_scale(optax.adam(1e-3).init(v3())),
      raises=(E, r"current_loss_scale: .* found 0")),
    C("jn.current_loss_scale", "shape", "two loss-scaling states",
      lambda: jn.current_loss_scale([jn.loss_scaling(optax.sgd(0.1)).init(v3())] * 2),
      raises=(E, r"current_loss_scale: .* found 2")),

    C("jn.first_nonfinite", "dtype", "fn=3 (not callable)",
      lambda: jn.first_nonfinite(3, v3()),
      raises=(T, r"first_nonfinite: fn must be callable")),
    C("jn.first_nonfinite", "non-finite", "an argument that is NaN already",
      lambda: jn.first_nonfinite(lambda x: x * 2.0, nan3()),
      check=lambda r: r.primitive == "mul" and not r.inputs_finite,
      outcome="names the first op (mul) with inputs_finite=False: the arguments were "
      "non-finite already"),

    C("jn.precision.float_format", "dtype", "dtype='int8'",
      lambda: jn.precision.float_format("int8"),
      raises=(T, r"float_format: dtype must be a floating dtype, got int8")),
    C("jn.precision.float_format", "dtype", "dtype='float33'",
      lambda: jn.precision.float_format("float33"),
      raises=(T, r"float_format: dtype='float33' is not a dtype")),

    C("jn.global_norm", "empty tree", "{}",
      lambda: jn.global_norm({}),
      raises=(E, r"global_norm: tree is an empty pytree")),
    C("jn.global_norm", "dtype", "integer leaves only",
      lambda: jn.global_norm({"i": ints()}),
      raises=(T, r"global_norm: tree has no floating-point leaves \(found int32\)")),
    C("jn.global_norm", "non-finite", "a NaN entry",
      lambda: jn.global_norm({"w": nan3()}),
      check=lambda r: bool(jnp.isnan(r)),
      outcome="returns nan (a norm, no check: clipping and loss_scaling act on it)"),

    C("jn.loss_scaling", "dtype", "inner=optax.adam (the factory, not a transformation)",
      lambda: jn.loss_scaling(optax.adam),
      raises=(T, r"loss_scaling: inner must be an optax.GradientTransformation")),
    C("jn.loss_scaling", "hyperparameter", "initial_scale=0",
      lambda: jn.loss_scaling(optax.sgd(0.1), initial_scale=0.0),
      raises=(E, r"loss_scaling: initial_scale must be > 0")),
    C("jn.loss_scaling", "hyperparameter", "initial_scale=-1",
      lambda: jn.loss_scaling(optax.sgd(0.1), initial_scale=-1.0),
      raises=(E, r"loss_scaling: initial_scale must be > 0")),
    C("jn.loss_scaling", "hyperparameter", "initial_scale=nan",
      lambda: jn.loss_scaling(optax.sgd(0.1), initial_scale=float("nan")),
      raises=(E, r"loss_scaling: initial_scale must be > 0, got nan")),
    C("jn.loss_scaling", "hyperparameter", "min_scale=0",
      lambda: jn.loss_scaling(optax.sgd(0.1), min_scale=0.0),
      raises=(E, r"loss_scaling: min_scale must be > 0")),
    C("jn.loss_scaling", "hyperparameter", "min_scale=1e-50 (0 in float32)",
      lambda: jn.loss_scaling(optax.sgd(0.1), min_scale=1e-50),
      raises=(E, r"loss_scaling: min_scale=1e-50 is 0 in float32, the scale's dtype")),
    C("jn.loss_scaling", "hyperparameter", "min_scale=1e-40 (subnormal in float32)",
      lambda: jn.loss_scaling(optax.sgd(0.1), min_scale=1e-40),
      raises=(E, r"loss_scaling: min_scale=1e-40 is 1e-40 in float32, .* S not subnormal")),
    C("jn.loss_scaling", "hyperparameter", "max_scale=1e40 (inf in float32)",
      lambda: jn.loss_scaling(optax.sgd(0.1), max_scale=1e40),
      raises=(E, r"loss_scaling: max_scale=1e\+40 is inf in float32")),
    C("jn.loss_scaling", "hyperparameter", "initial_scale=0.5 below min_scale=1",
      lambda: jn.loss_scaling(optax.sgd(0.1), initial_scale=0.5),
      raises=(E, r"loss_scaling: initial_scale=0.5 is below min_scale=1")),
    C("jn.loss_scaling", "hyperparameter", "max_scale=1024 below initial_scale=2**15",
      lambda: jn.loss_scaling(optax.sgd(0.1), max_scale=1024.0),
      raises=(E, r"loss_scaling: initial_scale=32768.0 exceeds max_scale=1024")),
    C("jn.loss_scaling", "hyperparameter", "max_norm=0",
      lambda: jn.loss_scaling(optax.sgd(0.1), max_norm=0.0),
      raises=(E, r"loss_scaling: max_norm must be > 0")),
    C("jn.loss_scaling", "hyperparameter", "max_norm=-1",
      lambda: jn.loss_scaling(optax.sgd(0.1), max_norm=-1.0),
      raises=(E, r"loss_scaling: max_norm must be > 0")),
    C("jn.loss_scaling", "hyperparameter", "growth_factor=1",
      lambda: jn.loss_scaling(optax.sgd(0.1), growth_factor=1.0),
      raises=(E, r"loss_scaling: growth_factor must be > 1")),
    C("jn.loss_scaling", "hyperparameter", "backoff_factor=1.5",
      lambda: jn.loss_scaling(optax.sgd(0.1), backoff_factor=1.5),
      raises=(E, r"loss_scaling: backoff_factor must lie in \(0.0, 1.0\)")),
    C("jn.loss_scaling", "hyperparameter", "backoff_factor=0",
      lambda: jn.loss_scaling(optax.sgd(0.1), backoff_factor=0.0),
      raises=(E, r"loss_scaling: backoff_factor must lie in")),
    C("jn.loss_scaling", "hyperparameter", "growth_interval=0",
      lambda: jn.loss_scaling(optax.sgd(0.1), growth_interval=0),
      raises=(E, r"loss_scaling: growth_interval must be (a Python int )?>= 1")),
    C("jn.loss_scaling", "dtype", "growth_interval=1.5",
      lambda: jn.loss_scaling(optax.sgd(0.1), growth_interval=1.5),
      raises=(T, r"loss_scaling: growth_interval must be a Python int")),
    C("jn.loss_scaling", "dtype", "dynamic='yes'",
      lambda: jn.loss_scaling(optax.sgd(0.1), dynamic="yes"),
      raises=(T, r"loss_scaling: dynamic must be a bool")),
    C("jn.loss_scaling", "empty tree", "update({})",
      lambda: jn.loss_scaling(optax.sgd(0.1)).update({}, jn.loss_scaling(optax.sgd(0.1)).init({})),
      raises=(E, r"loss_scaling: updates is an empty pytree")),
    C("jn.loss_scaling", "dtype", "integer updates",
      lambda: jn.loss_scaling(optax.sgd(0.1)).update(
          {"i": ints()}, jn.loss_scaling(optax.sgd(0.1)).init({"i": ints()})),
      raises=(T, r"loss_scaling: updates has no floating-point leaves")),
    C("jn.loss_scaling", "non-finite", "an inf in the scaled gradients (adam inside)",
      lambda: _loss_scaling_skip(jnp.inf),
      check=_skipped, outcome="step skipped: zero updates, adam's state bit-for-bit unchanged, "
      "total_skipped=1, scale halved, last_finite=False"),
    C("jn.loss_scaling", "non-finite", "a NaN in float16 scaled gradients",
      lambda: _loss_scaling_skip(jnp.nan, jnp.float16),
      check=_skipped, outcome="step skipped: zero updates, adam's state bit-for-bit unchanged, "
      "total_skipped=1, scale halved, last_finite=False"),

    C("jn.nonfinite_report", "empty tree", "{}",
      lambda: jn.nonfinite_report({}),
      raises=(E, r"nonfinite_report: tree is an empty pytree")),
    C("jn.nonfinite_report", "dtype", "integer leaves only",
      lambda: jn.nonfinite_report({"i": ints()}),
      raises=(T, r"nonfinite_report: tree has no floating-point leaves")),
    C("jn.nonfinite_report", "non-finite", "nan and +inf in one leaf",
      lambda: jn.nonfinite_report({"w": jnp.array([jnp.nan, jnp.inf, 1.0])}),
      check=lambda r: r.bad_leaves() == [("['w']", 1, 1, 0)],
      outcome="counts them by path: ['w'] nan=1, +inf=1, -inf=0"),

    C("jn.online_logsumexp", "dtype", "integer x",
      lambda: jn.online_logsumexp(ints()),
      raises=(T, r"online_logsumexp: x must be a floating array, got dtype int32")),
    C("jn.online_logsumexp", "shape", "a scalar x",
      lambda: jn.online_logsumexp(jnp.array(1.0)),
      raises=(E, r"online_logsumexp: x must have at least one dimension")),
    C("jn.online_logsumexp", "shape", "axis=2 on a 1-D x",
      lambda: jn.online_logsumexp(v3(), axis=2),
      raises=(E, r"online_logsumexp: axis must be a Python int in -1..0, got 2")),
    C("jn.online_logsumexp", "dtype", "axis=0.5",
      lambda: jn.online_logsumexp(v3(), axis=0.5),
      raises=(T, r"online_logsumexp: axis must be a Python int in -1..0, got 0.5")),
    C("jn.online_logsumexp", "hyperparameter", "block_size=0",
      lambda: jn.online_logsumexp(v3(), block_size=0),
      raises=(E, r"online_logsumexp: block_size must be a Python int >= 1, got 0")),
    C("jn.online_logsumexp", "dtype", "block_size=2.0",
      lambda: jn.online_logsumexp(v3(), block_size=2.0),
      raises=(T, r"online_logsumexp: block_size must be a Python int")),
    C("jn.online_logsumexp", "shape", "no entries along axis (shape (2, 0))",
      lambda: jn.online_logsumexp(jnp.ones((2, 0))),
      raises=(E, r"online_logsumexp: x has no entries along axis 1")),
    C("jn.online_logsumexp", "non-finite", "a +inf entry",
      lambda: jn.online_logsumexp(jnp.array([1.0, jnp.inf])),
      check=lambda r: bool(jnp.isposinf(r)),
      outcome="returns +inf (the exact answer, no inf - inf NaN)"),
    C("jn.online_logsumexp", "non-finite", "a NaN entry",
      lambda: jn.online_logsumexp(nan3()),
      check=lambda r: bool(jnp.isnan(r)), outcome="returns nan (as jax.nn.logsumexp)"),

    C("jn.online_softmax", "dtype", "integer x",
      lambda: jn.online_softmax(ints()),
      raises=(T, r"online_softmax: x must be a floating array")),
    C("jn.online_softmax", "shape", "axis=-2 on a 1-D x",
      lambda: jn.online_softmax(v3(), axis=-2),
      raises=(E, r"online_softmax: axis must be a Python int in -1..0, got -2")),
    C("jn.online_softmax", "shape", "no entries along axis",
      lambda: jn.online_softmax(jnp.ones((0,))),
      raises=(E, r"online_softmax: x has no entries along axis 0")),
    C("jn.online_softmax", "non-finite", "a +inf entry",
      lambda: jn.online_softmax(jnp.array([1.0, jnp.inf])),
      check=lambda r: bool(jnp.all(jnp.isnan(r))),
      outcome="returns NaN for the whole row, as jax.nn.softmax does (no check)"),

    C("jn.overflow_fraction", "dtype", "dtype=int8",
      lambda: jn.overflow_fraction(v3(), jnp.int8),
      raises=(T, r"overflow_fraction: dtype must be a floating dtype, got int8")),
    C("jn.overflow_fraction", "dtype", "dtype='float33'",
      lambda: jn.overflow_fraction(v3(), "float33"),
      raises=(T, r"overflow_fraction: dtype='float33' is not a dtype")),
    C("jn.overflow_fraction", "empty tree", "{}",
      lambda: jn.overflow_fraction({}, jnp.float16),
      raises=(E, r"overflow_fraction: tree is an empty pytree")),
    C("jn.overflow_fraction", "non-finite", "[nan, inf, 1e5] to float16",
      lambda: jn.overflow_fraction(jnp.array([jnp.nan, jnp.inf, 1e5]), jnp.float16),
      check=lambda r: float(r) == 1.0,
      outcome="returns 1.0: NaN and inf entries are not counted, 1e5 overflows"),
    C("jn.underflow_fraction", "dtype", "integer leaves only",
      lambda: jn.underflow_fraction({"i": ints()}, jnp.float16),
      raises=(T, r"underflow_fraction: tree has no floating-point leaves")),
    C("jn.underflow_fraction", "dtype", "dtype=bool",
      lambda: jn.underflow_fraction(v3(), bool),
      raises=(T, r"underflow_fraction: dtype must be a floating dtype, got bool")),
    C("jn.underflow_fraction", "empty tree", "[]",
      lambda: jn.underflow_fraction([], jnp.float16),
      raises=(E, r"underflow_fraction: tree is an empty pytree")),
    C("jn.underflow_fraction", "non-finite", "[nan, 0, 1e-9, 1] to float16",
      lambda: jn.underflow_fraction(jnp.array([jnp.nan, 0.0, 1e-9, 1.0]), jnp.float16),
      check=lambda r: float(r) == 0.5,
      outcome="returns 0.5: NaN and zero entries are not counted, 1e-9 underflows"),

    C("jn.scaled_value_and_grad", "dtype", "loss_fn=3 (not callable)",
      lambda: jn.scaled_value_and_grad(3),
      raises=(T, r"scaled_value_and_grad: loss_fn must be callable")),
    C("jn.scaled_value_and_grad", "shape", "loss_fn returns a vector",
      lambda: jn.scaled_value_and_grad(lambda p: p**2)(ls_state(), v3()),
      raises=(T, r"scaled_value_and_grad: loss must be a scalar, got shape \(3,\)")),
    C("jn.scaled_value_and_grad", "shape", "has_aux=True, loss_fn returns a scalar",
      lambda: jn.scaled_value_and_grad(sq, has_aux=True)(ls_state(), v3()),
      raises=(T, r"scaled_value_and_grad: has_aux=True needs loss_fn to return a pair "
                 r"\(loss, aux\), got shape \(\)")),
    C("jn.scaled_value_and_grad", "empty tree", "opt_state without loss scaling",
      lambda: jn.scaled_value_and_grad(sq)(optax.sgd(0.1).init(v3()), v3()),
      raises=(E, r"scaled_value_and_grad: opt_state must contain exactly one LossScalingState")),

    C("jn.Policy", "dtype", "param_dtype=jnp.int32",
      lambda: jn.Policy(param_dtype=jnp.int32),
      raises=(T, r"Policy: param_dtype must be a floating dtype, got int32")),
    C("jn.Policy", "dtype", "compute_dtype='int32'",
      lambda: jn.Policy(compute_dtype="int32"),
      raises=(E, r"Policy: compute_dtype must be a floating dtype, got int32")),
    C("jn.Policy", "dtype", "output_dtype='float33'",
      lambda: jn.Policy(output_dtype="float33"),
      raises=(E, r"Policy: output_dtype='float33' is not a dtype")),
    C("jn.Policy.parse", "dtype", "spec=3",
      lambda: jn.Policy.parse(3),
      raises=(T, r"Policy.parse: spec must be a str, got int")),
    C("jn.Policy.parse", "dtype", "'params=float33'",
      lambda: jn.Policy.parse("params=float33"),
      raises=(E, r"Policy: param='float33' is not a dtype")),
    C("jn.Policy.parse", "dtype", "'compute=int8'",
      lambda: jn.Policy.parse("compute=int8"),
      raises=(E, r"Policy: compute must be a floating dtype, got int8")),
    C("jn.Policy.parse", "method", "'weights=float32' (an unknown key)",
      lambda: jn.Policy.parse("weights=float32"),
      raises=(E, r"Policy.parse: cannot read 'weights=float32'")),
    C("jn.Policy.parse", "method", "'p=f32,params=f16' (a key twice)",
      lambda: jn.Policy.parse("p=f32,params=f16"),
      raises=(E, r"Policy.parse: param given twice")),
]

AUTODIFF = [
    C("jn.autodiff.derivative", "method", "method='backward'",
      lambda: ad.derivative(jnp.sin, jnp.array(1.0), method="backward"),
      raises=(E, r"derivative: method='backward' unknown")),
    C("jn.autodiff.derivative", "dtype", "integer x",
      lambda: ad.derivative(sq, ints(), v3()),
      raises=(T, r"derivative: x has dtype int32; differentiation needs floating-point inputs")),
    C("jn.autodiff.derivative", "empty tree", "x={}",
      lambda: ad.derivative(lambda x: 0.0, {}),
      raises=(E, r"derivative: x is an empty pytree")),
    C("jn.autodiff.derivative", "shape", "v of shape (2,) for x of shape (3,)",
      lambda: ad.derivative(sq, v3(), jnp.ones(2)),
      raises=(E, r"derivative: v has shape \(2,\), expected \(3,\)")),
    C("jn.autodiff.derivative", "shape", "v omitted for a 3-entry x",
      lambda: ad.derivative(sq, v3()),
      raises=(E, r"derivative: v \(the direction\) is required when x has 3 entries")),
    C("jn.autodiff.derivative", "hyperparameter", "h=0",
      lambda: ad.derivative(jnp.sin, jnp.array(1.0), h=0.0),
      raises=(E, r"derivative: the step h must be > 0")),
    C("jn.autodiff.derivative", "hyperparameter", "h=-1e-3",
      lambda: ad.derivative(jnp.sin, jnp.array(1.0), h=-1e-3),
      raises=(E, r"derivative: the step h must be > 0")),
    C("jn.autodiff.derivative", "hyperparameter", "h=1e-50 in float32",
      lambda: ad.derivative(jnp.sin, jnp.array(1.0), h=1e-50),
      raises=(E, r"derivative: the step h=1e-50 rounds to 0 in float32")),
    C("jn.autodiff.derivative", "method", "method='complex' on f = abs",
      lambda: ad.derivative(jnp.abs, jnp.array(1.0), method="complex"),
      raises=(E, r"derivative: method='complex' needs f to be complex-safe")),
    C("jn.autodiff.derivative", "non-finite", "x = NaN",
      lambda: ad.derivative(jnp.sin, jnp.array(jnp.nan)),
      check=lambda r: bool(jnp.isnan(r)),
      outcome="returns nan (a difference quotient at a NaN point; no check)"),

    C("jn.autodiff.fd_error_curve", "shape", "hs of shape (2, 2)",
      lambda: ad.fd_error_curve(jnp.sin, jnp.array(1.0), jnp.full((2, 2), 1e-3)),
      raises=(E, r"fd_error_curve: hs must be a non-empty 1-D array, got shape \(2, 2\)")),
    C("jn.autodiff.fd_error_curve", "empty tree", "hs=[]",
      lambda: ad.fd_error_curve(jnp.sin, jnp.array(1.0), jnp.zeros(0)),
      raises=(E, r"fd_error_curve: hs must be a non-empty 1-D array")),
    C("jn.autodiff.fd_error_curve", "hyperparameter", "a step of 0 in hs",
      lambda: ad.fd_error_curve(jnp.sin, jnp.array(1.0), jnp.array([0.0, 1e-3])),
      raises=(E, r"fd_error_curve: the step h must be > 0")),
    C("jn.autodiff.fd_error_curve", "method", "method='backward'",
      lambda: ad.fd_error_curve(jnp.sin, jnp.array(1.0), jnp.array([1e-3]), method="backward"),
      raises=(E, r"fd_error_curve: method='backward' unknown")),
    C("jn.autodiff.fd_error_curve", "dtype", "integer x",
      lambda: ad.fd_error_curve(jnp.sin, jnp.array(1), jnp.array([1e-3])),
      raises=(T, r"fd_error_curve: x has dtype int32")),

    C("jn.autodiff.gradcheck", "hyperparameter", "order=3",
      lambda: ad.gradcheck(sq, v3(), order=3),
      raises=(E, r"gradcheck: order must be a Python int in 1..2, got 3")),
    C("jn.autodiff.gradcheck", "method", "modes=('bwd',)",
      lambda: ad.gradcheck(sq, v3(), modes=("bwd",)),
      raises=(E, r"gradcheck: modes=\('bwd',\); expected a non-empty subset of \('fwd', 'rev'\)")),
    C("jn.autodiff.gradcheck", "empty tree", "modes=()",
      lambda: ad.gradcheck(sq, v3(), modes=()),
      raises=(E, r"gradcheck: modes=\(\); expected a non-empty subset")),
    C("jn.autodiff.gradcheck", "hyperparameter", "argnum=1 with one argument",
      lambda: ad.gradcheck(sq, v3(), argnum=1),
      raises=(E, r"gradcheck: argnum=1 out of range for 1 argument")),
    C("jn.autodiff.gradcheck", "hyperparameter", "num_probes=0",
      lambda: ad.gradcheck(sq, v3(), num_probes=0),
      raises=(E, r"gradcheck: num_probes must be a Python int >= 1, got 0")),
    C("jn.autodiff.gradcheck", "hyperparameter", "eps=0",
      lambda: ad.gradcheck(sq, v3(), eps=0.0),
      raises=(E, r"gradcheck: eps \(the finite-difference step\) must be > 0")),
    C("jn.autodiff.gradcheck", "hyperparameter", "atol=-1",
      lambda: ad.gradcheck(sq, v3(), atol=-1.0),
      raises=(E, r"gradcheck: atol must be >= 0, got -1.0")),
    C("jn.autodiff.gradcheck", "hyperparameter", "rtol=nan",
      lambda: ad.gradcheck(sq, v3(), rtol=float("nan")),
      raises=(E, r"gradcheck: rtol must be >= 0, got nan")),
    C("jn.autodiff.gradcheck", "dtype", "integer argument",
      lambda: ad.gradcheck(sq, ints()),
      raises=(T, r"gradcheck: args\[0\] has dtype int32")),
    C("jn.autodiff.gradcheck", "non-finite", "f = sum(log(x)) at x = -1 (NaN derivatives)",
      lambda: ad.gradcheck(lambda x: jnp.sum(jnp.log(x)), -v3()),
      check=lambda r: not r.passed and np.isnan(r.fd_value),
      outcome="passed=False: the NaN finite differences fail the comparison (AD gives 1/x)"),

    C("jn.autodiff.taylor_test", "shape", "v of shape (2,) for x of shape (3,)",
      lambda: ad.taylor_test(sq, v3(), jnp.ones(2)),
      raises=(E, r"taylor_test: v has shape \(2,\), expected \(3,\)")),
    C("jn.autodiff.taylor_test", "hyperparameter", "num_steps=2",
      lambda: ad.taylor_test(sq, v3(), num_steps=2),
      raises=(E, r"taylor_test: num_steps must be a Python int >= 3, got 2")),
    C("jn.autodiff.taylor_test", "dtype", "integer x",
      lambda: ad.taylor_test(sq, ints()),
      raises=(T, r"taylor_test: x has dtype int32")),
    C("jn.autodiff.taylor_test", "shape", "f returns a vector",
      lambda: ad.taylor_test(lambda x: x**2, v3()),
      raises=(T, r"Gradient only defined for scalar-output functions")),
    C("jn.autodiff.taylor_test", "non-finite", "f NaN at x (log of -1)",
      lambda: ad.taylor_test(lambda x: jnp.sum(jnp.log(x)), -v3()),
      check=lambda r: not r.passed and np.isnan(r.slope),
      outcome="passed=False, slope=nan (no usable step)"),

    C("jn.autodiff.hvp", "method", "mode='rev-rev-rev'",
      lambda: ad.hvp(sq, v3(), v3(), mode="rev-rev-rev"),
      raises=(E, r"hvp: mode='rev-rev-rev' unknown; expected one of")),
    C("jn.autodiff.hvp", "dtype", "integer x",
      lambda: ad.hvp(sq, ints(), v3()),
      raises=(T, r"hvp: x has dtype int32")),
    C("jn.autodiff.hvp", "empty tree", "x={}",
      lambda: ad.hvp(lambda x: 0.0, {}, {}),
      raises=(E, r"hvp: x is an empty pytree")),
    C("jn.autodiff.hvp", "shape", "v of shape (2,)",
      lambda: ad.hvp(sq, v3(), jnp.ones(2)),
      raises=(E, r"hvp: v has shape \(2,\), expected \(3,\)")),
    C("jn.autodiff.hvp", "shape", "v a dict, x an array",
      lambda: ad.hvp(sq, v3(), {"a": v3()}),
      raises=(E, r"hvp: v must have the tree structure of x")),
    C("jn.autodiff.hvp", "shape", "f returns a vector",
      lambda: ad.hvp(lambda x: x**2, v3(), v3()),
      raises=(T, r"Gradient only defined for scalar-output functions")),
    C("jn.autodiff.hvp_fn", "dtype", "integer x",
      lambda: ad.hvp_fn(sq, ints()),
      raises=(T, r"hvp_fn: x has dtype int32")),
    C("jn.autodiff.hvp_fn", "empty tree", "x=[]",
      lambda: ad.hvp_fn(sq, []),
      raises=(E, r"hvp_fn: x is an empty pytree")),
    C("jn.autodiff.hvp_fn", "shape", "a product with v of shape (2,)",
      lambda: ad.hvp_fn(sq, v3())(jnp.ones(2)),
      raises=(E, r"hvp_fn: v has shape \(2,\), expected \(3,\)")),
    C("jn.autodiff.hvp_fn", "dtype", "a product with an int32 v",
      lambda: ad.hvp_fn(sq, v3())(jnp.ones(3, jnp.int32)),
      raises=(T, r"hvp_fn: v has dtype int32, expected float32")),
    C("jn.autodiff.gnvp_fn", "empty tree", "params={}",
      lambda: ad.gnvp_fn(lambda p, x: x, lambda o, t: jnp.sum(o), {}, v3(), v3()),
      raises=(E, r"gnvp_fn: params is an empty pytree")),
    C("jn.autodiff.gnvp_fn", "dtype", "integer params",
      lambda: ad.gnvp_fn(lambda p, x: p * x, lambda o, t: jnp.sum(o), ints(), v3(), v3()),
      raises=(T, r"gnvp_fn: params has dtype int32")),
    C("jn.autodiff.gnvp_fn", "shape", "a product with v of shape (2,)",
      lambda: ad.gnvp_fn(lambda p, x: p * x, lambda o, t: sq(o), v3(), v3(), v3())(jnp.ones(2)),
      raises=(E, r"gnvp_fn: v has shape \(2,\), expected \(3,\)")),

    C("jn.autodiff.hessian_trace", "method", "method='exact'",
      lambda: ad.hessian_trace(sq, v3(), key=KEY, num_samples=6, method="exact"),
      raises=(E, r"hessian_trace: method='exact' unknown")),
    C("jn.autodiff.hessian_trace", "hyperparameter", "num_samples=2 with hutch++",
      lambda: ad.hessian_trace(sq, v3(), key=KEY, num_samples=2),
      raises=(E, r"hessian_trace: num_samples must be a Python int >= 3, got 2")),
    C("jn.autodiff.hessian_trace", "dtype", "num_samples=3.0",
      lambda: ad.hessian_trace(sq, v3(), key=KEY, num_samples=3.0),
      raises=(T, r"hessian_trace: num_samples must be a Python int")),
    C("jn.autodiff.hessian_trace", "hyperparameter", "chunk_size=0",
      lambda: ad.hessian_trace(sq, v3(), key=KEY, num_samples=3, chunk_size=0),
      raises=(E, r"hessian_trace: chunk_size must be a Python int >= 1 or None, got 0")),
    C("jn.autodiff.hessian_trace", "dtype", "integer x",
      lambda: ad.hessian_trace(sq, ints(), key=KEY, num_samples=3),
      raises=(T, r"hessian_trace: x has dtype int32")),
    C("jn.autodiff.hessian_trace", "dtype", "a float16 x with hutch++ (half precision)",
      lambda: ad.hessian_trace(sq, jnp.ones(3, jnp.float16), key=KEY, num_samples=3),
      raises=(T, r"hessian_trace: method='hutch\+\+' takes a QR, which has no float16 kernel")),
    C("jn.autodiff.hessian_diag", "hyperparameter", "num_samples=0",
      lambda: ad.hessian_diag(sq, v3(), key=KEY, num_samples=0),
      raises=(E, r"hessian_diag: num_samples must be a Python int >= 1, got 0")),
    C("jn.autodiff.hessian_diag", "empty tree", "x={}",
      lambda: ad.hessian_diag(lambda x: 0.0, {}, key=KEY, num_samples=2),
      raises=(E, r"hessian_diag: x is an empty pytree")),
    C("jn.autodiff.hessian_diag", "dtype", "integer x",
      lambda: ad.hessian_diag(sq, ints(), key=KEY, num_samples=2),
      raises=(T, r"hessian_diag: x has dtype int32")),
    C("jn.autodiff.trace_estimate", "method", "method='lanczos'",
      lambda: ad.trace_estimate(lambda v: v, v3(), key=KEY, num_samples=6, method="lanczos"),
      raises=(E, r"trace_estimate: method='lanczos' unknown; expected one of")),
    C("jn.autodiff.trace_estimate", "hyperparameter", "num_samples=3 with xtrace",
      lambda: ad.trace_estimate(lambda v: v, v3(), key=KEY, num_samples=3, method="xtrace"),
      raises=(E, r"trace_estimate: num_samples must be a Python int >= 4, got 3")),
    C("jn.autodiff.trace_estimate", "shape", "matvec returns shape (2,) for x_like (3,)",
      lambda: ad.trace_estimate(lambda v: v[:2], v3(), key=KEY, num_samples=3),
      raises=(E, r"trace_estimate: matvec\(x_like\) has shape \(2,\), expected \(3,\)")),
    C("jn.autodiff.trace_estimate", "empty tree", "x_like={}",
      lambda: ad.trace_estimate(lambda v: v, {}, key=KEY, num_samples=3),
      raises=(E, r"trace_estimate: x_like is an empty pytree")),
    C("jn.autodiff.trace_estimate", "hyperparameter", "chunk_size=-1",
      lambda: ad.trace_estimate(lambda v: v, v3(), key=KEY, num_samples=3, chunk_size=-1),
      raises=(E, r"trace_estimate: chunk_size must be a Python int >= 1 or None, got -1")),
    C("jn.autodiff.trace_estimate", "dtype", "a bfloat16 x_like, method='hutchinson'",
      lambda: ad.trace_estimate(lambda v: 2 * v, jnp.ones(3, jnp.bfloat16), key=KEY,
                                num_samples=2, method="hutchinson"),
      check=lambda r: r.value.dtype == jnp.bfloat16 and float(r.value) == 6.0,
      outcome="accepted: estimated in bfloat16 (Hutchinson needs no QR)"),
    C("jn.autodiff.trace_estimate", "non-finite", "matvec returns NaN",
      lambda: ad.trace_estimate(lambda v: v * jnp.nan, v3(), key=KEY, num_samples=3),
      check=lambda r: bool(jnp.isnan(r.value)), outcome="value=nan (an estimate; no check)"),
    C("jn.autodiff.diagonal_estimate", "hyperparameter", "num_samples=0",
      lambda: ad.diagonal_estimate(lambda v: v, v3(), key=KEY, num_samples=0),
      raises=(E, r"diagonal_estimate: num_samples must be a Python int >= 1, got 0")),
    C("jn.autodiff.diagonal_estimate", "shape", "matvec returns shape (2,) for x_like (3,)",
      lambda: ad.diagonal_estimate(lambda v: v[:2], v3(), key=KEY, num_samples=2),
      raises=(E, r"diagonal_estimate: matvec\(x_like\) has shape \(2,\)")),
    C("jn.autodiff.diagonal_estimate", "dtype", "integer x_like",
      lambda: ad.diagonal_estimate(lambda v: v, ints(), key=KEY, num_samples=2),
      raises=(T, r"diagonal_estimate: x_like has dtype int32")),
]

LINALG = [
    C("jn.linalg.LinearOperator", "shape", "shape=(3,)",
      lambda: la.LinearOperator((3,), jnp.float32, lambda v: v, lambda v: v),
      raises=(E, r"LinearOperator: shape must be \(m, n\) with m, n >= 1, got \(3,\)")),
    C("jn.linalg.LinearOperator", "shape", "shape=(0, 3)",
      lambda: la.LinearOperator((0, 3), jnp.float32, lambda v: v, lambda v: v),
      raises=(E, r"LinearOperator: shape must be \(m, n\) with m, n >= 1, got \(0, 3\)")),
    C("jn.linalg.LinearOperator.from_matrix", "shape", "a 1-D M",
      lambda: la.LinearOperator.from_matrix(v3()),
      raises=(E, r"LinearOperator.from_matrix: M must be 2-D, got shape \(3,\)")),
    C("jn.linalg.LinearOperator.from_matrix", "shape", "a 3-D M",
      lambda: la.LinearOperator.from_matrix(jnp.ones((2, 2, 2))),
      raises=(E, r"LinearOperator.from_matrix: M must be 2-D, got shape \(2, 2, 2\)")),
    C("jn.linalg.LinearOperator.from_function", "dtype", "fn=3 (not callable)",
      lambda: la.LinearOperator.from_function(3, v3()),
      raises=(T, r"LinearOperator.from_function: fn must be callable")),
    C("jn.linalg.LinearOperator.from_function", "dtype", "integer x_example",
      lambda: la.LinearOperator.from_function(lambda x: 2 * x, ints()),
      raises=(T, r"LinearOperator.from_function: x_example has dtype int32")),
    C("jn.linalg.LinearOperator.from_function", "empty tree", "x_example={}",
      lambda: la.LinearOperator.from_function(lambda x: x, {}),
      raises=(E, r"LinearOperator.from_function: x_example is an empty pytree")),
    C("jn.linalg.LinearOperator.from_function", "method", "a non-linear fn (sin)",
      lambda: la.LinearOperator.from_function(jnp.sin, v3()),
      raises=(E, r"LinearOperator.from_function: fn must be linear in x")),
    C("jn.linalg.LinearOperator.from_function", "method", "an affine fn (x + 1)",
      lambda: la.LinearOperator.from_function(lambda x: x + 1.0, v3()).matvec(v3()),
      check=lambda r: bool(jnp.all(r == 2.0)),
      outcome="not detected: accepted, matvec returns x + 1 (only the transpose is checked, "
      "and jax transposes x + 1 as x)"),
    C("jn.linalg.as_operator", "shape", "a 3-D array",
      lambda: la.as_operator(jnp.ones((2, 2, 2))),
      raises=(E, r"as_operator: A must be a 2-D matrix or a LinearOperator, "
                 r"got shape \(2, 2, 2\)")),
    C("jn.linalg.as_operator", "dtype", "a string",
      lambda: la.as_operator("A"),
      raises=(T, r"as_operator: A must be a matrix or a LinearOperator, got str")),

    C("jn.linalg.cg", "shape", "b of shape (4, 1)",
      lambda: la.cg(A4(), jnp.ones((4, 1))),
      raises=(E, r"cg: b must be a vector, got shape \(4, 1\)")),
    C("jn.linalg.cg", "shape", "A 3x3, b of 4 entries",
      lambda: la.cg(jnp.eye(3), jnp.ones(4)),
      raises=(E, r"cg: A has shape \(3, 3\), expected \(4, 4\)")),
    C("jn.linalg.cg", "shape", "preconditioner M 3x3 for n=4",
      lambda: la.cg(A4(), jnp.ones(4), M=jnp.eye(3)),
      raises=(E, r"cg: M has shape \(3, 3\), expected \(4, 4\)")),
    C("jn.linalg.cg", "shape", "x0 of shape (3,) for n=4",
      lambda: la.cg(A4(), jnp.ones(4), x0=v3()),
      raises=(E, r"cg: x0 has shape \(3,\), expected \(4,\)")),
    C("jn.linalg.cg", "dtype", "integer b",
      lambda: la.cg(A4(), ints(4)),
      raises=(T, r"cg: b must be floating point, got dtype int32")),
    C("jn.linalg.cg", "dtype", "A='A' (a string)",
      lambda: la.cg("A", jnp.ones(4)),
      raises=(T, r"cg: A must be a matrix, a LinearOperator or a matvec callable, got str")),
    C("jn.linalg.cg", "hyperparameter", "maxiter=-1",
      lambda: la.cg(A4(), jnp.ones(4), maxiter=-1),
      raises=(E, r"cg: maxiter must be a Python int >= 0, got -1")),
    C("jn.linalg.cg", "hyperparameter", "tol=-1",
      lambda: la.cg(A4(), jnp.ones(4), tol=-1.0),
      raises=(E, r"cg: tol must be >= 0, got -1.0")),
    C("jn.linalg.cg", "hyperparameter", "tol=nan",
      lambda: la.cg(A4(), jnp.ones(4), tol=float("nan")),
      raises=(E, r"cg: tol must be >= 0, got nan")),
    C("jn.linalg.cg", "non-finite", "a NaN in b",
      lambda: la.cg(A4(), jnp.array([1.0, jnp.nan, 1.0, 1.0])),
      check=lambda r: int(r.status) == jn.Status.BREAKDOWN and int(r.nit) == 0 and finite(r.x),
      outcome="status BREAKDOWN (success=False) after 0 iterations, residual_norm=nan, x the "
      "(finite) start"),
    C("jn.linalg.cg", "non-finite", "a NaN in A",
      lambda: la.cg(A4().at[0, 0].set(jnp.nan), jnp.ones(4)),
      check=lambda r: int(r.status) == jn.Status.BREAKDOWN and finite(r.x),
      outcome="status BREAKDOWN (p^H A p is NaN; success=False), x the last finite iterate"),

    C("jn.linalg.condition_number", "shape", "a 1-D X",
      lambda: la.condition_number(v3()),
      raises=(E, r"condition_number: X must be 2-D, got shape \(3,\)")),
    C("jn.linalg.condition_number", "empty tree", "X of shape (0, 3)",
      lambda: la.condition_number(jnp.zeros((0, 3))),
      raises=(E, r"condition_number: X has no entries \(shape \(0, 3\)\)")),
    C("jn.linalg.condition_number", "non-finite", "a NaN entry",
      lambda: la.condition_number(A4().at[0, 0].set(jnp.nan)),
      check=lambda r: bool(jnp.isnan(r)),
      outcome="returns nan (not inf, which would read as singular)"),
    C("jn.linalg.condition_number", "dtype", "a float16 matrix (half precision)",
      lambda: la.condition_number(jnp.diag(jnp.array([10.0, 1.0], jnp.float16))),
      check=lambda r: r.dtype == jnp.float32 and float(r) == 10.0,
      outcome="accepted: computed in float32 (there is no half-precision SVD)"),
    C("jn.linalg.condition_number", "dtype", "an integer matrix",
      lambda: la.condition_number(jnp.diag(jnp.array([10, 1]))),
      check=lambda r: float(r) == 10.0, outcome="accepted (promoted to float32): returns 10.0"),

    C("jn.linalg.hessian_operator", "dtype", "integer x",
      lambda: la.hessian_operator(sq, ints()),
      raises=(T, r"hessian_operator: x has dtype int32")),
    C("jn.linalg.hessian_operator", "empty tree", "x={}",
      lambda: la.hessian_operator(lambda x: 0.0, {}),
      raises=(E, r"hessian_operator: x is an empty pytree")),
    C("jn.linalg.jacobian_operator", "dtype", "integer x",
      lambda: la.jacobian_operator(lambda x: x**2, ints()),
      raises=(T, r"jacobian_operator: x has dtype int32")),
    C("jn.linalg.jacobian_operator", "empty tree", "x={}",
      lambda: la.jacobian_operator(lambda x: x, {}),
      raises=(E, r"jacobian_operator: x is an empty pytree")),

    C("jn.linalg.lanczos", "shape", "v0 of shape (4, 1)",
      lambda: la.lanczos(A4(), jnp.ones((4, 1)), 2),
      raises=(E, r"lanczos: v0 must be a vector, got shape \(4, 1\)")),
    C("jn.linalg.lanczos", "hyperparameter", "num_iters=0",
      lambda: la.lanczos(A4(), jnp.ones(4), 0),
      raises=(E, r"lanczos: num_iters must be a Python int in 1..4, got 0")),
    C("jn.linalg.lanczos", "hyperparameter", "num_iters=5 > n=4",
      lambda: la.lanczos(A4(), jnp.ones(4), 5),
      raises=(E, r"lanczos: num_iters must be a Python int in 1..4, got 5")),
    C("jn.linalg.lanczos", "shape", "A 3x3, v0 of 4 entries",
      lambda: la.lanczos(jnp.eye(3), jnp.ones(4), 2),
      raises=(E, r"lanczos: A has shape \(3, 3\), expected \(4, 4\)")),
    C("jn.linalg.lanczos", "hyperparameter", "v0 = 0",
      lambda: la.lanczos(A4(), jnp.zeros(4), 2),
      raises=(E, r"lanczos: v0 must be non-zero")),
    C("jn.linalg.lanczos", "dtype", "integer v0",
      lambda: la.lanczos(A4(), jnp.ones(4, jnp.int32), 4),
      check=lambda r: r.basis.dtype == jnp.float32 and finite(r),
      outcome="accepted (promoted): a float32 basis"),
    C("jn.linalg.lanczos", "non-finite", "a NaN in A",
      lambda: la.lanczos(A4().at[1, 1].set(jnp.nan), jnp.ones(4), 2),
      check=lambda r: bool(jnp.isnan(r.alphas[0])),
      outcome="returns NaN coefficients (no check; a decomposition of a NaN matrix)"),

    C("jn.linalg.matrix_inverse_root", "shape", "a 3x4 matrix",
      lambda: la.matrix_inverse_root(jnp.ones((3, 4)), 2),
      raises=(E, r"matrix_inverse_root: A must be a square matrix \(or a stack of them\), "
                 r"got shape \(3, 4\)")),
    C("jn.linalg.matrix_inverse_root", "dtype", "an integer matrix",
      lambda: la.matrix_inverse_root(jnp.eye(3, dtype=jnp.int32), 2),
      raises=(T, r"matrix_inverse_root: A must be a real floating array, got dtype int32")),
    C("jn.linalg.matrix_inverse_root", "hyperparameter", "p=0",
      lambda: la.matrix_inverse_root(A4(), 0),
      raises=(E, r"matrix_inverse_root: p must be > 0, got 0")),
    C("jn.linalg.matrix_inverse_root", "hyperparameter", "eps=-1e-6",
      lambda: la.matrix_inverse_root(A4(), 2, eps=-1e-6),
      raises=(E, r"matrix_inverse_root: eps must be >= 0, got -1e-06")),
    C("jn.linalg.matrix_inverse_root", "empty tree", "a 0x0 matrix",
      lambda: la.matrix_inverse_root(jnp.zeros((0, 0)), 2),
      check=lambda r: r.shape == (0, 0), outcome="returns a 0x0 float32 matrix"),
    C("jn.linalg.matrix_inverse_root", "dtype", "a bfloat16 matrix",
      lambda: la.matrix_inverse_root(jnp.eye(3, dtype=jnp.bfloat16) * 4, 2),
      check=lambda r: r.dtype == jnp.float32 and bool(jnp.allclose(r, 0.5 * jnp.eye(3))),
      outcome="accepted: rooted in float32, returns 0.5 I in float32"),
    C("jn.linalg.matrix_inverse_root", "non-finite", "a singular matrix, no damping",
      lambda: la.matrix_inverse_root(jnp.zeros((2, 2)), 2),
      check=lambda r: not finite(r),
      outcome="returns inf entries (no inverse root exists), never a finite guess"),

    C("jn.linalg.lstsq", "method", "method='lu'",
      lambda: la.lstsq(A4(), jnp.ones(4), method="lu"),
      raises=(E, r"lstsq: method='lu' unknown; expected one of")),
    C("jn.linalg.lstsq", "shape", "a 1-D X",
      lambda: la.lstsq(jnp.ones(4), jnp.ones(4)),
      raises=(E, r"lstsq: X must be 2-D \(samples x features\), got shape \(4,\)")),
    C("jn.linalg.lstsq", "shape", "y with 3 rows for 4 samples",
      lambda: la.lstsq(A4(), v3()),
      raises=(E, r"lstsq: y must have shape \(4,\) or \(4, k\), got \(3,\)")),
    C("jn.linalg.lstsq", "hyperparameter", "ridge=-1",
      lambda: la.lstsq(A4(), jnp.ones(4), ridge=-1.0),
      raises=(E, r"lstsq: ridge must be >= 0, got -1.0")),
    C("jn.linalg.lstsq", "hyperparameter", "ridge=nan",
      lambda: la.lstsq(A4(), jnp.ones(4), ridge=float("nan")),
      raises=(E, r"lstsq: ridge must be >= 0, got nan")),
    C("jn.linalg.lstsq", "dtype", "ridge='a'",
      lambda: la.lstsq(A4(), jnp.ones(4), ridge="a"),
      raises=(T, r"lstsq: ridge must be a real scalar, got 'a'")),
    C("jn.linalg.lstsq", "hyperparameter", "rcond=-1",
      lambda: la.lstsq(A4(), jnp.ones(4), rcond=-1.0),
      raises=(E, r"lstsq: rcond must be >= 0, got -1.0")),
    C("jn.linalg.lstsq", "dtype", "integer X and y",
      lambda: la.lstsq(2 * jnp.eye(3, dtype=jnp.int32), 2 * ints()),
      check=lambda r: r.dtype == jnp.float32 and bool(jnp.allclose(r, ints())),
      outcome="accepted (promoted to float32): the exact solution"),
    C("jn.linalg.lstsq", "dtype", "float16 X and y (half precision)",
      lambda: la.lstsq(2 * jnp.eye(3, dtype=jnp.float16), 2 * v3().astype(jnp.float16)),
      check=lambda r: r.dtype == jnp.float32 and bool(jnp.allclose(r, 1.0)),
      outcome="accepted: solved and returned in float32 (LAPACK has no half precision)"),
    C("jn.linalg.lstsq", "non-finite", "a NaN in X",
      lambda: la.lstsq(A4().at[0, 0].set(jnp.nan), jnp.ones(4)),
      check=lambda r: bool(jnp.all(jnp.isnan(r))), outcome="returns NaN (no check)"),

    C("jn.linalg.randomized_eigh", "shape", "a 4x3 A_psd",
      lambda: la.randomized_eigh(jnp.ones((4, 3)), 2, key=KEY),
      raises=(E, r"randomized_eigh: A_psd must be square, got shape \(4, 3\)")),
    C("jn.linalg.randomized_eigh", "shape", "a 1-D A_psd",
      lambda: la.randomized_eigh(v3(), 1, key=KEY),
      raises=(E, r"randomized_eigh: A must be a 2-D matrix or a LinearOperator")),
    C("jn.linalg.randomized_eigh", "hyperparameter", "rank=0",
      lambda: la.randomized_eigh(A4(), 0, key=KEY),
      raises=(E, r"randomized_eigh: rank must be a Python int >= 1, got 0")),
    C("jn.linalg.randomized_eigh", "hyperparameter", "rank=5 > n=4",
      lambda: la.randomized_eigh(A4(), 5, key=KEY),
      raises=(E, r"randomized_eigh: rank=5 exceeds min\(m, n\) = 4")),
    C("jn.linalg.randomized_eigh", "hyperparameter", "oversample=-1",
      lambda: la.randomized_eigh(A4(), 2, key=KEY, oversample=-1),
      raises=(E, r"randomized_eigh: oversample must be a Python int >= 0, got -1")),
    C("jn.linalg.randomized_eigh", "hyperparameter", "a negative definite A_psd",
      lambda: la.randomized_eigh(-A4(), 2, key=KEY),
      raises=(E, r"randomized_eigh: A_psd is not positive semi-definite")),

    C("jn.linalg.randomized_range_finder", "hyperparameter", "size=0",
      lambda: la.randomized_range_finder(A4(), 0, key=KEY),
      raises=(E, r"randomized_range_finder: size must be a Python int >= 1, got 0")),
    C("jn.linalg.randomized_range_finder", "hyperparameter", "size=5 > min(m, n)=4",
      lambda: la.randomized_range_finder(A4(), 5, key=KEY),
      raises=(E, r"randomized_range_finder: size=5 exceeds min\(m, n\) = 4")),
    C("jn.linalg.randomized_range_finder", "dtype", "size=2.0",
      lambda: la.randomized_range_finder(A4(), 2.0, key=KEY),
      raises=(T, r"randomized_range_finder: size must be a Python int >= 1, got 2.0")),
    C("jn.linalg.randomized_range_finder", "hyperparameter", "power_iters=-1",
      lambda: la.randomized_range_finder(A4(), 2, key=KEY, power_iters=-1),
      raises=(E, r"randomized_range_finder: power_iters must be a Python int >= 0, got -1")),
    C("jn.linalg.randomized_range_finder", "method", "normalizer='svd'",
      lambda: la.randomized_range_finder(A4(), 2, key=KEY, normalizer="svd"),
      raises=(E, r"randomized_range_finder: normalizer='svd' unknown; expected one of")),
    C("jn.linalg.randomized_range_finder", "shape", "a 1-D A",
      lambda: la.randomized_range_finder(v3(), 1, key=KEY),
      raises=(E, r"randomized_range_finder: A must be a 2-D matrix or a LinearOperator, "
                 r"got shape \(3,\)")),
    C("jn.linalg.randomized_range_finder", "dtype", "A='A' (a string)",
      lambda: la.randomized_range_finder("A", 1, key=KEY),
      raises=(T, r"randomized_range_finder: A must be a matrix or a LinearOperator, got str")),

    C("jn.linalg.randomized_svd", "hyperparameter", "rank=0",
      lambda: la.randomized_svd(A4(), 0, key=KEY),
      raises=(E, r"randomized_svd: rank must be a Python int >= 1, got 0")),
    C("jn.linalg.randomized_svd", "hyperparameter", "rank=-1",
      lambda: la.randomized_svd(A4(), -1, key=KEY),
      raises=(E, r"randomized_svd: rank must be a Python int >= 1, got -1")),
    C("jn.linalg.randomized_svd", "hyperparameter", "rank=4 > min(m, n)=3 (a 4x3 A)",
      lambda: la.randomized_svd(jnp.ones((4, 3)), 4, key=KEY),
      raises=(E, r"randomized_svd: rank=4 exceeds min\(m, n\) = 3 for shape \(4, 3\)")),
    C("jn.linalg.randomized_svd", "dtype", "rank=2.0",
      lambda: la.randomized_svd(A4(), 2.0, key=KEY),
      raises=(T, r"randomized_svd: rank must be a Python int >= 1, got 2.0")),
    C("jn.linalg.randomized_svd", "hyperparameter", "oversample=-1",
      lambda: la.randomized_svd(A4(), 2, key=KEY, oversample=-1),
      raises=(E, r"randomized_svd: oversample must be a Python int >= 0, got -1")),
    C("jn.linalg.randomized_svd", "hyperparameter", "power_iters=-1",
      lambda: la.randomized_svd(A4(), 2, key=KEY, power_iters=-1),
      raises=(E, r"randomized_svd: power_iters must be a Python int >= 0, got -1")),
    C("jn.linalg.randomized_svd", "method", "normalizer='cholesky'",
      lambda: la.randomized_svd(A4(), 2, key=KEY, normalizer="cholesky"),
      raises=(E, r"randomized_svd: normalizer='cholesky' unknown")),
    C("jn.linalg.randomized_svd", "shape", "a 1-D A",
      lambda: la.randomized_svd(v3(), 1, key=KEY),
      raises=(E, r"randomized_svd: A must be a matrix \(2-D\) or a stack of them, "
                 r"got shape \(3,\)")),
    C("jn.linalg.randomized_svd", "dtype", "an integer A",
      lambda: la.randomized_svd(jnp.eye(4, dtype=jnp.int32), 2, key=KEY),
      raises=(T, r"randomized_svd: A must be floating point, got dtype int32")),
    C("jn.linalg.randomized_svd", "dtype", "a float16 A (half precision)",
      lambda: la.randomized_svd(A4().astype(jnp.float16), 2, key=KEY),
      check=lambda r: r[1].dtype == jnp.float32 and bool(jnp.allclose(r[1], jnp.array([4.0, 3.0]))),
      outcome="accepted: computed and returned in float32 (S = [4, 3])"),
    C("jn.linalg.randomized_svd", "non-finite", "a NaN in A",
      lambda: la.randomized_svd(A4().at[0, 0].set(jnp.nan), 2, key=KEY),
      check=lambda r: bool(jnp.all(jnp.isnan(r[1]))), outcome="returns NaN factors (no check)"),

    C("jn.linalg.spectral_density", "hyperparameter", "num_probes=0",
      lambda: la.spectral_density(A4(), key=KEY, num_probes=0, num_iters=2),
      raises=(E, r"spectral_density: num_probes must be a Python int >= 1, got 0")),
    C("jn.linalg.spectral_density", "hyperparameter", "num_iters=0",
      lambda: la.spectral_density(A4(), key=KEY, num_probes=2, num_iters=0),
      raises=(E, r"spectral_density: num_iters must be a Python int in 1..4, got 0")),
    C("jn.linalg.spectral_density", "hyperparameter", "num_iters=5 > n=4",
      lambda: la.spectral_density(A4(), key=KEY, num_probes=2, num_iters=5),
      raises=(E, r"spectral_density: num_iters must be a Python int in 1..4, got 5")),
    C("jn.linalg.spectral_density", "shape", "a matvec callable without n",
      lambda: la.spectral_density(lambda v: v, key=KEY, num_probes=2, num_iters=2),
      raises=(E, r"spectral_density: give n \(the dimension\) when A is a plain callable")),
    C("jn.linalg.spectral_density", "shape", "a 1-D A",
      lambda: la.spectral_density(v3(), key=KEY, num_probes=2, num_iters=2),
      raises=(E, r"spectral_density: A must be a square matrix or LinearOperator, "
                 r"got shape \(3,\)")),
    C("jn.linalg.spectral_density", "hyperparameter", "n=0 with a callable",
      lambda: la.spectral_density(lambda v: v, key=KEY, num_probes=2, num_iters=2, n=0),
      raises=(E, r"spectral_density: n must be a Python int >= 1, got 0")),
    C("jn.linalg.spectral_density", "hyperparameter", "num_points=0",
      lambda: la.spectral_density(A4(), key=KEY, num_probes=2, num_iters=2, num_points=0),
      raises=(E, r"spectral_density: num_points must be a Python int >= 1, got 0")),
    C("jn.linalg.spectral_density", "hyperparameter", "sigma=0",
      lambda: la.spectral_density(A4(), key=KEY, num_probes=2, num_iters=2, sigma=0.0),
      raises=(E, r"spectral_density: sigma \(the kernel width\) must be > 0, got 0.0")),
    C("jn.linalg.spectral_density", "hyperparameter", "sigma=-1",
      lambda: la.spectral_density(A4(), key=KEY, num_probes=2, num_iters=2, sigma=-1.0),
      raises=(E, r"spectral_density: sigma \(the kernel width\) must be > 0, got -1.0")),

    C("jn.linalg.top_eigenvalues", "hyperparameter", "k=0",
      lambda: la.top_eigenvalues(A4(), 0, key=KEY),
      raises=(E, r"top_eigenvalues: k must be a Python int in 1..4, got 0")),
    C("jn.linalg.top_eigenvalues", "hyperparameter", "k=5 > n=4",
      lambda: la.top_eigenvalues(A4(), 5, key=KEY),
      raises=(E, r"top_eigenvalues: k must be a Python int in 1..4, got 5")),
    C("jn.linalg.top_eigenvalues", "hyperparameter", "num_iters=1 < k=2",
      lambda: la.top_eigenvalues(A4(), 2, key=KEY, num_iters=1),
      raises=(E, r"top_eigenvalues: num_iters must be a Python int in 2..4, got 1")),
    C("jn.linalg.top_eigenvalues", "hyperparameter", "num_iters=9 > n=4",
      lambda: la.top_eigenvalues(A4(), 2, key=KEY, num_iters=9),
      raises=(E, r"top_eigenvalues: num_iters must be a Python int in 2..4, got 9")),
    C("jn.linalg.top_eigenvalues", "shape", "a matvec callable without n",
      lambda: la.top_eigenvalues(lambda v: v, 1, key=KEY),
      raises=(E, r"top_eigenvalues: give n \(the dimension\) when A is a plain callable")),
    C("jn.linalg.top_eigenvalues", "shape", "a 1-D A",
      lambda: la.top_eigenvalues(v3(), 1, key=KEY),
      raises=(E, r"top_eigenvalues: A must be a square matrix or LinearOperator, "
                 r"got shape \(3,\)")),
    C("jn.linalg.top_eigenvalues", "shape", "a 3x4 A",
      lambda: la.top_eigenvalues(jnp.ones((3, 4)), 1, key=KEY),
      raises=(E, r"top_eigenvalues: A must be a square matrix or LinearOperator, "
                 r"got shape \(3, 4\)")),
]

LORA = [
    C("jn.lora.init_from_svd", "shape", "a 1-D W",
      lambda: lora.init_from_svd(v3(), 1),
      raises=(E, r"init_from_svd: W must be 2-D, got shape \(3,\)")),
    C("jn.lora.init_from_svd", "hyperparameter", "rank=0",
      lambda: lora.init_from_svd(W43(), 0),
      raises=(E, r"init_from_svd: rank must be a Python int in 1..3, got 0")),
    C("jn.lora.init_from_svd", "hyperparameter", "rank=4 > min(4, 3)",
      lambda: lora.init_from_svd(W43(), 4),
      raises=(E, r"init_from_svd: rank must be a Python int in 1..3, got 4")),
    C("jn.lora.init_from_svd", "dtype", "rank=1.0",
      lambda: lora.init_from_svd(W43(), 1.0),
      raises=(T, r"init_from_svd: rank must be a Python int in 1..3, got 1.0")),
    C("jn.lora.init_from_svd", "dtype", "an integer W",
      lambda: lora.init_from_svd(jnp.ones((4, 3), jnp.int32), 1),
      raises=(T, r"init_from_svd: W must be floating point, got dtype int32")),
    C("jn.lora.init_from_svd", "non-finite", "a NaN in W",
      lambda: lora.init_from_svd(W43().at[0, 0].set(jnp.nan), 1),
      check=lambda r: bool(jnp.all(jnp.isnan(r[1].A))),
      outcome="returns NaN adapters (no check; an SVD of a NaN matrix)"),
    C("jn.lora.split", "hyperparameter", "rank=0",
      lambda: lora.split({"w": W43()}, 0),
      raises=(E, r"init_from_svd: rank must be a Python int in 1..3, got 0")),
    C("jn.lora.split", "shape", "where selects a 1-D leaf",
      lambda: lora.split({"w": W43(), "b": v3()}, 1, where=lambda path, leaf: True),
      raises=(E, r"split: the selected leaf \['b'\] is not 2-D \(shape \(3,\)\)")),
    C("jn.lora.split", "empty tree", "params={}",
      lambda: lora.split({}, 1),
      raises=(E, r"split: `where` selected no parameter")),
    C("jn.lora.merge", "shape", "an adapter for a path not in the tree",
      lambda: lora.merge({"w": W43()}, {"['v']": lora.Adapter(jnp.ones((4, 1)), jnp.ones((1, 3)))}),
      raises=(E, r"merge: adapters for paths not in the tree")),
    C("jn.lora.merge", "shape", "A @ B of shape (4, 1) for a (4, 3) leaf",
      lambda: lora.merge({"w": W43()}, {"['w']": lora.Adapter(jnp.ones((4, 1)), jnp.ones((1, 1)))}),
      raises=(E, r"merge: the adapter at \['w'\] has A \(4, 1\) and B \(1, 1\); A @ B must have "
                 r"the leaf's shape \(4, 3\)")),
    C("jn.lora.count", "dtype", "adapters as a list",
      lambda: lora.count({"w": W43()}, [lora.Adapter(jnp.ones((4, 1)), jnp.ones((1, 3)))]),
      raises=(T, r"count: adapters must be a dict of path -> Adapter, got list")),
    C("jn.lora.count", "empty tree", "adapters={}",
      lambda: lora.count({"w": W43()}, {}),
      check=lambda r: r.trainable == 0 and r.total == 12 and r.reduction == float("inf"),
      outcome="trainable=0, total=12, reduction=inf"),
]

OPTIM = [
    C("jn.optim.convergence_order", "shape", "two errors",
      lambda: optim.convergence_order([1e-1, 1e-2]),
      raises=(E, r"convergence_order: needs at least 3 consecutive finite errors above floor, "
                 r"got 2")),
    C("jn.optim.convergence_order", "non-finite", "five NaN errors",
      lambda: optim.convergence_order([np.nan] * 5),
      raises=(E, r"convergence_order: needs at least 3 .* got 0 usable errors")),
    C("jn.optim.convergence_order", "dtype", "errors='abc'",
      lambda: optim.convergence_order("abc"),
      raises=(T, r"convergence_order: errors must be real numbers")),

    C("jn.optim.gauss_newton", "method", "method='dogleg'",
      lambda: optim.gauss_newton(lambda x: x, v3(), method="dogleg"),
      raises=(E, r"gauss_newton: method must be one of \('lm', 'gn'\), got 'dogleg'")),
    C("jn.optim.gauss_newton", "dtype", "residual_fn=3",
      lambda: optim.gauss_newton(3, v3()),
      raises=(T, r"gauss_newton: residual_fn must be callable, got int")),
    C("jn.optim.gauss_newton", "hyperparameter", "gtol=0",
      lambda: optim.gauss_newton(lambda x: x, v3(), gtol=0.0),
      raises=(E, r"gauss_newton: gtol must be > 0")),
    C("jn.optim.gauss_newton", "hyperparameter", "xtol=-1",
      lambda: optim.gauss_newton(lambda x: x, v3(), xtol=-1.0),
      raises=(E, r"gauss_newton: xtol must be > 0")),
    C("jn.optim.gauss_newton", "hyperparameter", "tau=0",
      lambda: optim.gauss_newton(lambda x: x, v3(), tau=0.0),
      raises=(E, r"gauss_newton: tau must be > 0")),
    C("jn.optim.gauss_newton", "hyperparameter", "maxiter=0",
      lambda: optim.gauss_newton(lambda x: x, v3(), maxiter=0),
      raises=(E, r"gauss_newton: maxiter must be a Python int >= 1, got 0")),
    C("jn.optim.gauss_newton", "empty tree", "x0={}",
      lambda: optim.gauss_newton(lambda x: jnp.ones(2), {}),
      raises=(E, r"gauss_newton: x0 is empty")),
    C("jn.optim.gauss_newton", "dtype", "integer x0",
      lambda: optim.gauss_newton(lambda x: x, ints()),
      raises=(T, r"gauss_newton: x0 must be floating point, got int32")),
    C("jn.optim.gauss_newton", "dtype", "a float16 x0 (half precision)",
      lambda: optim.gauss_newton(lambda x: x - 2.0, jnp.ones(3, jnp.float16)),
      raises=(T, r"gauss_newton: the least-squares steps take an SVD, which has no float16 "
                 r"kernel")),
    C("jn.optim.gauss_newton", "shape", "residual_fn returns no residuals",
      lambda: optim.gauss_newton(lambda x: jnp.zeros(0), v3()),
      raises=(E, r"gauss_newton: residual_fn returns no residuals")),
    C("jn.optim.gauss_newton", "non-finite", "residuals NaN at x0 (log of -1)",
      lambda: optim.gauss_newton(jnp.log, -v3()),
      check=lambda r: int(r.status) == jn.Status.NONFINITE_START and int(r.nit) == 0
      and not bool(r.success),
      outcome="stops at once: status NONFINITE_START, nit=0, success=False"),

    C("jn.optim.reset_lbfgs_memory", "shape", "where of shape (2,) (one flag expected)",
      lambda: optim.reset_lbfgs_memory(jn.scale_by_lbfgs(3).init(v3()), jnp.ones(2, bool)),
      raises=(E, r"reset_lbfgs_memory: where must be a bool scalar, got shape \(2,\)")),
    C("jn.optim.reset_lbfgs_memory", "dtype", "a state with no ScaleByLBFGSState in it",
      lambda: optim.reset_lbfgs_memory(optax.sgd(0.1).init(v3())),
      raises=(T, r"reset_lbfgs_memory: state holds no ScaleByLBFGSState")),

    C("jn.lbfgs", "method", "linesearch='armijo'",
      lambda: jn.lbfgs(linesearch="armijo"),
      raises=(E, r"lbfgs: linesearch must be 'strong-wolfe', a transformation or None, "
                 r"got 'armijo'")),
    C("jn.lbfgs", "hyperparameter", "no line search and no learning_rate",
      lambda: jn.lbfgs(linesearch=None),
      raises=(E, r"lbfgs: without a line search a learning_rate is needed")),
    C("jn.lbfgs", "hyperparameter", "learning_rate=-1",
      lambda: jn.lbfgs(-1.0, linesearch=None),
      raises=(E, r"lbfgs: learning_rate must be > 0, got -1.0")),
    C("jn.lbfgs", "hyperparameter", "learning_rate=nan",
      lambda: jn.lbfgs(float("nan"), linesearch=None),
      raises=(E, r"lbfgs: learning_rate must be > 0, got nan")),
    C("jn.lbfgs", "hyperparameter", "memory_size=0",
      lambda: jn.lbfgs(memory_size=0),
      raises=(E, r"scale_by_lbfgs: memory_size must be a Python int >= 1, got 0")),
    C("jn.lbfgs", "non-finite", "a NaN gradient after one finite step",
      _lbfgs_chain_nan,
      check=_lbfgs_chain_checked,
      outcome="zero update; the L-BFGS memory unchanged (the pair refused: num_skipped=1); "
      "line search status NO_DECREASE, num_failures=1"),

    C("jn.minimize", "method", "method='bfgs'",
      lambda: jn.minimize(sq, v3(), method="bfgs"),
      raises=(E, r"minimize: method must be one of \('lbfgs', 'newton-cg', 'newton'\), "
                 r"got 'bfgs'")),
    C("jn.minimize", "dtype", "fun=3",
      lambda: jn.minimize(3, v3()),
      raises=(T, r"minimize: fun must be callable, got int")),
    C("jn.minimize", "hyperparameter", "tol=0",
      lambda: jn.minimize(sq, v3(), tol=0.0),
      raises=(E, r"minimize: tol must be > 0")),
    C("jn.minimize", "hyperparameter", "options={'ftol': -1}",
      lambda: jn.minimize(sq, v3(), options={"ftol": -1.0}),
      raises=(E, r"minimize: ftol must be a number >= 0, got -1.0")),
    C("jn.minimize", "hyperparameter", "maxiter=0",
      lambda: jn.minimize(sq, v3(), maxiter=0),
      raises=(E, r"minimize: maxiter must be a Python int >= 1, got 0")),
    C("jn.minimize", "hyperparameter", "options={'memory_size': 0}",
      lambda: jn.minimize(sq, v3(), options={"memory_size": 0}),
      raises=(E, r"minimize: memory_size must be a Python int >= 1, got 0")),
    C("jn.minimize", "hyperparameter", "options={'max_evaluations': 0}",
      lambda: jn.minimize(sq, v3(), options={"max_evaluations": 0}),
      raises=(E, r"minimize: max_evaluations must be a Python int >= 1, got 0")),
    C("jn.minimize", "hyperparameter", "options={'damping': 0} (newton-cg)",
      lambda: jn.minimize(sq, v3(), method="newton-cg", options={"damping": 0.0}),
      raises=(E, r"minimize: damping must be > 0")),
    C("jn.minimize", "hyperparameter", "options={'max_cg_iterations': 0}",
      lambda: jn.minimize(sq, v3(), method="newton-cg", options={"max_cg_iterations": 0}),
      raises=(E, r"minimize: max_cg_iterations must be a Python int >= 1, got 0")),
    C("jn.minimize", "dtype", "integer x0",
      lambda: jn.minimize(sq, ints()),
      raises=(T, r"minimize: x0 has dtype int32")),
    C("jn.minimize", "dtype", "a float16 x0 (half precision)",
      lambda: jn.minimize(lambda x: jnp.sum((x - 2.0) ** 2), jnp.ones(3, jnp.float16)),
      check=lambda r: r.x.dtype == jnp.float16 and int(r.status) == jn.Status.CONVERGED,
      outcome="accepted: runs in float16 and converges by the gradient test (the default ftol, "
      "2.2e-9, rounds to 0 in float16, so the relative-decrease test is off)"),
    C("jn.minimize", "dtype", "a float16 x0 with method='newton'",
      lambda: jn.minimize(sq, jnp.ones(3, jnp.float16), method="newton"),
      raises=(T, r"minimize: method='newton' takes a Cholesky factor, which has no float16 "
                 r"kernel")),
    C("jn.minimize", "empty tree", "x0={}",
      lambda: jn.minimize(lambda x: 0.0, {}),
      raises=(E, r"minimize: x0 is an empty pytree")),
    C("jn.minimize", "shape", "fun returns a vector",
      lambda: jn.minimize(lambda x: x**2, v3()),
      raises=(T, r"minimize: fun must return a scalar, got ShapeDtypeStruct\(shape=\(3,\)")),
    C("jn.minimize", "dtype", "fun returns an integer",
      lambda: jn.minimize(lambda x: jnp.sum(x).astype(jnp.int32), v3()),
      raises=(T, r"minimize: fun must return a floating scalar, got int32")),
    C("jn.minimize", "shape", "has_aux=True, fun returns a scalar",
      lambda: jn.minimize(sq, v3(), has_aux=True),
      raises=(T, r"minimize: has_aux=True needs fun to return \(value, aux\)")),
    C("jn.minimize", "non-finite", "fun NaN at x0",
      lambda: jn.minimize(lambda x: jnp.sum(jnp.log(x)), -v3()),
      check=lambda r: int(r.status) == jn.Status.NONFINITE_START and int(r.nit) == 0,
      outcome="stops at once: status NONFINITE_START ('the objective, residuals or their "
      "derivative are not finite at x0'), nit=0"),
    C("jn.minimize", "non-finite", "fun NaN beyond x[0] > 1.5 (the minimiser at 3)",
      lambda: jn.minimize(_nan_beyond, jnp.zeros(2)),
      check=lambda r: int(r.status) == jn.Status.LINESEARCH_FAILED
      and int(r.stats["num_nonfinite"]) > 0
      and finite((r.x, r.fun)),
      outcome="stops at the edge of the NaN region with status LINESEARCH_FAILED; x and fun "
      "finite; stats['num_nonfinite'] counts the NaN trial points"),
    C("jn.minimize", "non-finite", "fun NaN beyond x[0] > 1.5, method='newton-cg'",
      lambda: jn.minimize(_nan_beyond, jnp.zeros(2), method="newton-cg", maxiter=40),
      check=lambda r: int(r.stats["num_rejected"]) > 0 and finite((r.x, r.fun)),
      outcome="the NaN trial steps are refused (stats['num_rejected'] counts them); x and fun "
      "finite"),
    C("jn.minimize", "hyperparameter", "options={'memory_size': 5} with method='newton'",
      lambda: jn.minimize(sq, v3(), method="newton", options={"memory_size": 5}),
      raises=(E, r"minimize: option\(s\) memory_size do not apply to method='newton'; it "
                 r"accepts ftol, damping")),
    C("jn.minimize", "dtype", "options=[('ftol', 0.0)] (not a dict)",
      lambda: jn.minimize(sq, v3(), options=[("ftol", 0.0)]),
      raises=(T, r"minimize: options must be a dict or None, got list")),

    C("jn.optim.newton_root", "dtype", "f=3",
      lambda: optim.newton_root(3, v3()),
      raises=(T, r"newton_root: f must be callable, got int")),
    C("jn.optim.newton_root", "hyperparameter", "maxiter=0",
      lambda: optim.newton_root(lambda x: x, v3(), maxiter=0),
      raises=(E, r"newton_root: maxiter must be a Python int >= 1, got 0")),
    C("jn.optim.newton_root", "hyperparameter", "multiplicity=0",
      lambda: optim.newton_root(lambda x: x, v3(), multiplicity=0),
      raises=(E, r"newton_root: multiplicity must be a Python int >= 1, got 0")),
    C("jn.optim.newton_root", "hyperparameter", "max_backtracks=-1",
      lambda: optim.newton_root(lambda x: x, v3(), max_backtracks=-1),
      raises=(E, r"newton_root: max_backtracks must be a Python int >= 0, got -1")),
    C("jn.optim.newton_root", "hyperparameter", "tol=0",
      lambda: optim.newton_root(lambda x: x, v3(), tol=0.0),
      raises=(E, r"newton_root: tol must be > 0")),
    C("jn.optim.newton_root", "dtype", "tol='a'",
      lambda: optim.newton_root(lambda x: x, v3(), tol="a"),
      raises=(T, r"newton_root: tol must be a real scalar")),
    C("jn.optim.newton_root", "dtype", "integer x0",
      lambda: optim.newton_root(lambda x: x, ints()),
      raises=(T, r"newton_root: x0 must be floating point, got int32")),
    C("jn.optim.newton_root", "dtype", "a bfloat16 x0 (half precision)",
      lambda: optim.newton_root(lambda x: x - 2.0, jnp.ones(3, jnp.bfloat16)),
      raises=(T, r"newton_root: the least-squares steps take an SVD, which has no bfloat16 "
                 r"kernel")),
    C("jn.optim.newton_root", "empty tree", "x0={}",
      lambda: optim.newton_root(lambda x: jnp.ones(2), {}),
      raises=(E, r"newton_root: x0 is an empty pytree")),
    C("jn.optim.newton_root", "shape", "f returns no residuals",
      lambda: optim.newton_root(lambda x: jnp.zeros(0), v3()),
      raises=(E, r"newton_root: f returns no residuals")),
    C("jn.optim.newton_root", "non-finite", "F NaN at x0 (log of -1)",
      lambda: optim.newton_root(jnp.log, -v3()),
      check=lambda r: int(r.status) == jn.Status.NONFINITE_START and int(r.nit) == 0,
      outcome="stops at once: status NONFINITE_START ('the objective, residuals or their "
      "derivative are not finite at x0'), nit=0"),

    C("jn.scale_by_shampoo", "hyperparameter", "b1=1.0",
      lambda: jn.scale_by_shampoo(b1=1.0),
      raises=(E, r"scale_by_shampoo: b1 must lie in \[0, 1\), got 1.0")),
    C("jn.scale_by_shampoo", "hyperparameter", "matrix_eps=0",
      lambda: jn.scale_by_shampoo(matrix_eps=0.0),
      raises=(E, r"scale_by_shampoo: matrix_eps must be > 0, got 0.0")),
    C("jn.scale_by_shampoo", "non-finite", "a finite gradient of 1e19 (its Gram overflows)",
      lambda: jn.scale_by_shampoo().update(
          jnp.full((3, 2), 1e19), jn.scale_by_shampoo().init(jnp.ones((3, 2)))),
      check=lambda r: all_zero(r[0]) and int(r[1].num_skipped) == 1,
      outcome="step skipped: the squared norm overflows float32, the state is kept"),
    C("jn.scale_by_shampoo", "shape", "gradients shaped (2, 3) for a (3, 2) parameter",
      lambda: jn.scale_by_shampoo().update(
          {"w": jnp.ones((2, 3))}, jn.scale_by_shampoo().init({"w": jnp.ones((3, 2))})),
      raises=(E, r"scale_by_shampoo: gradient \['w'\] has shape \(2, 3\); the parameter")),
    C("jn.scale_by_shampoo", "non-finite", "a NaN gradient",
      lambda: jn.scale_by_shampoo().update(
          jnp.ones((3, 2)).at[0, 0].set(jnp.nan), jn.scale_by_shampoo().init(jnp.ones((3, 2)))),
      check=lambda r: all_zero(r[0]) and int(r[1].num_skipped) == 1 and int(r[1].count) == 0,
      outcome="step skipped: zero updates, state kept, num_skipped = 1"),
    C("jn.scale_by_shampoo", "empty tree", "params={}",
      lambda: jn.scale_by_shampoo().update({}, jn.scale_by_shampoo().init({})),
      check=lambda r: r[0] == {}, outcome="returns {} (nothing to precondition)"),
    C("jn.scale_by_shampoo", "dtype", "bfloat16 gradients and parameters",
      lambda: jn.scale_by_shampoo().update(
          jnp.ones((3, 2), jnp.bfloat16),
          jn.scale_by_shampoo().init(jnp.ones((3, 2), jnp.bfloat16))),
      check=lambda r: r[0].dtype == jnp.bfloat16 and r[1].factors[0].left.dtype == jnp.float32,
      outcome="accepted: statistics and roots in float32, bfloat16 updates"),
    C("jn.shampoo", "hyperparameter", "weight_decay=-1",
      lambda: jn.shampoo(0.1, weight_decay=-1.0),
      raises=(E, r"shampoo: weight_decay must be >= 0, got -1.0")),
    C("jn.scale_by_soap", "hyperparameter", "eps=0",
      lambda: jn.scale_by_soap(eps=0.0),
      raises=(E, r"scale_by_soap: eps must be > 0, got 0.0")),
    C("jn.scale_by_soap", "hyperparameter", "b2=1.0",
      lambda: jn.scale_by_soap(b2=1.0),
      raises=(E, r"scale_by_soap: b2 must lie in \[0, 1\), got 1.0")),
    C("jn.scale_by_soap", "shape", "a gradient tree other than init's",
      lambda: jn.scale_by_soap().update(
          {"v": jnp.ones((3, 2))}, jn.scale_by_soap().init({"w": jnp.ones((3, 2))})),
      raises=(E, r"scale_by_soap: the gradients' tree .* is not the tree of the parameters")),
    C("jn.scale_by_soap", "non-finite", "an infinite gradient",
      lambda: jn.scale_by_soap().update(
          jnp.ones((3, 2)).at[0, 0].set(jnp.inf), jn.scale_by_soap().init(jnp.ones((3, 2)))),
      check=lambda r: all_zero(r[0]) and int(r[1].num_skipped) == 1,
      outcome="step skipped: zero updates, state kept, num_skipped = 1"),
    C("jn.scale_by_soap", "empty tree", "params={}",
      lambda: jn.scale_by_soap().update({}, jn.scale_by_soap().init({})),
      check=lambda r: r[0] == {}, outcome="returns {}"),
    C("jn.scale_by_soap", "dtype", "float16 gradients and parameters",
      lambda: jn.scale_by_soap().update(
          jnp.ones((3, 2), jnp.float16), jn.scale_by_soap().init(jnp.ones((3, 2), jnp.float16))),
      check=lambda r: r[0].dtype == jnp.float16 and r[1].factors[0].left.dtype == jnp.float32,
      outcome="accepted: statistics and bases in float32, float16 updates"),
    C("jn.soap", "hyperparameter", "weight_decay=-0.1",
      lambda: jn.soap(0.1, weight_decay=-0.1),
      raises=(E, r"soap: weight_decay must be >= 0, got -0.1")),

    C("jn.scale_by_lbfgs", "hyperparameter", "memory_size=0",
      lambda: jn.scale_by_lbfgs(0),
      raises=(E, r"scale_by_lbfgs: memory_size must be a Python int >= 1, got 0")),
    C("jn.scale_by_lbfgs", "hyperparameter", "memory_size=-1",
      lambda: jn.scale_by_lbfgs(-1),
      raises=(E, r"scale_by_lbfgs: memory_size must be a Python int >= 1, got -1")),
    C("jn.scale_by_lbfgs", "dtype", "memory_size=2.5",
      lambda: jn.scale_by_lbfgs(2.5),
      raises=(T, r"scale_by_lbfgs: memory_size must be a Python int >= 1, got 2.5")),
    C("jn.scale_by_lbfgs", "hyperparameter", "curvature_rtol=0",
      lambda: jn.scale_by_lbfgs(curvature_rtol=0.0),
      raises=(E, r"scale_by_lbfgs: curvature_rtol must be > 0")),
    C("jn.scale_by_lbfgs", "shape", "update without params",
      lambda: jn.scale_by_lbfgs().update(v3(), jn.scale_by_lbfgs().init(v3())),
      raises=(E, r"scale_by_lbfgs: update needs params")),
    C("jn.scale_by_lbfgs", "empty tree", "init({})",
      lambda: jn.scale_by_lbfgs().init({}),
      raises=(E, r"scale_by_lbfgs: params is an empty pytree")),
    C("jn.scale_by_lbfgs", "dtype", "integer params",
      lambda: jn.scale_by_lbfgs().init(ints()),
      raises=(T, r"scale_by_lbfgs: params has no floating-point leaves \(found int32\)")),
    C("jn.scale_by_lbfgs", "non-finite", "a NaN gradient between finite ones",
      _lbfgs_nan_step,
      check=_lbfgs_nan_checked,
      outcome="its pair is refused and counted (num_skipped=1), the memory stays finite and "
      "unchanged; the next pair spans the NaN step"),

    C("jn.scale_by_newton_cg", "hyperparameter", "damping=0",
      lambda: jn.scale_by_newton_cg(0.0),
      raises=(E, r"scale_by_newton_cg: damping must be > 0")),
    C("jn.scale_by_newton_cg", "hyperparameter", "damping=-1",
      lambda: jn.scale_by_newton_cg(-1.0),
      raises=(E, r"scale_by_newton_cg: damping must be > 0")),
    C("jn.scale_by_newton_cg", "hyperparameter", "damping=nan",
      lambda: jn.scale_by_newton_cg(float("nan")),
      raises=(E, r"scale_by_newton_cg: damping must be > 0, got nan")),
    C("jn.scale_by_newton_cg", "method", "curvature='fisher'",
      lambda: jn.scale_by_newton_cg(curvature="fisher"),
      raises=(E, r"scale_by_newton_cg: curvature must be one of \('hessian', 'gauss-newton'\)")),
    C("jn.scale_by_newton_cg", "method", "linear_solver='lu'",
      lambda: jn.scale_by_newton_cg(linear_solver="lu"),
      raises=(E, r"scale_by_newton_cg: linear_solver must be one of \('cg', 'dense'\)")),
    C("jn.scale_by_newton_cg", "hyperparameter", "max_cg_iterations=0",
      lambda: jn.scale_by_newton_cg(max_cg_iterations=0),
      raises=(E, r"scale_by_newton_cg: max_cg_iterations must be a Python int >= 1, got 0")),
    C("jn.scale_by_newton_cg", "hyperparameter", "cg_tol=0",
      lambda: jn.scale_by_newton_cg(cg_tol=0.0),
      raises=(E, r"scale_by_newton_cg: cg_tol must be > 0")),
    C("jn.scale_by_newton_cg", "hyperparameter", "boost=1",
      lambda: jn.scale_by_newton_cg(boost=1.0),
      raises=(E, r"scale_by_newton_cg: boost must be > 1, got 1.0")),
    C("jn.scale_by_newton_cg", "hyperparameter", "drop=1",
      lambda: jn.scale_by_newton_cg(drop=1.0),
      raises=(E, r"scale_by_newton_cg: drop must lie in \(0, 1\), got 1.0")),
    C("jn.scale_by_newton_cg", "hyperparameter", "min_damping=2 > max_damping=1",
      lambda: jn.scale_by_newton_cg(min_damping=2.0, max_damping=1.0),
      raises=(E, r"scale_by_newton_cg: need 0 <= min_damping < max_damping, got 2.0, 1.0")),
    C("jn.scale_by_newton_cg", "hyperparameter", "min_ratio=nan",
      lambda: jn.scale_by_newton_cg(min_ratio=float("nan")),
      raises=(E, r"scale_by_newton_cg: min_ratio must lie in \[0, 1\), got nan")),
    C("jn.scale_by_newton_cg", "hyperparameter", "max_backtracks=-1",
      lambda: jn.scale_by_newton_cg(max_backtracks=-1),
      raises=(E, r"scale_by_newton_cg: max_backtracks must be a Python int >= 0, got -1")),
    C("jn.scale_by_newton_cg", "dtype", "integer params",
      lambda: jn.scale_by_newton_cg().init(ints()),
      raises=(T, r"scale_by_newton_cg: params must be a non-empty pytree of floating arrays")),
    C("jn.scale_by_newton_cg", "dtype", "float16 params with linear_solver='dense'",
      lambda: jn.scale_by_newton_cg(linear_solver="dense").init(jnp.ones(3, jnp.float16)),
      raises=(T, r"scale_by_newton_cg: linear_solver='dense' takes a Cholesky factor, which has "
                 r"no float16 kernel")),
    C("jn.scale_by_newton_cg", "empty tree", "init({})",
      lambda: jn.scale_by_newton_cg().init({}),
      raises=(T, r"scale_by_newton_cg: params must be a non-empty pytree of floating arrays")),
    C("jn.scale_by_newton_cg", "shape", "update without value= and value_fn=",
      lambda: jn.scale_by_newton_cg().update(v3(), jn.scale_by_newton_cg().init(v3()), v3()),
      raises=(E, r"scale_by_newton_cg: update needs value= \(the loss at params\) and value_fn=")),
    C("jn.scale_by_newton_cg", "shape", "curvature='gauss-newton' without model_fn",
      lambda: jn.scale_by_newton_cg(curvature="gauss-newton").update(
          v3(), jn.scale_by_newton_cg().init(v3()), v3(), value=3.0, value_fn=sq),
      raises=(E, r"scale_by_newton_cg: curvature='gauss-newton' needs model_fn=")),
    C("jn.scale_by_newton_cg", "non-finite", "value_fn NaN at the trial point",
      lambda: _newton_cg_step(_nan_below, 4 * v3()),
      check=lambda r: all_zero(r[1]) and int(r[2].num_rejected) == 1
      and float(r[2].damping) > float(r[0].damping) and bool(jnp.isnan(r[2].rho)),
      outcome="step refused: zero update, num_rejected=1, damping raised, rho=nan"),
    C("jn.scale_by_newton_cg", "non-finite", "a NaN gradient",
      lambda: _newton_cg_step(sq, nan3()),
      check=lambda r: all_zero(r[1]) and int(r[2].num_rejected) == 1
      and float(r[2].damping) == float(r[0].damping),
      outcome="step refused: zero update, num_rejected=1, damping kept"),

    C("jn.scale_by_strong_wolfe", "hyperparameter", "max_evaluations=0",
      lambda: jn.scale_by_strong_wolfe(max_evaluations=0),
      raises=(E, r"scale_by_strong_wolfe: max_evaluations must be a Python int >= 1, got 0")),
    C("jn.scale_by_strong_wolfe", "hyperparameter", "slope_rtol=0.6",
      lambda: jn.scale_by_strong_wolfe(slope_rtol=0.6),
      raises=(E, r"scale_by_strong_wolfe: slope_rtol must lie in \(0.0, 0.5\), got 0.6")),
    C("jn.scale_by_strong_wolfe", "hyperparameter", "curv_rtol=1e-5 < slope_rtol",
      lambda: jn.scale_by_strong_wolfe(curv_rtol=1e-5),
      raises=(E, r"scale_by_strong_wolfe: curv_rtol must lie in \(0.0001, 1.0\), got 1e-05")),
    C("jn.scale_by_strong_wolfe", "hyperparameter", "xtol=1",
      lambda: jn.scale_by_strong_wolfe(xtol=1.0),
      raises=(E, r"scale_by_strong_wolfe: xtol must lie in \(0.0, 1.0\), got 1.0")),
    C("jn.scale_by_strong_wolfe", "hyperparameter", "initial_stepsize=0",
      lambda: jn.scale_by_strong_wolfe(initial_stepsize=0.0),
      raises=(E, r"scale_by_strong_wolfe: initial_stepsize must be > 0")),
    C("jn.scale_by_strong_wolfe", "hyperparameter", "max_stepsize=-1",
      lambda: jn.scale_by_strong_wolfe(max_stepsize=-1.0),
      raises=(E, r"scale_by_strong_wolfe: max_stepsize must be > 0")),
    C("jn.scale_by_strong_wolfe", "hyperparameter", "approx_rtol=0",
      lambda: jn.scale_by_strong_wolfe(approx_rtol=0.0),
      raises=(E, r"scale_by_strong_wolfe: approx_rtol must be > 0")),
    C("jn.scale_by_strong_wolfe", "shape", "update without value_fn",
      lambda: jn.scale_by_strong_wolfe().update(
          -v3(), jn.scale_by_strong_wolfe().init(v3()), v3(), value=3.0, grad=v3()),
      raises=(T, r"missing 1 required keyword-only argument: 'value_fn'")),
    C("jn.scale_by_strong_wolfe", "shape", "value= a vector",
      lambda: jn.scale_by_strong_wolfe().update(
          -v3(), jn.scale_by_strong_wolfe().init(v3()), v3(), value=v3(), grad=v3(), value_fn=sq),
      raises=(T, r"scale_by_strong_wolfe: value must be a scalar, got shape \(3,\)")),
    C("jn.scale_by_strong_wolfe", "shape", "update without params",
      lambda: jn.scale_by_strong_wolfe().update(
          -v3(), jn.scale_by_strong_wolfe().init(v3()), value=3.0, grad=v3(), value_fn=sq),
      raises=(E, r"scale_by_strong_wolfe: update needs params")),
    C("jn.scale_by_strong_wolfe", "non-finite", "f NaN beyond max(x) > 1.2 (the minimiser at 3)",
      _wolfe_nan_region,
      check=lambda r: finite(r[0]) and int(r[1].num_nonfinite) > 0
      and int(r[1].status) == jn.Status.BEST_POINT and int(r[1].num_failures) == 1,
      outcome="a finite step to the best point seen (status BEST_POINT, num_failures=1); "
      "num_nonfinite counts the NaN trials"),
    C("jn.scale_by_strong_wolfe", "non-finite", "an ascent direction (g.d > 0)",
      lambda: jn.scale_by_strong_wolfe().update(
          2 * v3(), jn.scale_by_strong_wolfe().init(v3()), v3(), value=sq(v3()), grad=2 * v3(),
          value_fn=sq),
      check=lambda r: bool(r[1].not_descent) and float(jnp.vdot(r[0], 2 * v3())) < 0,
      outcome="searched along -grad instead; not_descent=True in the state"),

    C("jn.optim.strong_wolfe_search", "hyperparameter", "slope_rtol=2",
      lambda: optim.strong_wolfe_search(sq_vg, v3(), -v3(), sq(v3()), 2 * v3(), slope_rtol=2.0),
      raises=(E, r"strong_wolfe_search: slope_rtol must lie in \(0.0, 0.5\), got 2.0")),
    C("jn.optim.strong_wolfe_search", "hyperparameter", "max_evaluations=0",
      lambda: optim.strong_wolfe_search(sq_vg, v3(), -v3(), sq(v3()), 2 * v3(), max_evaluations=0),
      raises=(E, r"strong_wolfe_search: max_evaluations must be a Python int >= 1, got 0")),
    C("jn.optim.strong_wolfe_search", "non-finite", "value=nan at the start",
      lambda: optim.strong_wolfe_search(sq_vg, v3(), -v3(), jnp.float32(jnp.nan), 2 * v3()),
      check=lambda r: float(r.stepsize) == 0.0 and int(r.status) == jn.Status.NO_DECREASE,
      outcome="step 0 with status NO_DECREASE"),

    C("jn.linalg.cg", "non-finite", "an indefinite A (diag(1, -1, 2, 3))",
      lambda: la.cg(jnp.diag(jnp.array([1.0, -1.0, 2.0, 3.0])), jnp.ones(4)),
      check=lambda r: int(r.status) == jn.Status.NEGATIVE_CURVATURE and finite(r.x)
      and not bool(r.success),
      outcome="stops at the direction of non-positive curvature: status NEGATIVE_CURVATURE, "
      "x the finite iterate before it"),
]

KFAC = [
    C("jn.kfac.conv", "shape", "a 3-D x",
      lambda: kfac.conv(jnp.ones((4, 4, 2)), jnp.ones((3, 3, 2, 1)), layer="c"),
      raises=(E, r"kfac.conv\('c'\): expected NHWC x and \(kh, kw, c_in, c_out\) kernel")),
    C("jn.kfac.conv", "shape", "kernel c_in=3 for 2 input channels",
      lambda: kfac.conv(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 3, 1)), layer="c"),
      raises=(E, r"kfac.conv\('c'\): .* got x \(1, 4, 4, 2\), kernel \(3, 3, 3, 1\)")),
    C("jn.kfac.conv", "dtype", "layer=3",
      lambda: kfac.conv(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 1)), layer=3),
      raises=(T, r"kfac: layer must be a str or a non-empty tuple of keys, got 3")),
    C("jn.kfac.conv", "method", "padding='FOO'",
      lambda: kfac.conv(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 1)), layer="c", padding="FOO"),
      raises=(RuntimeError, r"Unrecognized padding type")),
    C("jn.kfac.dense", "shape", "a 1-D kernel",
      lambda: kfac.dense(jnp.ones((2, 3)), v3(), layer="d"),
      raises=(E, r"kfac.dense\('d'\): kernel must be \(d_in, d_out\) with d_in = x.shape\[-1\]")),
    C("jn.kfac.dense", "shape", "kernel (4, 2) for x of 3 features",
      lambda: kfac.dense(jnp.ones((2, 3)), jnp.ones((4, 2)), layer="d"),
      raises=(E, r"kfac.dense\('d'\): .* got x \(2, 3\), kernel \(4, 2\)")),
    C("jn.kfac.dense", "empty tree", "layer=()",
      lambda: kfac.dense(jnp.ones((2, 3)), jnp.ones((3, 2)), layer=()),
      raises=(T, r"kfac: layer must be a str or a non-empty tuple of keys, got \(\)")),





    C("jn.kfac.fisher_gram_fn", "method", "loss='mse'",
      lambda: kfac.fisher_gram_fn(lambda p, x: x, "mse", {}, v3()),
      raises=(E, r"fisher_gram_fn: loss must be one of \('softmax_cross_entropy'")),
    C("jn.kfac.fisher_gram_fn", "dtype", "model=3",
      lambda: kfac.fisher_gram_fn(3, "squared_error", {}, v3()),
      raises=(T, r"fisher_gram_fn: model must be a linen Module or a function, got 3")),
    C("jn.kfac.fisher_gram_fn", "hyperparameter", "examples=0",
      lambda: kfac.fisher_gram_fn(lambda p, x: x, "squared_error", {}, v3(), key=KEY, examples=0),
      raises=(E, r"fisher_gram_fn: examples must be a Python int >= 1, got 0")),
    C("jn.kfac.fisher_gram_fn", "hyperparameter", "examples=2 without a key",
      lambda: kfac.fisher_gram_fn(lambda p, x: x, "squared_error", {}, v3(), examples=2),
      raises=(E, r"fisher_gram_fn: examples needs a key to draw them")),


    C("jn.kfac.optimizer", "hyperparameter", "learning_rate=-1",
      lambda: kfac.optimizer(-1.0),
      raises=(E, r"kfac.optimizer: learning_rate must be > 0, got -1.0")),
    C("jn.kfac.optimizer", "hyperparameter", "learning_rate=nan",
      lambda: kfac.optimizer(float("nan")),
      raises=(E, r"kfac.optimizer: learning_rate must be > 0, got nan")),
    C("jn.kfac.optimizer", "hyperparameter", "momentum=1",
      lambda: kfac.optimizer(0.1, momentum=1.0),
      raises=(E, r"kfac.optimizer: momentum must lie in \[0.0, 1.0\), got 1.0")),
    C("jn.kfac.optimizer", "hyperparameter", "momentum=-0.5",
      lambda: kfac.optimizer(0.1, momentum=-0.5),
      raises=(E, r"kfac.optimizer: momentum must lie in")),
    C("jn.kfac.optimizer", "hyperparameter", "weight_decay=-1",
      lambda: kfac.optimizer(0.1, weight_decay=-1.0),
      raises=(E, r"kfac.optimizer: weight_decay must be >= 0, got -1.0")),
    C("jn.kfac.optimizer", "hyperparameter", "damping=0",
      lambda: kfac.optimizer(0.1, damping=0.0),
      raises=(E, r"scale_by_kfac: damping must be > 0")),
    C("jn.kfac.optimizer", "hyperparameter", "kl_clip=0",
      lambda: kfac.optimizer(0.1, kl_clip=0.0),
      raises=(E, r"scale_by_kfac: kl_clip must be > 0")),

    C("jn.kfac.optimizer", "non-finite", "a NaN gradient",
      lambda: _kfac_optimizer_nan_grads(wrapped=False),
      check=lambda r: finite(r[1]) and finite(r[2][1].trace)
      and tree_equal(r[2][0].factors, r[0][0].factors) and int(r[2][0].num_skipped) == 1,
      outcome="zero K-FAC update, factors unchanged, num_skipped=1; the momentum "
      "(optax.trace) carries on and stays finite; inside jn.loss_scaling the whole step "
      "is skipped (next row)"),
    C("jn.kfac.optimizer", "non-finite", "a NaN gradient, the chain inside "
      "jn.loss_scaling(dynamic=False, initial_scale=1)",
      lambda: _kfac_optimizer_nan_grads(wrapped=True),
      check=lambda r: all_zero(r[1]) and tree_equal(r[2].inner_state, r[0].inner_state)
      and int(r[2].total_skipped) == 1,
      outcome="step skipped: zero update, K-FAC and momentum state bit-for-bit unchanged, "
      "total_skipped=1"),

    C("jn.kfac.adaptive_optimizer", "hyperparameter", "damping=0",
      lambda: kfac.adaptive_optimizer(damping=0.0),
      raises=(E, r"kfac.adaptive_optimizer: damping must be > 0")),
    C("jn.kfac.adaptive_optimizer", "hyperparameter", "weight_decay=-1",
      lambda: kfac.adaptive_optimizer(weight_decay=-1.0),
      raises=(E, r"kfac.adaptive_optimizer: weight_decay must be >= 0, got -1.0")),
    C("jn.kfac.adaptive_optimizer", "hyperparameter", "weight_decay=nan",
      lambda: kfac.adaptive_optimizer(weight_decay=float("nan")),
      raises=(E, r"kfac.adaptive_optimizer: weight_decay must be >= 0, got nan")),
    C("jn.kfac.adaptive_optimizer", "hyperparameter", "adapt_damping_every=0",
      lambda: kfac.adaptive_optimizer(adapt_damping_every=0),
      raises=(E, r"kfac.adaptive_optimizer: adapt_damping_every must be a Python int >= 1, got 0")),
    C("jn.kfac.adaptive_optimizer", "hyperparameter", "decay=1",
      lambda: kfac.adaptive_optimizer(decay=1.0),
      raises=(E, r"kfac.adaptive_optimizer: decay must lie in \[0.0, 1.0\), got 1.0")),
    C("jn.kfac.adaptive_optimizer", "shape", "update without value= and value_fn=",
      lambda: kfac_update(kfac.adaptive_optimizer(), curvature=STATS, fisher_gram=None),
      raises=(E, r"kfac.adaptive_optimizer: adapt_damping_every needs value= \(the loss at "
                 r"params\)")),
    C("jn.kfac.adaptive_optimizer", "non-finite", "a NaN gradient",
      _adaptive_kfac_nan_grads,
      check=lambda r: all_zero(r[1]) and int(r[2].rejected) == 1
      and tree_equal(r[2].previous, r[0].previous),
      outcome="step rejected: zero update, the previous update kept, rejected=1"),

    C("jn.kfac.scale_by_kfac", "hyperparameter", "damping=0",
      lambda: kfac.scale_by_kfac(damping=0.0),
      raises=(E, r"scale_by_kfac: damping must be > 0")),
    C("jn.kfac.scale_by_kfac", "hyperparameter", "decay=1",
      lambda: kfac.scale_by_kfac(decay=1.0),
      raises=(E, r"scale_by_kfac: decay must lie in \[0.0, 1.0\), got 1.0")),
    C("jn.kfac.scale_by_kfac", "hyperparameter", "decay=-0.1",
      lambda: kfac.scale_by_kfac(decay=-0.1),
      raises=(E, r"scale_by_kfac: decay must lie in")),
    C("jn.kfac.scale_by_kfac", "hyperparameter", "inverse_every=0",
      lambda: kfac.scale_by_kfac(inverse_every=0),
      raises=(E, r"scale_by_kfac: inverse_every must be a Python int >= 1, got 0")),
    C("jn.kfac.scale_by_kfac", "hyperparameter", "kl_clip=0",
      lambda: kfac.scale_by_kfac(kl_clip=0.0),
      raises=(E, r"scale_by_kfac: kl_clip must be > 0")),
    C("jn.kfac.scale_by_kfac", "hyperparameter", "learning_rate=-1",
      lambda: kfac.scale_by_kfac(learning_rate=-1.0),
      raises=(E, r"scale_by_kfac: learning_rate must be > 0")),
    C("jn.kfac.scale_by_kfac", "empty tree", "curvature={} (no statistics for the layers)",
      lambda: kfac_update(kfac.scale_by_kfac(), curvature={}),
      raises=(E, r"scale_by_kfac: no curvature statistics for registered layer hidden; "
                 r"statistics were given for \[\]")),
    C("jn.kfac.scale_by_kfac", "shape", "the statistics of another layer",
      lambda: kfac_update(kfac.scale_by_kfac(), curvature=STATS_SWAPPED),
      raises=(E, r"scale_by_kfac: statistics of layer hidden have shapes \(5, 5\), \(2, 2\); "
                 r"its parameters need \(4, 4\), \(4, 4\)")),
    C("jn.kfac.scale_by_kfac", "shape", "update without curvature=",
      lambda: kfac_update(kfac.scale_by_kfac()),
      raises=(T, r"scale_by_kfac: update needs curvature=stats")),
    C("jn.kfac.scale_by_kfac", "non-finite", "a NaN in one layer's statistics",
      _kfac_nan_stats,
      check=_kfac_nan_checked,
      outcome="the statistics skipped: factors bit-for-bit unchanged, num_skipped=1; the "
      "inverses and the next update finite"),



    C("jn.kfac.scale_by_ekfac", "hyperparameter", "damping=0",
      lambda: kfac.scale_by_ekfac(damping=0.0),
      raises=(E, r"scale_by_ekfac: damping must be > 0")),
    C("jn.kfac.scale_by_ekfac", "hyperparameter", "decay=1",
      lambda: kfac.scale_by_ekfac(decay=1.0),
      raises=(E, r"scale_by_ekfac: decay must lie in \[0.0, 1.0\), got 1.0")),
    C("jn.kfac.scale_by_ekfac", "hyperparameter", "eigenbasis_every=0",
      lambda: kfac.scale_by_ekfac(eigenbasis_every=0),
      raises=(E, r"scale_by_ekfac: eigenbasis_every must be a Python int >= 1, got 0")),
    C("jn.kfac.scale_by_ekfac", "shape", "K-FAC's statistics (no per-example rows)",
      lambda: kfac_update(kfac.scale_by_ekfac(), curvature=STATS),
      raises=(T, r"scale_by_ekfac: the statistics of layer hidden are KroneckerFactors; "
                 r"EKFAC's diagonal needs each example's rows")),
    C("jn.kfac.scale_by_ekfac", "shape", "update without curvature=",
      lambda: kfac_update(kfac.scale_by_ekfac()),
      raises=(T, r"scale_by_ekfac: update needs curvature=stats")),
    C("jn.kfac.scale_by_ekfac", "non-finite", "an inf in one example's rows",
      _ekfac_nan_rows,
      check=lambda r: int(r[2].num_skipped) == 1 and tree_equal(r[2].scales, r[0].scales)
      and tree_equal(r[2].bases, r[0].bases) and finite(r[1]),
      outcome="the statistics skipped: diagonal and bases bit-for-bit unchanged, "
      "num_skipped=1, the update finite"),
    C("jn.kfac.ekfac", "hyperparameter", "momentum=1",
      lambda: kfac.ekfac(0.1, momentum=1.0),
      raises=(E, r"kfac.ekfac: momentum must lie in \[0.0, 1.0\), got 1.0")),
    C("jn.kfac.value_grad_and_stats", "dtype", "per_example='yes'",
      lambda: kfac.value_grad_and_stats(_MLP(), "squared_error", per_example="yes"),
      raises=(T, r"value_grad_and_stats: per_example must be True or False, got 'yes'")),

    C("jn.kfac.value_grad_and_stats", "method", "loss='mse'",
      lambda: kfac.value_grad_and_stats(_MLP(), "mse"),
      raises=(E, r"value_grad_and_stats: loss must be one of")),
    C("jn.kfac.value_grad_and_stats", "method", "fisher='exact'",
      lambda: kfac.value_grad_and_stats(_MLP(), "squared_error", fisher="exact"),
      raises=(E, r"value_grad_and_stats: fisher must be 'true' or 'empirical', got 'exact'")),
    C("jn.kfac.value_grad_and_stats", "hyperparameter", "curvature_batch=0",
      lambda: kfac.value_grad_and_stats(_MLP(), "squared_error", curvature_batch=0),
      raises=(E, r"value_grad_and_stats: curvature_batch must be a Python int >= 1 or None")),
    C("jn.kfac.value_grad_and_stats", "dtype", "model=3",
      lambda: kfac.value_grad_and_stats(3, "squared_error"),
      raises=(T, r"value_grad_and_stats: model must be a linen Module or a function")),
    C("jn.kfac.value_grad_and_stats", "dtype", "an NNX module",
      lambda: kfac.value_grad_and_stats(_NNXNet(), "squared_error"),
      raises=(T, r"value_grad_and_stats: this is an NNX module; use "
                 r"jaxnum.kfac.nnx.value_grad_and_stats")),
    C("jn.kfac.value_grad_and_stats", "dtype", "float targets for softmax_cross_entropy",
      lambda: stats_of("softmax_cross_entropy", targets=jnp.zeros(8)),
      raises=(E, r"value_grad_and_stats: softmax_cross_entropy needs integer class labels of "
                 r"shape \(8,\)")),
    C("jn.kfac.value_grad_and_stats", "shape", "targets (8, 3) for outputs (8, 2)",
      lambda: stats_of("squared_error", targets=jnp.zeros((8, 3))),
      raises=(E, r"value_grad_and_stats: squared_error needs targets of the outputs' shape "
                 r"\(8, 2\), got \(8, 3\)")),
    C("jn.kfac.value_grad_and_stats", "shape", "targets (8,) for outputs (8, 2) (would broadcast)",
      lambda: stats_of("squared_error", targets=jnp.zeros(8), curvature_batch=4),
      raises=(E, r"value_grad_and_stats: squared_error needs targets of the outputs' shape")),
    C("jn.kfac.value_grad_and_stats", "shape", "inputs of 5 features for a 3-feature model",
      lambda: stats_of("squared_error", inputs=jnp.ones((8, 5))),
      raises=(Exception, r"For parameter \"kernel\" in \"/hidden\", the given initializer is "
                         r"expected to generate shape \(5, 4\)")),
    C("jn.kfac.value_grad_and_stats", "non-finite", "a NaN in the inputs",
      lambda: stats_of("squared_error", inputs=kfac_problem()[2].at[0, 0].set(jnp.nan)),
      check=lambda r: bool(jnp.isnan(r[0])) and not finite(r[2]),
      outcome="returns the NaN loss and statistics as they are (scale_by_kfac then skips them)"),

    C("jn.kfac.Conv", "shape", "a 3-D (unbatched) input",
      lambda: kfac.Conv(2, (3, 3)).init(KEY, jnp.ones((4, 4, 2))),
      raises=(E, r"kfac.Conv: expected NHWC input, got shape \(4, 4, 2\)")),
]

KFAC_NNX = [
    C("jn.kfac.nnx.value_grad_and_stats", "method", "loss='mse'",
      lambda: kfac.nnx.value_grad_and_stats("mse"),
      raises=(E, r"kfac.nnx.value_grad_and_stats: loss must be one of")),
    C("jn.kfac.nnx.value_grad_and_stats", "hyperparameter", "curvature_batch=0",
      lambda: kfac.nnx.value_grad_and_stats("squared_error", curvature_batch=0),
      raises=(E, r"kfac.nnx.value_grad_and_stats: curvature_batch must be a Python int >= 1")),
    C("jn.kfac.nnx.value_grad_and_stats", "dtype", "model=3 (not an nnx.Module)",
      lambda: kfac.nnx.value_grad_and_stats("squared_error")(
          3, jnp.ones((4, 3)), jnp.zeros((4, 2)), KEY),
      raises=(T, r"kfac.nnx.value_grad_and_stats: model must be an nnx.Module")),
    C("jn.kfac.nnx.value_grad_and_stats", "shape", "targets (4, 3) for outputs (4, 2)",
      lambda: kfac.nnx.value_grad_and_stats("squared_error")(
          _NNXNet(), jnp.ones((4, 3)), jnp.zeros((4, 3)), KEY),
      raises=(E, r"kfac.nnx.value_grad_and_stats: squared_error needs targets of the outputs' "
                 r"shape \(4, 2\)")),
    C("jn.kfac.nnx.value_grad_and_stats", "non-finite", "a NaN in the inputs",
      lambda: kfac.nnx.value_grad_and_stats("squared_error")(
          _NNXNet(), nan3()[None, :].repeat(4, 0), jnp.zeros((4, 2)), KEY),
      check=lambda r: bool(jnp.isnan(r[0])) and not finite(r[2]),
      outcome="returns the NaN loss and statistics as they are (scale_by_kfac then skips them)"),
    C("jn.kfac.nnx.Conv", "method", "kernel_dilation=2",
      lambda: kfac.nnx.Conv(2, 2, (3, 3), kernel_dilation=2, rngs=nnx.Rngs(0))(
          jnp.ones((1, 4, 4, 2))),
      raises=(E, r"kfac.nnx.Conv: dilation, feature groups, masks and explicit padding are not "
                 r"supported")),
    C("jn.kfac.nnx.Conv", "shape", "a 3-D (unbatched) input",
      lambda: kfac.nnx.Conv(2, 2, (3, 3), rngs=nnx.Rngs(0))(jnp.ones((4, 4, 2))),
      raises=(E, r"kfac.nnx.Conv: only 2-D convolutions of NHWC inputs")),
]
SERIALIZATION = [
    C("jn.serialization.from_bytes", "dtype", "data a str",
      lambda: jn.serialization.from_bytes({"w": v3()}, "abc"),
      raises=(T, r"from_bytes: data must be bytes, got str")),
    C("jn.serialization.from_bytes", "shape", "a (3,) leaf into a (4,) template",
      lambda: restore({"w": jnp.ones(4)}, {"w": v3()}),
      raises=(E, r"from_bytes: the checkpoint does not match the template: w: checkpoint "
                 r"float32\[3\], template float32\[4\]")),
    C("jn.serialization.from_bytes", "shape", "an L-BFGS memory of 3 into a template of 5",
      lambda: restore(jn.scale_by_lbfgs(5).init(v3()), jn.scale_by_lbfgs(3).init(v3())),
      raises=(E, r"from_bytes: the checkpoint does not match the template: pairs: checkpoint "
                 r"float32\[8, 3\], template float32\[12, 3\]")),
    C("jn.serialization.from_bytes", "empty tree", "an empty checkpoint",
      lambda: restore({"w": v3()}, {}),
      raises=(E, r"from_bytes: the checkpoint does not match the template: missing w")),
    C("jn.serialization.from_bytes", "non-finite", "a NaN in the checkpoint",
      lambda: restore({"w": v3()}, {"w": nan3()}),
      check=lambda r: bool(jnp.isnan(r["w"][1])),
      outcome="restored as saved (no check: a checkpoint is data)"),
    C("jn.serialization.to_bytes", "dtype", "a function as a leaf",
      lambda: jn.serialization.to_bytes({"f": sq}),
      raises=(T, r"can not serialize 'function' object")),
    C("jn.serialization.to_bytes", "empty tree", "{}",
      lambda: jn.serialization.to_bytes({}),
      check=lambda r: jn.serialization.from_bytes({}, r) == {},
      outcome="serialized; restores into an empty template"),
]
# fmt: on

CASES: list[Case] = PRECISION + AUTODIFF + LINALG + LORA + OPTIM + KFAC + KFAC_NNX
CASES += SERIALIZATION

from tests.bad_paths import PATH_CASES  # noqa: E402  (it builds Cases from this module)

CASES += PATH_CASES

# Public functions with no case, each with the reason.
NOT_AUDITED = {
    "jn.float_formats": "takes no arguments: there is no input to get wrong",
}

# Callable public names that are not plain functions but that users call with
# arguments (constructors, classmethods): the audit covers them too.
EXTRA_CALLABLES = (
    "jn.Policy",
    "jn.Policy.parse",
    "jn.linalg.LinearOperator",
    "jn.linalg.LinearOperator.from_matrix",
    "jn.linalg.LinearOperator.from_function",
)


# ---------------------------------------------------------------------------------------------
# The page.


def resolve(name: str) -> Any:
    """The object a public dotted name (``jn.linalg.cg``) refers to."""
    obj: Any = jn
    for part in name.split(".")[1:]:
        obj = getattr(obj, part)
    return obj


def section(name: str) -> str:
    """The subpackage a public dotted name belongs to (a top-level name: the one defining it)."""
    parts = name.split(".")[1:]
    if parts[0] == "kfac" and len(parts) > 1 and parts[1] == "nnx":
        return "jaxnum.kfac.nnx"
    if f"jaxnum.{parts[0]}" in dict(SECTIONS):
        return f"jaxnum.{parts[0]}"
    for title, module in SECTIONS:
        if parts[0] in module.__all__:
            return title
    raise ValueError(f"{name}: no subpackage exports {parts[0]}")


def _cell(text: str) -> str:
    """Text for a Markdown table cell: no HTML, no emphasis, no column break."""
    for old, new in (("\\", "\\\\"), ("|", "\\|"), ("*", "\\*"), ("<", "&lt;"), ("[", "\\[")):
        text = text.replace(old, new)
    return text


def render() -> str:
    """The Markdown page: an introduction, then one table per subpackage."""
    functions = {c.function for c in CASES}
    lines = [
        "# Bad-input audit",
        "",
        "Every public function of jaxnum, the invalid inputs tried and what each gets: wrong",
        "shapes, wrong dtypes, non-finite values, empty trees, out-of-range hyperparameters",
        "and unknown method strings. `jn` is `import jaxnum as jn`.",
        "",
        "A wrong argument should fail at trace time with a `ValueError` or `TypeError` whose",
        'message names the function and the argument; "what it gets" shows the exception',
        f"and the first line of its actual message (cut at {MESSAGE_CHARS} characters). A value",
        "that is only wrong at run time (a NaN gradient, an inf statistic) must never corrupt",
        "a transformation's state: the step is skipped or flagged, and counted; there \"what",
        'it gets" says what happens, as checked. A few rows record behaviour that is not',
        'checked ("no check"): pure functions that pass a NaN on, and the messages that',
        "come from jax or Flax rather than from jaxnum.",
        "",
        "The rows are `tests/bad_inputs.py`; `tests/test_bad_inputs.py` runs every one, and",
        "checks that this page is what `python -m tests.bad_inputs` writes from those runs.",
        "",
        f"{len(CASES)} cases over {len(functions)} public functions and constructors.",
        "Not in the tables: "
        + "; ".join(f"`{name}` ({why})" for name, why in NOT_AUDITED.items())
        + ".",
    ]
    for title, _ in SECTIONS:
        rows = [c for c in CASES if section(c.function) == title and not c.path]
        if not rows:
            continue
        lines += [
            "",
            f"## {title}",
            "",
            "| function | kind | input tried | what it gets |",
            "| --- | --- | --- | --- |",
        ]
        for c in rows:
            lines.append(f"| `{c.function}` | {c.kind} | {_cell(c.tried)} | {_cell(run(c))} |")
    path_cases = [c for c in CASES if c.path]
    lines += [
        "",
        "## Paths users take",
        "",
        f"{len(path_cases)} cases in {len({c.path for c in path_cases})} classes: the paths a new"
        " user or a hostile tester takes beyond one function's arguments. Each class was a",
        "defect class (a wrong answer without a word, or a crash deep inside jax); its rows",
        "are the cases that now get jaxnum's own answer.",
    ]
    for key, (title, summary) in PATHS.items():
        rows = [c for c in path_cases if c.path == key]
        if not rows:
            continue
        lines += [
            "",
            f"### {title}",
            "",
            summary,
            "",
            "| function | kind | input tried | what it gets |",
            "| --- | --- | --- | --- |",
        ]
        for c in rows:
            lines.append(f"| `{c.function}` | {c.kind} | {_cell(c.tried)} | {_cell(run(c))} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    PAGE.write_text(render())
    print(f"wrote {PAGE} ({len(CASES)} cases)")
