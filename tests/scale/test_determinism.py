"""Determinism: the same key and inputs give the same outputs, run after run, jit or not.

What is asserted bit-for-bit is what XLA:CPU gives deterministically: one
compiled program run twice on the same inputs gives the same bits (its
reductions and dot kernels are partitioned the same way on every run, with no
atomics), and so does the same function run twice without jit (the same
cached per-operation programs). What it does not
guarantee: a function under ``jax.jit`` and the same function called plainly
(op by op, or through jaxnum's own inner jits) may round differently, because
jit fuses elementwise chains (keeping float16 intermediates in float32),
reorders reductions and picks other kernels. Those comparisons are to a
stated tolerance, each with the reason for its size. Random draws themselves
(threefry, integer arithmetic) are the same bits with or without jit. Every
key-taking function is also checked to depend on its key, so "same key, same
output" is not vacuous.

"No jit" is the plain call a user makes (op by op, apart from jaxnum's own
inner jits: ``minimize`` and the matrix path of ``randomized_svd`` are one
compiled program either way). ``jax.disable_jit()`` everywhere is not used:
it costs 2-4 s of per-operation compilation per case.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnum as jn
from jaxnum import kfac
from jaxnum.autodiff import hessian_trace
from jaxnum.linalg import randomized_eigh, randomized_svd, spectral_density
from tests.scale._models import HalfMLP


def _assert_bits_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    leaves_a = jax.tree_util.tree_leaves_with_path(a)
    for (path, x), y in zip(leaves_a, jax.tree.leaves(b), strict=True):
        assert jax.typeof(x) == jax.typeof(y), jax.tree_util.keystr(path)
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def _assert_close(a, b, rtol):
    """Each float leaf within ``rtol`` times the leaf's largest magnitude (rounding
    noise scales with the size of the numbers, not of each entry); others equal."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    leaves_a = jax.tree_util.tree_leaves_with_path(a)
    for (path, x), y in zip(leaves_a, jax.tree.leaves(b), strict=True):
        where = jax.tree_util.keystr(path)
        if isinstance(x, int) or isinstance(y, int):  # a Python int comes out of jit as int32
            assert int(x) == int(y), where
            continue
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape, where
        if jnp.issubdtype(x.dtype, jnp.floating):
            x64, y64 = x.astype(np.float64), y.astype(np.float64)
            scale = max(np.max(np.abs(y64), initial=0.0), np.finfo(np.float32).tiny)
            np.testing.assert_allclose(x64, y64, rtol=0, atol=rtol * scale, err_msg=where)
        else:
            np.testing.assert_array_equal(x, y, err_msg=where)


