"""Non-finite diagnostics: per-leaf counts, the first bad op, under/overflow fractions."""

import inspect

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import jaxnum as jn


def _line_of(marker: str) -> int:
    source, _ = inspect.getsourcelines(inspect.getmodule(_line_of))
    for number, line in enumerate(source, start=1):
        if marker in line and "_line_of" not in line:
            return number
    raise AssertionError(marker)


def test_report_counts_match_numpy_and_name_the_leaf():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 5)).astype(np.float32)
    a[1, 2], a[3, 0], a[0, 0] = np.nan, np.inf, -np.inf
    tree = {"layer": {"kernel": jnp.asarray(a), "bias": jnp.ones(5)}, "ids": jnp.arange(3)}
    report = jax.jit(jn.nonfinite_report)(tree)
    rows = dict((p, (n, pi, ni)) for p, n, pi, ni in report.bad_leaves())
    assert rows == {"['layer']['kernel']": (int(np.isnan(a).sum()), 1, 1)}
    assert int(report.total) == 3 and not bool(report.all_finite)
    assert "['layer']['kernel']" in str(report)
    assert "['ids']" not in report.paths
    clean = jn.nonfinite_report({"w": jnp.ones(3, jnp.bfloat16)})
    assert bool(clean.all_finite) and "finite" in str(clean)


def test_report_of_complex_leaves_counts_each_entry_once_as_numpy_does():
    rng = np.random.default_rng(1)
    parts = rng.normal(size=(2, 40))
    specials = [np.nan, np.inf, -np.inf]
    for k in range(60):  # nan, +inf, -inf in the real part, the imaginary part or both
        parts[rng.integers(2), rng.integers(40)] = specials[k % 3]
    z = np.empty(40, np.complex64)  # parts set directly: 1j * inf would be nan + inf j
    z.real, z.imag = parts
    re, im = z.real, z.imag
    nan = np.isnan(re) | np.isnan(im)
    pos = ~nan & (np.isposinf(re) | np.isposinf(im))
    neg = ~nan & ~pos & (np.isneginf(re) | np.isneginf(im))
    report = jax.jit(jn.nonfinite_report)({"z": jnp.asarray(z), "x": jnp.ones(2)})
    assert report.bad_leaves() == [("['z']", int(nan.sum()), int(pos.sum()), int(neg.sum()))]
    assert int(report.total) == int((~np.isfinite(z)).sum())
    assert nan.sum() and pos.sum() and neg.sum()


def test_first_nonfinite_names_the_op_and_the_source_line():
    def f(x):
        y = jnp.sin(x)
        z = jnp.log(y)  # MARK-log
        return jnp.exp(z) * 2

    op = jn.first_nonfinite(f, jnp.array([1.0, 4.0]))  # sin(4) < 0
    assert op.primitive == "log"
    assert op.source.startswith(f"{__file__}:{_line_of('MARK-log')}:")
    assert op.source.endswith("<locals>.f)")
    assert op.inputs_finite and op.nan_count == 1 and op.inf_count == 0
    assert op.input_shapes == ((2,),) and op.output_dtypes == ("float32",)
    assert jn.first_nonfinite(f, jnp.array([1.0, 2.0])) is None


def test_first_nonfinite_descends_into_jit_scan_cond_while_custom_rules_and_checkpoint():
    @jax.custom_vjp
    def safe_looking(x):
        return x / (x - 3.0)  # MARK-custom-vjp

    safe_looking.defvjp(lambda x: (safe_looking(x), x), lambda x, g: (g,))

    @jax.custom_jvp
    def root(x):
        return jnp.sqrt(x)  # MARK-custom-jvp

    root.defjvp(lambda p, t: (root(p[0]), t[0]))

    @jax.jit
    def inner(c, x):
        return c + jnp.log(x)  # MARK-jit-scan

    def scanned(xs):
        return jax.lax.scan(lambda c, x: (inner(c, x), c), 0.0, xs)[0]

    op = jn.first_nonfinite(scanned, jnp.array([1.0, 2.0, 0.0, 5.0]))
    assert op.primitive == "log" and op.context == ("scan[2]", "jit(inner)")
    assert f":{_line_of('MARK-jit-scan')}" in op.source

    def branchy(x):
        return jax.lax.cond(x[0] > 0, lambda v: root(v - 10.0), lambda v: v, x)

    op = jn.first_nonfinite(branchy, jnp.array([1.0, 20.0]))
    assert op.primitive == "sqrt" and op.context == ("cond[1]", "custom_jvp_call")
    assert f":{_line_of('MARK-custom-jvp')}" in op.source

    op = jn.first_nonfinite(lambda x: safe_looking(x), jnp.array([3.0]))
    assert op.primitive == "div" and op.context == ("custom_vjp_call",)
    assert f":{_line_of('MARK-custom-vjp')}" in op.source

    op = jn.first_nonfinite(jax.checkpoint(lambda x: jnp.log(x - 1.0)), jnp.array([0.5]))
    assert op.primitive == "log" and op.context[0] in ("remat2", "checkpoint", "remat")


