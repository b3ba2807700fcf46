"""Property tests (hypothesis) of numerical invariants, each against an independent reference.

Issue 9. Every property is checked on drawn inputs against something jaxnum does
not compute: numpy float64 (SVD, dense solves, a dense BFGS matrix), a plain
Python schedule, or ``jax.hessian``. Shapes come from small fixed sets and
values are drawn, so that jit compiles a handful of programs, not one per
example. Bounds are stated beside each test with where they come from.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.flatten_util import ravel_pytree

import jaxnum as jn
from jaxnum.autodiff import hvp
from jaxnum.kfac import KroneckerFactors
from jaxnum.kfac._factors import factored_damping, kronecker_precondition
from jaxnum.linalg import randomized_svd
from jaxnum.optim import scale_by_lbfgs
from jaxnum.optim.quasi_newton import _inverse_hessian_product, _two_loop

EPS64 = float(np.finfo(np.float64).eps)
DECADES = st.floats(-3.0, 3.0)  # exponents of drawn scales: values over six decades


def _entries(bound):
    """Floats in [-bound, bound] with six decimals: no subnormal products (which XLA
    on CPU flushes to zero), zeros included."""
    return st.floats(-bound, bound).map(lambda x: round(x, 6))


def _flat(tree):
    """The leaves of a pytree as one float64 numpy vector (ravel_pytree's order)."""
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


def _norm64(tree):
    """Global Euclidean norm of a pytree, in float64 from the exact leaf values."""
    return math.sqrt(sum(float(np.sum(np.asarray(x, np.float64) ** 2)) for x in tree.values()))


# --- randomized SVD: Eckart-Young below, Halko-Martinsson-Tropp above ---------------------

# (m, n, rank, oversample, power_iters, dtype). l = min(rank + oversample, min(m, n))
# columns are sampled. Cases: rank 1; no power iteration (Algorithm 4.1); the
# smallest oversampling the deviation bound allows (p = 4) with the default q = 4;
# l = min(m, n) (the range is captured exactly); rank = min(m, n) (sigma_{k+1} = 0).
RSVD_CASES = [
    (40, 24, 1, 10, 2, np.float32),
    (24, 40, 6, 10, 0, np.float64),
    (33, 40, 7, 4, 4, np.float32),
    (12, 40, 5, 10, 1, np.float32),
    (5, 9, 5, 10, 3, np.float64),
]
DELTA = 1e-9  # failure probability allowed per example by the upper bound


def _hmt_error_bound(sigma, k, l, q, delta=DELTA):
    """Upper bound on ``||A - U diag(S) Vt||_2`` holding with probability >= 1 - delta.

    Range finder (Halko, Martinsson, Tropp 2011): Thm 9.2 gives
    ``||(I - P)A|| <= ||(I - P)B||^(1/(2q+1))`` for ``B = (A A^T)^q A`` (singular
    values s_j = sigma_j^(2q+1)). Thm 10.8 (Gaussian test matrix, target rank
    k >= 2, oversampling p = l - k >= 4) bounds ``||(I - P)B||`` for all t, u >= 1 by
    ``(1 + t C_k + u t c) s_{k+1} + t c (sum_{j>k} s_j^2)^(1/2)``, c = e sqrt(k+p)/(p+1),
    except with probability ``2 t^-p + e^(-u^2/2)``: the deterministic bound of
    Thm 9.1, Gaussian concentration (Prop. 10.3) given Omega_1, and the deviation
    bounds of Prop. 10.4 on ||Omega_1^+|| (c t) and ||Omega_1^+||_F (C_k t). For
    C_k we take sqrt(12 k / p), the larger of the two forms in circulation
    (sqrt(3 k / (p+1)) is the other), so the bound holds with either. t and u
    split delta in halves. For rank 1 the theorem is applied with target rank 2
    (the same sampled space; sigma_3 <= sigma_2). When l = min(m, n) the sampled
    space is the whole range and (I - P)A = 0.

    Truncation: U diag(S) Vt = Q [Q^T A]_k and the two parts of
    ``A - Q [Q^T A]_k = (I - P)A + (P A - [P A]_k)`` have orthogonal column
    spaces, so the error is at most ``sqrt(||(I - P)A||^2 + sigma_{k+1}^2)``
    (sigma_{k+1}(Q^T A) <= sigma_{k+1}(A)).
    """
    r = len(sigma)
    tail = sigma[k] if k < r else 0.0
    if l >= r:
        return tail
    k2 = max(k, 2)
    p = l - k2
    assert p >= 4, "Thm 10.8 needs oversampling >= 4"
    t = max(1.0, (4.0 / delta) ** (1.0 / p))  # 2 t^-p = delta / 2
    u = math.sqrt(2.0 * math.log(2.0 / delta))  # e^(-u^2/2) = delta / 2
    c = math.e * math.sqrt(k2 + p) / (p + 1)
    s = sigma ** (2 * q + 1)
    head = (1 + t * math.sqrt(12 * k2 / p) + u * t * c) * s[k2]
    range_error = head + t * c * math.sqrt(float(np.sum(s[k2:] ** 2)))
    return math.sqrt(tail**2 + range_error ** (2.0 / (2 * q + 1)))


@st.composite
def _spectra(draw, r):
    """A decaying spectrum of length r: geometric, polynomial, or a plateau then a cliff."""
    j = np.arange(r, dtype=np.float64)
    kind = draw(st.sampled_from(["geometric", "polynomial", "cliff"]))
    if kind == "geometric":
        sigma = draw(st.floats(0.2, 0.98)) ** j
    elif kind == "polynomial":
        sigma = (j + 1.0) ** -draw(st.floats(0.25, 4.0))
    else:
        plateau = draw(st.integers(1, r))
        sigma = np.where(j < plateau, 1.0, draw(st.floats(1e-8, 0.5)) * 0.9 ** (j - plateau))
    return sigma * 10.0 ** draw(DECADES)


@settings(max_examples=25, deadline=None)
@given(case=st.sampled_from(RSVD_CASES), data=st.data(), seed=st.integers(0, 2**32 - 1))
@pytest.mark.slow
def test_randomized_svd_error_between_eckart_young_and_hmt_bound(case, data, seed):
    m, n, k, oversample, q, dtype = case
    r = min(m, n)
    rng = np.random.default_rng(seed)
    left = np.linalg.qr(rng.normal(size=(m, r)))[0]
    right = np.linalg.qr(rng.normal(size=(n, r)))[0]
    A = ((left * data.draw(_spectra(r))) @ right.T).astype(dtype)
    with jax.enable_x64(dtype == np.float64):
        key = jax.random.key(data.draw(st.integers(0, 2**32 - 1), label="key"))
        out = randomized_svd(A, k, key=key, oversample=oversample, power_iters=q)
    assert all(x.dtype == dtype for x in out)
    U, S, Vt = (np.asarray(x, np.float64) for x in out)
    A64 = A.astype(np.float64)  # the exact input: its singular values are the truth
    sigma = np.linalg.svd(A64, compute_uv=False)
    error = np.linalg.norm(A64 - (U * S) @ Vt, 2)
    # Rounding: backward errors of the LU/QR/SVD steps, O((m + n) eps ||A||); the
    # constant 20 is ~6x the largest seen (3.5 (m + n) eps, q = 3 on 5 x 9, 1500 draws).
    eps = float(np.finfo(dtype).eps)
    rounding = 20 * (m + n) * eps * sigma[0]
    optimum = sigma[k] if k < r else 0.0
    # U S Vt has rank <= k (exactly, in float64 from the returned factors): Eckart-Young.
    assert error >= optimum - 64 * EPS64 * sigma[0]
    l = min(k + oversample, r)
    assert error <= _hmt_error_bound(sigma, k, l, q) + rounding, (error, optimum)
    # S are singular values of Q^T A restricted to rank k, so 0 <= S_j <= sigma_j (interlacing),
    # and by Weyl |sigma_j(A) - S_j| <= ||A - U S Vt||.
    assert np.all(S >= 0) and np.all(np.diff(S) <= rounding)
    assert np.all(S <= sigma[:k] + rounding)
    assert np.all(S >= sigma[:k] - error - rounding)
    tol = 10 * (m + n) * eps  # Householder QR: orthonormal to O(m eps); seen <= 0.9 (m + n) eps
    assert np.linalg.norm(U.T @ U - np.eye(k), 2) <= tol
    assert np.linalg.norm(Vt @ Vt.T - np.eye(k), 2) <= tol


# --- L-BFGS: the two-loop recursion equals the dense BFGS inverse-Hessian update ----------

LBFGS_LIKE = {"a": np.zeros(3), "b": np.zeros((2, 2))}  # a pytree of 7 parameters


def _dense_bfgs_inverse(pairs, gamma, n):
    """H = V_k^T H V_k + rho_k s_k s_k^T from H_0 = gamma I (Nocedal-Wright eq. 6.17)."""
    H = gamma * np.eye(n)
    for s, y in pairs:
        rho = 1.0 / (s @ y)
        V = np.eye(n) - rho * np.outer(y, s)
        H = V.T @ H @ V + rho * np.outer(s, s)
    return H


@functools.cache
def _lbfgs_update(memory):
    """scale_by_lbfgs and its jitted update, compiled once per memory size."""
    tx = scale_by_lbfgs(memory)
    return tx, jax.jit(tx.update)


_pair = st.tuples(
    DECADES,  # log10 ||s|| scale
    st.floats(-2.0, 2.0),  # log10 ||y|| / ||s||
    st.floats(0.05, 1.0),  # |cos(s, y)|
    st.booleans(),  # positive curvature (kept) or negative (refused)
)


@settings(max_examples=15, deadline=None)
@given(
    memory=st.sampled_from([1, 3]),  # 8 pairs: the ring wraps around
    pairs=st.lists(_pair, min_size=1, max_size=8),
    seed=st.integers(0, 2**32 - 1),
)
@pytest.mark.slow
def test_lbfgs_two_loop_equals_dense_bfgs_matrix(memory, pairs, seed):
    rng = np.random.default_rng(seed)
    n = 7
    points, grads = [rng.normal(size=n)], [rng.normal(size=n)]
    for log_s, log_ratio, cos, positive in pairs:
        s = rng.normal(size=n)
        s *= 10.0**log_s / np.linalg.norm(s)
        z = rng.normal(size=n)
        z -= (z @ s) / (s @ s) * s
        z /= np.linalg.norm(z)
        cos = cos if positive else -cos
        y = (
            10.0**log_ratio
            * np.linalg.norm(s)
            * (cos * s / np.linalg.norm(s) + (1 - cos**2) ** 0.5 * z)
        )
        points.append(points[-1] + s)
        grads.append(grads[-1] + y)
    # The pairs are the differences of the iterates as the transformation sees them
    # (x_{i+1} - x_i rounds), and those with s^T y <= 0 are refused.
    diffs = [(points[i + 1] - points[i], grads[i + 1] - grads[i]) for i in range(len(pairs))]
    kept = [(s, y) for s, y in diffs if s @ y > 0][-memory:]
    g = rng.normal(size=n)
    with jax.enable_x64(True):
        _, unravel = ravel_pytree(LBFGS_LIKE)  # float64: made with x64 on
        tree = lambda v: unravel(jnp.asarray(v))  # noqa: E731
        tx, update = _lbfgs_update(memory)
        state = tx.init(tree(points[0]))
        for x, gx in zip(points, grads, strict=True):
            direction, state = update(tree(gx), state, tree(x))
        outputs = {
            "two_loop": _two_loop(tree(g), state),
            "inverse_hessian_product": _inverse_hessian_product(tree(g), state),
        }
        assert int(state.num_pairs) == len(kept)
        assert int(state.num_skipped) == len(diffs) - sum(s @ y > 0 for s, y in diffs)
    if kept:
        s_new, y_new = kept[-1]
        gamma = (s_new @ y_new) / (y_new @ y_new)  # Nocedal-Wright eq. 7.20
    else:  # no pair yet: a first step of unit length (scale_first_step)
        gamma = 1.0 / np.linalg.norm(grads[-1])
    H = _dense_bfgs_inverse(kept, gamma, n)
    # Normwise to rounding: |H g - fl(H g)| <= c eps ||H|| ||g|| (observed c < 5).
    scale = np.linalg.norm(H, 2)
    for name, out in outputs.items():
        err = np.linalg.norm(_flat(out) - H @ g)
        assert err <= 1e-12 * scale * np.linalg.norm(g), name
    err = np.linalg.norm(_flat(direction) - H @ grads[-1])
    assert err <= 1e-12 * scale * np.linalg.norm(grads[-1])


# --- K-FAC: (A kron G)^-1 vec(W) = vec(A^-1 W G^-1), and factored damping ---------------

KFAC_SHAPES = [(2, 1), (4, 3), (6, 5)]  # (d_in + 1, d_out)


@st.composite
def _kfac_factors(draw, entries):
    """PSD factors a^T a / batch, g^T g / batch (batch < dimension: singular) and a W."""
    d_a, d_g = draw(st.sampled_from(KFAC_SHAPES))
    batch = draw(st.integers(1, 8))
    a = draw(hnp.arrays(np.float64, (batch, d_a), elements=entries))
    g = draw(hnp.arrays(np.float64, (batch, d_g), elements=entries))
    W = draw(hnp.arrays(np.float64, (d_a, d_g), elements=entries))
    return a.T @ a / batch, g.T @ g / batch, W


@functools.partial(jax.jit, static_argnames="damped")
def _kfac_jitted(W, A, G, damping, damped):
    factors = KroneckerFactors(A, G)
    if damped:
        factors = factored_damping(factors, damping)
    return factors, kronecker_precondition(W, factors)


@settings(max_examples=25, deadline=None)
@given(
    problem=_kfac_factors(_entries(3.0)),
    log_damping=st.tuples(st.floats(-4.0, 1.0), st.floats(-4.0, 1.0)),
)
def test_kronecker_precondition_equals_dense_solve(problem, log_damping):
    A, G, W = problem
    A = A + 10.0 ** log_damping[0] * np.eye(A.shape[0])  # SPD
    G = G + 10.0 ** log_damping[1] * np.eye(G.shape[0])
    # vec is row-major (W.reshape(-1)): (A kron G) vec(X) = vec(A X G^T).
    expected = np.linalg.solve(np.kron(A, G), W.reshape(-1)).reshape(W.shape)
    with jax.enable_x64(True):
        _, out = _kfac_jitted(jnp.asarray(W), jnp.asarray(A), jnp.asarray(G), 1.0, damped=False)
    assert out.dtype == np.float64
    # Forward error of a backward-stable dense solve (the reference; jaxnum's own is
    # smaller): c n eps cond(A kron G) ||x||, with cond(A kron G) = cond(A) cond(G).
    cond = np.prod([np.linalg.eigvalsh(F)[-1] / np.linalg.eigvalsh(F)[0] for F in (A, G)])
    tol = 10 * W.size * EPS64 * cond * np.linalg.norm(expected)
    assert np.linalg.norm(np.asarray(out) - expected) <= tol


@settings(max_examples=25, deadline=None)
@given(problem=_kfac_factors(_entries(10.0)), log_damping=st.floats(-6.0, 1.0))
@example(  # a bias-free layer whose inputs are all zero in the batch: A = 0
    problem=(np.zeros((2, 2)), np.array([[4.0]]), np.ones((2, 1))), log_damping=0.0
)
def test_factored_damping_is_positive_definite_and_follows_martens_grosse(problem, log_damping):
    """A_d = A + a I, G_d = G + b I with a, b > 0 and a b = damping (Martens-Grosse eq. 13,
    a / b = pi^2 = (tr A / dim A) / (tr G / dim G) when both traces are positive), so
    A_d kron G_d >= A kron G + damping I is SPD for any PSD factors, zero ones included;
    then the preconditioned W equals the dense solve."""
    A, G, W = problem
    damping = 10.0**log_damping
    with jax.enable_x64(True):
        (A_d, G_d), out = _kfac_jitted(
            jnp.asarray(W), jnp.asarray(A), jnp.asarray(G), damping, damped=True
        )
    A_d, G_d, out = np.asarray(A_d), np.asarray(G_d), np.asarray(out)
    shift = []
    for F, F_d in ((A, A_d), (G, G_d)):
        off = ~np.eye(F.shape[0], dtype=bool)
        np.testing.assert_array_equal(F_d[off], F[off])
        shift.append(float(np.mean(np.diag(F_d) - np.diag(F))))
    a, b = shift
    assert np.isfinite(a) and np.isfinite(b) and a > 0 and b > 0, (a, b)
    assert abs(a * b - damping) <= 1e-8 * damping
    mean_a, mean_g = np.trace(A) / A.shape[0], np.trace(G) / G.shape[0]
    if mean_a > 0 and mean_g > 0:
        assert abs(a / b - mean_a / mean_g) <= 1e-8 * mean_a / mean_g
    expected = np.linalg.solve(np.kron(A_d, G_d), W.reshape(-1)).reshape(W.shape)
    cond = np.prod([np.linalg.eigvalsh(F)[-1] / np.linalg.eigvalsh(F)[0] for F in (A_d, G_d)])
    tol = 10 * W.size * EPS64 * cond * np.linalg.norm(expected)
    assert np.linalg.norm(out - expected) <= tol


# --- loss scaling: the schedule, and min_scale <= scale <= max_scale ---------------------

STEPS = 40
KINDS = st.sampled_from(["finite", "finite", "finite", "inf", "-inf", "nan"])
FLOAT32_SCALES = st.floats(2.0**-20, 2.0**40, width=32)  # exact float32 values


def _reference_schedule(
    finite, *, initial, min_scale, max_scale, growth_factor, backoff_factor, growth_interval
):
    """The jmp DynamicLossScale / torch GradScaler rule with a cap, in float32 arithmetic."""
    f32 = np.float32
    scale, run, out = f32(initial), 0, []
    for ok in finite:
        if ok:
            run += 1
            if run == growth_interval:
                run = 0
                grown = scale * f32(growth_factor)
                if np.isfinite(grown) and grown <= f32(max_scale):
                    scale = grown
        else:
            run = 0
            scale = max(f32(min_scale), scale * f32(backoff_factor))
        out.append(float(scale))
    return out


@functools.partial(jax.jit, static_argnames="growth_interval")
def _run_loss_scaling(grads, hyper, growth_interval):
    initial, lo, hi, growth, backoff = hyper  # traced: one compile per growth_interval
    tx = jn.loss_scaling(
        optax.sgd(0.1),
        initial_scale=initial,
        min_scale=lo,
        max_scale=hi,
        growth_factor=growth,
        backoff_factor=backoff,
        growth_interval=growth_interval,
    )
    params = jnp.zeros(grads.shape[1:])

    def step(state, g):
        updates, state = tx.update(g, state, params)
        return state, (state.scale, updates)

    final, (scales, updates) = jax.lax.scan(step, tx.init(params), grads)
    return final, scales, updates


@settings(max_examples=25, deadline=None)
@given(
    kinds=st.lists(KINDS, min_size=STEPS, max_size=STEPS),
    bounds=st.lists(FLOAT32_SCALES, min_size=3, max_size=3),
    growth_factor=st.floats(1.0, 8.0, exclude_min=True, width=32),
    backoff_factor=st.floats(0.0, 1.0, exclude_min=True, exclude_max=True, width=32),
    growth_interval=st.sampled_from([1, 2, 3]),
    seed=st.integers(0, 2**32 - 1),
)
def test_loss_scale_stays_within_min_and_max_and_follows_the_schedule(
    kinds, bounds, growth_factor, backoff_factor, growth_interval, seed
):
    min_scale, initial, max_scale = sorted(bounds)
    grads = np.random.default_rng(seed).normal(size=(STEPS, 3)).astype(np.float32)
    bad = {"inf": np.inf, "-inf": -np.inf, "nan": np.nan}
    for i, kind in enumerate(kinds):
        if kind in bad:
            grads[i, i % 3] = bad[kind]
    hyper = tuple(
        np.float32(v) for v in (initial, min_scale, max_scale, growth_factor, backoff_factor)
    )
    final, scales, updates = _run_loss_scaling(jnp.asarray(grads), hyper, growth_interval)
    scales = np.asarray(scales, np.float64)
    assert np.all(scales >= min_scale) and np.all(scales <= max_scale)
    finite = [kind == "finite" for kind in kinds]
    expected = _reference_schedule(
        finite,
        initial=initial,
        min_scale=min_scale,
        max_scale=max_scale,
        growth_factor=growth_factor,
        backoff_factor=backoff_factor,
        growth_interval=growth_interval,
    )
    np.testing.assert_array_equal(scales, expected)
    assert int(final.total_skipped) == finite.count(False)
    updates = np.asarray(updates)
    assert np.all(updates[~np.array(finite)] == 0) and np.all(np.isfinite(updates))


# --- clipping: the norm never grows, and the factor is min(1, max_norm / norm) ------------

CLIP_SHAPES = [(), (3,), (2, 5)]


@st.composite
def _gradient_trees(draw):
    """1-3 leaves of float16/float32 with values anywhere in the format (many decades)."""
    tree = {}
    for i in range(draw(st.integers(1, 3))):
        width = draw(st.sampled_from([16, 32]))
        dtype = np.float16 if width == 16 else np.float32
        elements = st.floats(allow_nan=False, allow_infinity=False, width=width)
        tree[f"leaf{i}"] = draw(
            hnp.arrays(dtype, draw(st.sampled_from(CLIP_SHAPES)), elements=elements)
        )
    return tree


def _clip(tree, max_norm):
    tx = jn.clip_by_global_norm(max_norm)
    grads = {k: jnp.asarray(v) for k, v in tree.items()}
    updates, state = tx.update(grads, tx.init(grads))
    for k in tree:
        assert updates[k].dtype == tree[k].dtype
    return {k: np.asarray(v) for k, v in updates.items()}, state


def _clip_rounding(tree):
    """Relative and absolute (per-entry) rounding of one clip.

    The float32 sum of N squares is within N u32 relative (halved by the sqrt;
    a few more u32 for the sqrt, the division and the product); the cast of
    each scaled entry back to its dtype adds its unit roundoff relative, or half
    its smallest subnormal absolute. XLA on CPU flushes float32 subnormals to
    zero, so a float32 entry may also lose up to float32's smallest normal.
    """
    size = sum(np.size(x) for x in tree.values())
    u32 = float(np.finfo(np.float32).eps) / 2
    u_leaf = max(float(np.finfo(x.dtype).eps) / 2 for x in tree.values())
    relative = (size + 6) * u32 + u_leaf
    flush = float(np.finfo(np.float32).tiny)
    absolute = {
        k: max(float(np.finfo(x.dtype).smallest_subnormal) / 2, flush) for k, x in tree.items()
    }
    return relative, absolute


@settings(max_examples=40, deadline=None)
@given(tree=_gradient_trees(), log_max_norm=st.floats(-4.0, 4.0))
def test_clipping_never_increases_the_norm(tree, log_max_norm):
    max_norm = 10.0**log_max_norm
    updates, state = _clip(tree, max_norm)
    if not np.isfinite(float(state.norm)):  # float32 norm overflow: flagged with nan updates,
        return  # the contract of the next test
    before, after = _norm64(tree), _norm64(updates)
    relative, absolute = _clip_rounding(tree)
    absolute = math.sqrt(sum(np.size(tree[k]) * a**2 for k, a in absolute.items()))
    assert after <= min(before, max_norm) * (1 + relative) + absolute, (before, after)


@settings(max_examples=40, deadline=None)
@given(tree=_gradient_trees(), log_max_norm=st.floats(-4.0, 4.0))
@example(tree={"w": np.array([2.0**64], np.float32)}, log_max_norm=0.0)  # (2^64)^2 > f32 max
def test_clipping_scales_by_min_one_max_norm_over_norm_or_flags_overflow(tree, log_max_norm):
    """The documented contract: updates * min(1, max_norm / norm) with the float32 norm;
    a non-finite norm gives non-finite updates, never silently zeros."""
    max_norm = 10.0**log_max_norm
    updates, state = _clip(tree, max_norm)
    if not np.isfinite(float(state.norm)):
        assert not all(np.all(np.isfinite(u)) for u in updates.values())
        return
    norm = _norm64(tree)
    factor = min(1.0, max_norm / norm) if norm > 0 else 1.0
    relative, absolute = _clip_rounding(tree)
    for k, g in tree.items():
        expected = np.asarray(g, np.float64) * factor
        err = np.abs(np.asarray(updates[k], np.float64) - expected)
        assert np.all(err <= relative * np.abs(expected) + absolute[k]), k
    # Squares below float32's smallest normal flush to zero (XLA:CPU): sqrt(N tiny32) absolute.
    size = sum(np.size(x) for x in tree.values())
    flush = math.sqrt(size * float(np.finfo(np.float32).tiny))
    assert abs(float(state.norm) - norm) <= relative * norm + flush


# --- HVP: u.Hv = v.Hu, and Hv equals jax.hessian's matrix times v ------------------------

HVP_X = {"w": np.zeros((2, 3)), "b": np.zeros(3)}  # 9 parameters
HVP_ACTIVATIONS = (jnp.sin, jnp.tanh, jax.nn.softplus, lambda t: jnp.exp(-(t**2)), lambda t: t**3)
HVP_HIDDEN = 4


def _smooth_function(x, mix, M, beta, c, gamma):
    """sum_j c_j phi((M z + beta)_j) + gamma (tanh(w) b . 1) + (z.z)^2 / 4, z = ravel(x),
    phi = sum_a mix_a act_a: a drawn smooth function of a pytree with coupled leaves."""
    z = jnp.concatenate([x["w"].ravel(), x["b"]])
    h = M @ z + beta
    phi = sum(weight * act(h) for weight, act in zip(mix, HVP_ACTIVATIONS, strict=True))
    return c @ phi + gamma * jnp.sum(jnp.tanh(x["w"]) @ x["b"]) + 0.25 * (z @ z) ** 2


@functools.partial(jax.jit, static_argnames="mode")
def _hvp(x, v, params, mode):
    return hvp(_smooth_function, x, v, *params, mode=mode)


@jax.jit
def _dense_hessian(z, params):
    _, unravel = ravel_pytree(HVP_X)
    return jax.hessian(lambda y: _smooth_function(unravel(y), *params))(z)


def _vectors(n):
    return hnp.arrays(np.float64, n, elements=_entries(2.0))


@settings(max_examples=15, deadline=None)
@given(
    z=_vectors(9),
    u=_vectors(9),
    v=_vectors(9),
    mix=hnp.arrays(np.float64, len(HVP_ACTIVATIONS), elements=_entries(1.0)),
    M=hnp.arrays(np.float64, (HVP_HIDDEN, 9), elements=_entries(1.0)),
    beta=_vectors(HVP_HIDDEN),
    c=_vectors(HVP_HIDDEN),
    gamma=_entries(2.0),
)
def test_hvp_is_symmetric_and_equals_the_dense_hessian(z, u, v, mix, M, beta, c, gamma):
    with jax.enable_x64(True):
        _, unravel = ravel_pytree(HVP_X)  # float64: made with x64 on
        params = tuple(jnp.asarray(p) for p in (mix, M, beta, c, gamma))
        x = unravel(jnp.asarray(z))
        H = np.asarray(_dense_hessian(jnp.asarray(z), params))
        products = {
            mode: (
                _flat(_hvp(x, unravel(jnp.asarray(v)), params, mode)),
                _flat(_hvp(x, unravel(jnp.asarray(u)), params, mode)),
            )
            for mode in ("fwd-rev", "rev-rev", "rev-fwd")
        }
    np.testing.assert_allclose(H, H.T, rtol=0, atol=64 * EPS64 * np.abs(H).max())
    # Rounding of a product of AD-evaluated terms of size ||H||: c eps ||H|| ||u|| ||v||.
    scale = max(np.linalg.norm(H, 2), 1.0) * 64 * EPS64
    for mode, (Hv, Hu) in products.items():
        assert abs(u @ Hv - v @ Hu) <= scale * np.linalg.norm(u) * np.linalg.norm(v), mode
        assert np.linalg.norm(Hv - H @ v) <= scale * np.linalg.norm(v), mode
        assert np.linalg.norm(Hu - H @ u) <= scale * np.linalg.norm(u), mode