def _differs(a, b) -> bool:
    return any(
        not np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def _check(fn, args, *, rtol, key_dependent=True):
    """Repeated runs (jitted, and plain) are bit-equal; jit vs plain within rtol."""
    key, other = jax.random.key(0), jax.random.key(1)
    jitted = jax.jit(fn)
    first = jitted(*args, key)
    _assert_bits_equal(first, jitted(*args, key))
    plain = fn(*args, key)
    _assert_bits_equal(plain, fn(*args, key))
    _assert_close(plain, first, rtol)
    if key_dependent:
        assert _differs(first, jitted(*args, other))
    return first


def _matrices():
    rng = np.random.default_rng(0)
    U, _ = np.linalg.qr(rng.normal(size=(40, 40)))
    V, _ = np.linalg.qr(rng.normal(size=(30, 30)))
    decay = np.geomspace(1.0, 1e-2, 30)
    A = (U[:, :30] * decay) @ V.T
    P = (U * np.geomspace(1.0, 1e-2, 40)) @ U.T
    return jnp.asarray(A, jnp.float32), jnp.asarray((P + P.T) / 2, jnp.float32)


# float32 decompositions (QR, LU, Cholesky, SVD of small blocks) amplify a
# rounding difference of eps = 1.2e-7 by modest condition factors (spectra
# here span 1 to 1e-2). Measured jit vs plain, as a fraction of each leaf's
# largest entry: randomized_svd 0 (its matrix path is one jitted program
# either way), randomized_eigh 3e-6 (op by op when plain), spectral_density
# 7e-8. 1e-4 leaves room for other CPUs' kernels while still failing on any
# real change (another key moves entries by O(1)).
LINALG_RTOL = 1e-4


@pytest.mark.slow
def test_randomized_svd():
    A, _ = _matrices()
    _check(lambda A, key: randomized_svd(A, 5, key=key), (A,), rtol=LINALG_RTOL)


@pytest.mark.slow
def test_randomized_eigh():
    _, P = _matrices()
    _check(lambda P, key: randomized_eigh(P, 5, key=key), (P,), rtol=LINALG_RTOL)


def test_hessian_trace():
    def f(x):
        return jnp.sum(jnp.sin(x) * x**2) + jnp.sum(x[:-1] * x[1:] ** 3)

    x = jnp.linspace(-1.0, 1.0, 20)
    # Hutch++ over 9 probes: sums of n = 20 products, rounding ~ eps n = 2e-6
    # at most (measured 1.5e-7, in std_error); 1e-5 of each value.
    _check(lambda x, key: hessian_trace(f, x, key=key, num_samples=9), (x,), rtol=1e-5)


@pytest.mark.slow
def test_spectral_density():
    _, P = _matrices()
    # Lanczos with full reorthogonalisation: Ritz values move by ~eps ||P||, the
    # smoothed density (Gaussian of width 1% of the range) by that over the
    # width, ~1e-5 of its peak at most (measured 7e-8): LINALG_RTOL.
    _check(
        lambda P, key: spectral_density(P, key=key, num_probes=3, num_iters=10, num_points=64),
        (P,),
        rtol=LINALG_RTOL,
    )


def _convex(z, A):
    return 0.5 * z @ A @ z - jnp.sum(z) + 0.1 * jnp.sum(z**4)


@pytest.mark.slow
def test_minimize_lbfgs():
    A = jnp.diag(jnp.geomspace(1.0, 100.0, 6))
    x0 = jnp.zeros(6)
    plain = jn.minimize(_convex, x0, A)  # one jitted while_loop inside
    _assert_bits_equal(plain, jn.minimize(_convex, x0, A))
    jitted = jax.jit(lambda x0, A: jn.minimize(_convex, x0, A))
    under_jit = jitted(x0, A)
    _assert_bits_equal(under_jit, jitted(x0, A))
    # Inside a user's jit the same solver program is inlined and may be
    # optimised across the call (measured: the same bits). Not guaranteed, and
    # a rounding difference can flip a line-search or stopping decision: op by
    # op (jax.disable_jit) x differs by 2e-9 here, and on an earlier version of
    # the line search took 15 iterations where the jitted solve took 16. So
    # the solutions are compared to the solver's tolerance, not to rounding:
    # the Hessian is >= A >= I, so |x - x*| <= ||grad(x)|| for each, and their
    # distance is at most the sum.
    assert bool(plain.success) and bool(under_jit.success)
    bound = float(plain.grad_norm) + float(under_jit.grad_norm)
    assert float(jnp.linalg.norm(plain.x - under_jit.x)) <= bound


@pytest.mark.slow
def test_loss_scaling_training_step():
    x = jax.random.normal(jax.random.key(0), (32, 4))
    y = jnp.sin(jnp.sum(x, axis=1, keepdims=True))
    model = HalfMLP()
    params = model.init(jax.random.key(1), x)
    inner = optax.chain(jn.clip_by_global_norm(1.0), optax.sgd(0.1, momentum=0.9))
    tx = jn.loss_scaling(inner, initial_scale=2.0**10)

    def step(params, state, x, y, _key):
        def loss_fn(p):
            return jnp.mean((model.apply(p, x) - y) ** 2)

        loss, grads = jn.scaled_value_and_grad(loss_fn)(state, params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    # float16 compute: jit keeps fused elementwise chains in float32 where the
    # plain call rounds to float16 after every operation, and sums over the
    # batch of 32 in another order: gradients differ by up to ~sqrt(32) eps16
    # = 5e-3 of their size (measured 2.2e-3, in the momentum). The update is linear in them
    # (clip factor, momentum), so every leaf to 1e-2 of its largest entry.
    _, new_state, _ = _check(step, (params, tx.init(params), x, y), rtol=1e-2, key_dependent=False)
    assert bool(new_state.last_finite)


class _Softmax(nn.Module):
    @nn.compact
    def __call__(self, x):
        return kfac.Dense(3, name="out")(x)


@pytest.mark.slow
def test_kfac_step_with_true_fisher_sampling():
    x = jax.random.normal(jax.random.key(0), (32, 4))
    y = jnp.arange(32) % 3
    model = _Softmax()
    params = model.init(jax.random.key(1), x)["params"]
    stats_fn = kfac.value_grad_and_stats(model, "softmax_cross_entropy", fisher="true")
    tx = kfac.optimizer(0.1, damping=1e-2, inverse_every=1)

    def step(params, state, x, y, key):
        # The targets of the Fisher are sampled from the model with key, so the
        # factors and the update depend on it (checked by _check).
        value, grads, stats = stats_fn(params, x, y, key)
        updates, state = tx.update(grads, state, params, curvature=stats)
        return optax.apply_updates(params, updates), state, value, stats

    # The sampled targets are the same bits with or without jit; what differs
    # is float32 rounding in the factors (eps = 1.2e-7) amplified by the damped
    # inverses (condition <= ~(1 + damping) / damping = 1e2): 1e-4 of each
    # leaf's largest entry (measured 6e-7).
    _check(step, (params, tx.init(params), x, y), rtol=1e-4)
