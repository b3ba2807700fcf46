"""Memory: no transformation keeps more than it documents.

State sizes are counted exactly, leaf by leaf, against the layout each state's
docstring gives, for models of known size; the compiled L-BFGS update's
memory (``compiled.memory_analysis()``) is checked to grow linearly in the
number of parameters n, not as n^2.

L-BFGS, as documented in ``ScaleByLBFGSState``: the ring of ``2 (m + 1)`` rows
of n (m pairs plus a spare slot for the incoming pair), the previous
parameters and gradient (2 n), ``S^T Y`` and ``Y^T Y`` ((m + 1)^2 each), gamma,
and scalar counters: ``(2 m + 4) n + 2 (m + 1)^2`` floats plus O(1) scalars. That is
O(m n) as ``scale_by_lbfgs`` documents, but more than the issue's shorthand
"2 m n floats plus O(m)" (see ``test_lbfgs_state_fits_the_issue_budget``).

K-FAC, as documented in ``ScaleByKFACState`` ("the factors' moving averages
and their damped inverses, per layer"): two copies of ``A`` (d_in + 1 with a
bias, squared; d_in = kh kw c_in for a convolution) and ``G`` (d_out squared)
per layer, plus scalar counters. Scalars are checked to be O(1) (at most
``MAX_SCALARS`` leaves), the arrays exactly.
"""

import math

import jax
import jax.numpy as jnp
import pytest

import jaxnum as jn
from jaxnum import kfac
from jaxnum.optim import ScaleByLBFGSState, StrongWolfeState

MAX_SCALARS = 12  # counters, flags, step sizes: O(1), however many fields a state grows


def _array_entries(tree):
    """Entries of the leaves with at least one axis (the storage that grows with
    m and n); asserts the other leaves are O(1) scalars. Arrays or shapes."""
    shapes = [tuple(x.shape) for x in jax.tree.leaves(tree)]
    assert sum(1 for s in shapes if s == ()) <= MAX_SCALARS, shapes
    return sum(math.prod(s) for s in shapes if s != ())


def _init_shapes(tx, params):
    """The state ``tx.init(params)`` would make, as shapes (nothing is computed)."""
    return jax.eval_shape(tx.init, params)


def _nbytes(tree):
    return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _params(n):
    """A pytree of n float32 parameters: a matrix and a vector."""
    rows = (n - 1) // 8
    return {"w": jnp.zeros((rows, 8)), "b": jnp.zeros(n - 8 * rows)}


def _lbfgs_entries(n, m):
    """The ring 2 (m + 1) n, prev_params and prev_grad 2 n, sy and yy 2 (m + 1)^2."""
    return (2 * m + 4) * n + 2 * (m + 1) ** 2


def test_docstrings_document_the_layouts_counted_here():
    assert "2 (memory_size + 1), leaf size" in " ".join(ScaleByLBFGSState.__doc__.split())
    assert "O(m n)" in jn.scale_by_lbfgs.__doc__
    doc = " ".join(kfac.ScaleByKFACState.__doc__.split())
    assert "moving averages" in doc and "inverses" in doc


@pytest.mark.parametrize("n", [1, 100, 1001])
@pytest.mark.parametrize("m", [1, 3, 10])
def test_lbfgs_state_holds_exactly_its_documented_floats(n, m):
    state = _init_shapes(jn.scale_by_lbfgs(m), _params(n))
    assert _array_entries(state) == _lbfgs_entries(n, m)
    # Per leaf: the ring is 2 (m + 1) rows of the leaf's size, nothing else scales with n.
    for ring, leaf in zip(jax.tree.leaves(state.pairs), jax.tree.leaves(_params(n)), strict=True):
        assert ring.shape == (2 * (m + 1), leaf.size)
    assert state.sy.shape == state.yy.shape == (m + 1, m + 1)


def test_lbfgs_state_stays_that_size_while_running():
    # The ring is written in place: after more steps than slots, same shapes.
    n, m = 200, 3
    params = _params(n)
    tx = jn.scale_by_lbfgs(m)

    def f(p):
        return sum(jnp.sum((x - 1.0) ** 2 + 0.1 * x**4) for x in jax.tree.leaves(p))

    @jax.jit
    def step(p, s):
        d, s = tx.update(jax.grad(f)(p), s, p)
        return jax.tree.map(lambda x, y: x - 0.1 * y, p, d), s

    state = tx.init(params)
    for _ in range(2 * (m + 1)):
        params, state = step(params, state)
    assert int(state.num_pairs) == m
    assert _array_entries(state) == _lbfgs_entries(n, m)


def test_lbfgs_chain_adds_only_the_line_search_gradient():
    # jn.lbfgs = scale_by_lbfgs, a scale (no state), the strong-Wolfe search,
    # whose state keeps the gradient at the accepted point (n) and scalars.
    n, m = 1001, 5
    state = _init_shapes(jn.lbfgs(memory_size=m), _params(n))
    wolfe = [s for s in state if isinstance(s, StrongWolfeState)]
    assert len(wolfe) == 1 and wolfe[0].aux is None
    assert _array_entries(state) == _lbfgs_entries(n, m) + n