def test_first_nonfinite_in_a_while_loop_reports_the_iteration():
    def body(v):
        return jnp.log(v - 1.0)  # MARK-while

    def f(x):
        return jax.lax.while_loop(lambda v: jnp.all(v > -100.0), body, x)

    op = jn.first_nonfinite(f, jnp.array([10.0]))
    # 10 -> log 9 = 2.197 -> log 1.197 = 0.18 -> log(-0.82) = nan in iteration 2
    assert op.primitive == "log" and op.context == ("while[2]",)
    assert f":{_line_of('MARK-while')}" in op.source


def test_first_nonfinite_finds_the_backward_op_of_a_gradient():
    op = jn.first_nonfinite(jax.grad(lambda x: jnp.sum(jnp.sqrt(x))), jnp.array([1.0, 0.0]))
    assert op is not None and op.inf_count == 1 and op.inputs_finite


def test_non_finite_arguments_are_flagged_as_passed_on():
    op = jn.first_nonfinite(lambda x: x * 2.0, jnp.array([jnp.nan]))
    assert op.primitive == "mul" and not op.inputs_finite


def _numpy_fractions(x, dtype):
    x = np.asarray(x, np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        cast = x.astype(dtype).astype(np.float64)
    finite = np.isfinite(x)
    nonzero = finite & (x != 0)
    under = (nonzero & (cast == 0)).sum() / max(nonzero.sum(), 1)
    over = (finite & ~np.isfinite(cast)).sum() / max(finite.sum(), 1)
    return under, over


@pytest.mark.parametrize(
    "dtype, np_dtype",
    [
        (jnp.float16, np.float16),
        (jnp.bfloat16, ml_dtypes.bfloat16),
        (jnp.float8_e4m3fn, ml_dtypes.float8_e4m3fn),
        (jnp.float8_e5m2, ml_dtypes.float8_e5m2),
    ],
)
def test_under_and_overflow_fractions_match_numpy_casts(dtype, np_dtype):
    rng = np.random.default_rng(3)
    x = (rng.normal(size=2000) * 10.0 ** rng.uniform(-37, 6, size=2000)).astype(np.float32)
    # XLA on CPU (and GPU) treats float32 subnormal inputs as zero; keep them out.
    x[np.abs(x) < np.finfo(np.float32).tiny] = 0.0
    x[:5] = [0.0, np.inf, np.nan, 65519.0, 65520.0]
    under, over = _numpy_fractions(x, np_dtype)
    assert (under > 0) == (dtype != jnp.bfloat16)  # bfloat16 has float32's range
    np.testing.assert_allclose(
        jn.underflow_fraction({"g": jnp.asarray(x)}, dtype), under, rtol=1e-6
    )
    np.testing.assert_allclose(jn.overflow_fraction([jnp.asarray(x)], dtype), over, rtol=1e-6)


def test_fraction_edge_cases():
    assert float(jn.overflow_fraction(jnp.array([65519.0, 65520.0]), jnp.float16)) == 0.5
    assert float(jn.underflow_fraction(jnp.zeros(3), jnp.float16)) == 0.0
    with pytest.raises(TypeError, match="floating dtype"):
        jn.underflow_fraction(jnp.ones(3), jnp.int8)
    with pytest.raises(TypeError, match="no floating-point leaves"):
        jn.overflow_fraction({"n": jnp.arange(3)}, jnp.float16)