def _kfac_params():
    # A conv (3x3x2 -> 4, bias), a dense (64 -> 5, bias) and a dense (5 -> 3, no bias).
    return {
        "conv": {"kernel": jnp.zeros((3, 3, 2, 4)), "bias": jnp.zeros(4)},
        "hidden": {"kernel": jnp.zeros((64, 5)), "bias": jnp.zeros(5)},
        "out": {"kernel": jnp.zeros((5, 3))},
    }


# (d_in including the bias row, d_out) per layer of _kfac_params.
KFAC_LAYERS = {("conv",): (3 * 3 * 2 + 1, 4), ("hidden",): (64 + 1, 5), ("out",): (5, 3)}
KFAC_FACTOR_FLOATS = 2 * sum(d_in**2 + d_out**2 for d_in, d_out in KFAC_LAYERS.values())


def test_kfac_state_holds_two_copies_of_each_layers_factors():
    state = _init_shapes(kfac.scale_by_kfac(), _kfac_params())
    assert _array_entries(state) == KFAC_FACTOR_FLOATS  # + the step count (scalars)
    for layer, (d_in, d_out) in KFAC_LAYERS.items():
        for copy in (state.factors[layer], state.inverses[layer]):
            assert copy.A.shape == (d_in, d_in) and copy.G.shape == (d_out, d_out)


def test_kfac_optimizers_add_one_vector_of_n():
    params = _kfac_params()
    n = sum(x.size for x in jax.tree.leaves(params))
    # optimizer(lr): K-FAC, momentum (one n-vector: optax.trace), the step.
    assert _array_entries(_init_shapes(kfac.optimizer(0.1), params)) == KFAC_FACTOR_FLOATS + n
    # adaptive_optimizer(): K-FAC, the previous update (n), and scalars (alpha, mu,
    # lambda, rho, the rejected-step count).
    assert _array_entries(_init_shapes(kfac.adaptive_optimizer(), params)) == KFAC_FACTOR_FLOATS + n


def _memory(fn, *args):
    analysis = jax.jit(fn).lower(*args).compile().memory_analysis()
    if analysis is None:  # backends without a memory analysis: state sizes only (above)
        pytest.skip("compiled.memory_analysis() is None on this backend")
    return analysis


def _quartic(x):
    return jnp.sum((x - 1.0) ** 2) + 0.1 * jnp.sum(x**4)


@pytest.mark.slow
def test_lbfgs_update_memory_grows_linearly_in_n():
    # XLA:CPU gives a memory analysis. An n x n temporary (a dense inverse
    # Hessian) would make temp_size grow 16x from n to 4n and reach 256 MB at
    # n = 8000; the O(m n) update grows <= 4x (measured 24 kB -> 33 kB: the
    # ring is updated in place) and stays below the size of its own state.
    m, tx, temps = 5, jn.scale_by_lbfgs(5), []
    for n in (2000, 8000):
        x = jax.ShapeDtypeStruct((n,), jnp.float32)  # lowered from shapes alone
        state = _init_shapes(tx, x)
        analysis = _memory(tx.update, x, state, x)
        assert analysis.argument_size_in_bytes <= _nbytes((x, state, x))
        assert analysis.temp_size_in_bytes <= _nbytes(state)
        temps.append(analysis.temp_size_in_bytes)
    assert _array_entries(state) == _lbfgs_entries(8000, m)
    assert temps[1] <= 6 * temps[0], temps


@pytest.mark.slow
def test_lbfgs_with_line_search_temporaries_fit_in_its_state():
    # The whole jn.lbfgs step (gradient, two-loop recursion, strong-Wolfe
    # search evaluating value_fn at trial points): its temporaries are O(n)
    # vectors (trial points, gradients, the direction: measured 164 kB, 5.1x
    # the parameters' bytes at n = 8000), a third of the O(m n) state; an
    # n x n temporary would be 256 MB here.
    n, m = 8000, 5
    tx = jn.lbfgs(memory_size=m)
    x = jax.ShapeDtypeStruct((n,), jnp.float32)
    state = _init_shapes(tx, x)

    def step(x, state):
        value, grad = jax.value_and_grad(_quartic)(x)
        return tx.update(grad, state, x, value=value, grad=grad, value_fn=_quartic)

    analysis = _memory(step, x, state)
    # The arguments: at most the state and the parameters (jit drops the
    # inputs a step does not read, such as the line search's old gradient).
    assert analysis.argument_size_in_bytes <= _nbytes((x, state))
    assert analysis.temp_size_in_bytes <= _nbytes(state)
    assert analysis.temp_size_in_bytes <= 8 * _nbytes(x)
