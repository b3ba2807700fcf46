"""Claim: CG solves an SPD system in at most n steps; Lanczos finds the top Hessian eigenvalues.

"CG solves an SPD system in at most n steps; Lanczos finds the top Hessian
eigenvalues; Adagrad, Adam and K-FAC as preconditioners of the same quadratic."

CG (float64). ``A = Q diag(lam) Q^T`` (n x n, Q Haar-random) and a Gaussian b.
In exact arithmetic CG's residual vanishes after as many steps as A has
distinct eigenvalues, at most n (Hestenes and Stiefel 1952; Saad, Iterative
Methods for Sparse Linear Systems, 2nd ed., 2003, Sec. 6.11.3). Spectra: a few
distinct eigenvalues (``distinct``), and n distinct log-spaced eigenvalues in
``[1, cond]`` for each condition number in ``conds``. Measured with
:func:`jaxnum.linalg.cg` (short recurrences, as used in practice) on a grid of
relative tolerances (one vmapped call): the iterations it needs to reach each.
Beside it, the same Krylov iterates computed with full reorthogonalisation
(:func:`jaxnum.linalg.lanczos` from b, then ``T_k y = e_1`` and ``||r_k|| =
||b|| beta_k |y_k|``: CG is the Lanczos/FOM method for SPD A; Saad Sec. 6.7),
which keeps the Krylov basis orthogonal and so emulates exact arithmetic. In
floating point, plain CG loses orthogonality and is delayed once the spectrum
is spread (Greenbaum and Strakos, SIAM J. Matrix Anal. Appl. 13, 1992; Meurant
and Strakos, Acta Numerica 2006).

Lanczos. A small tanh MLP trained briefly on a synthetic regression; the k
largest eigenvalues of the Hessian of its mean squared error by
:func:`jaxnum.linalg.top_eigenvalues` on :func:`jaxnum.linalg.hessian_operator`
(Hessian-vector products, float32) against ``jnp.linalg.eigvalsh`` of
``jax.hessian`` (Golub and Van Loan, Matrix Computations, 4th ed., Sec. 10.1).

Preconditioners. ``f(X) = 0.5 <X - X*, A1 (X - X*) A2>``, i.e. the Hessian is
``A1 kron A2`` (p^2 unknowns), condition ``cond_quadratic`` split evenly over the
factors, once with random eigenvectors ("rotated") and once diagonal
("axis-aligned"). Iterations until ``f - f* <= tol (f(X0) - f*)`` for gradient
descent, heavy-ball momentum 0.9 (a control: Adam's b1), ``optax.adagrad``,
``optax.adam`` and K-FAC's step ``A1^-1 G A2^-1``
(the step :func:`jaxnum.kfac.scale_by_kfac` takes, with the exact factors: the
Kronecker structure is exact here, so K-FAC is Newton's method; Martens and
Grosse, ICML 2015, Sec. 3-4), each at its best learning rate of one log grid
(iterations until f stays below tol for the rest of the budget: Adam's
constant-step oscillations near the optimum count against it).
A method preconditions when it needs at most half the iterations of its
unpreconditioned counterpart of the same momentum: GD for Adagrad and K-FAC,
heavy ball for Adam.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from jaxnum.linalg import cg, hessian_operator, lanczos, top_eigenvalues
from jaxnum.tour._common import pyplot
from jaxnum.tour.result import ClaimResult

METHODS = ("gd", "momentum", "adagrad", "adam", "kfac")
BASELINE = {"adagrad": "gd", "kfac": "gd", "adam": "momentum"}
HELP_FACTOR = 2.0  # "preconditions": at most 1/HELP_FACTOR of the baseline's iterations
LANCZOS_RTOL = 1e-4  # float32 Hessian-vector products: ~1e-6 expected, 1e-4 is ample


@dataclass(frozen=True)
class Config:
    """Sizes of the three parts; see the module docstring."""

    n: int = 100
    distinct: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0, 100.0)
    conds: tuple[float, ...] = (1e1, 1e2, 1e3, 1e4)
    cg_tol: float = 1e-10
    num_tols: int = 61
    cg_max_factor: int = 5
    net_hidden: int = 16
    net_inputs: int = 4
    net_samples: int = 128
    net_steps: int = 300
    top_k: int = 3
    lanczos_iters: tuple[int, ...] = (3, 5, 10, 20, 40)
    factor_dim: int = 10
    cond_quadratic: float = 300.0
    quad_tol: float = 1e-6
    quad_steps: int = 5000
    learning_rates: tuple[float, ...] = (
        1e-4,
        3e-4,
        1e-3,
        3e-3,
        1e-2,
        3e-2,
        0.1,
        0.3,
        1.0,
        3.0,
        10.0,
    )

    @classmethod
    def quick(cls) -> Config:
        return cls(n=60, conds=(1e1, 1e2, 1e3), num_tols=41, quad_steps=2500)

    def __post_init__(self):
        if self.n < 2 or not 1 <= len(self.distinct) <= self.n:
            raise ValueError(
                f"Config: n >= 2 and 1..n distinct eigenvalues, got n={self.n}, "
                f"distinct={self.distinct}"
            )
        if min(self.distinct) <= 0 or len(set(self.distinct)) != len(self.distinct):
            raise ValueError(f"Config: distinct must be distinct positives, got {self.distinct}")
        if not self.conds or min(self.conds) < 1:
            raise ValueError(f"Config: conds must be >= 1, got {self.conds}")
        if not 0 < self.cg_tol < 1 or self.num_tols < 2 or self.cg_max_factor < 1:
            raise ValueError("Config: need 0 < cg_tol < 1, num_tols >= 2, cg_max_factor >= 1")
        params = self.net_inputs * self.net_hidden + 2 * self.net_hidden + 1
        if not 1 <= self.top_k <= min(self.lanczos_iters, default=0) <= params:
            raise ValueError(
                f"Config: need 1 <= top_k <= every lanczos_iters <= {params} (parameters), "
                f"got top_k={self.top_k}, lanczos_iters={self.lanczos_iters}"
            )
        if max(self.lanczos_iters) > params:
            raise ValueError(f"Config: lanczos_iters must be <= {params} (parameters)")
        if self.factor_dim < 2 or self.cond_quadratic < 1 or not 0 < self.quad_tol < 1:
            raise ValueError("Config: need factor_dim >= 2, cond_quadratic >= 1, 0 < quad_tol < 1")
        if self.quad_steps < 1 or not self.learning_rates or min(self.learning_rates) <= 0:
            raise ValueError("Config: quad_steps >= 1 and positive learning_rates required")


# ----------------------------------------------------------------------------- CG


def spd_matrix(key, eigenvalues) -> jax.Array:
    """``Q diag(eigenvalues) Q^T`` with Q Haar-random, in the eigenvalues' dtype, symmetrised."""
    lam = jnp.asarray(eigenvalues)
    Q = jnp.linalg.qr(jax.random.normal(key, (lam.size, lam.size), lam.dtype))[0]
    A = (Q * lam) @ Q.T
    return 0.5 * (A + A.T)


def cg_spectra(config: Config) -> dict[str, np.ndarray]:
    """Name -> eigenvalues (float64): the few-distinct case and one log-spaced case per cond."""
    n, d = config.n, len(config.distinct)
    few = np.asarray(config.distinct, np.float64)[np.arange(n) * d // n]
    out = {f"{d} distinct": few}
    for c in config.conds:
        out[f"cond {c:.0e}"] = np.logspace(0.0, np.log10(c), n)
    return out


@partial(jax.jit, static_argnames="maxiter")
def _cg_on_grid(A, b, tols, *, maxiter):
    res = jax.vmap(lambda t: cg(A, b, tol=t, maxiter=maxiter))(tols)
    return res.nit, res.residual_norm / jnp.linalg.norm(b)


@partial(jax.jit, static_argnames="num_iters")
def _lanczos_matrix(A, v0, *, num_iters):
    res = lanczos(A, v0, num_iters)
    return res.alphas, res.betas


def reorthogonalised_residuals(A, b) -> np.ndarray:
    """``||r_k|| / ||b||`` for k = 0..n of the CG iterates with a fully orthogonal Krylov basis."""
    n = b.shape[0]
    alphas, betas = (np.asarray(v, np.float64) for v in _lanczos_matrix(A, b, num_iters=n))
    out = [1.0]
    for k in range(1, n + 1):
        y = np.linalg.solve(_tridiagonal(alphas, betas, k), np.eye(k)[0])
        out.append(float(abs(betas[k - 1] * y[-1])))
    return np.asarray(out)


def _tridiagonal(alphas, betas, k):
    """The leading k x k block of the Lanczos matrix T."""
    return np.diag(alphas[:k]) + np.diag(betas[: k - 1], 1) + np.diag(betas[: k - 1], -1)


def _first_at_or_below(values, tol):
    hits = np.nonzero(np.asarray(values) <= tol)[0]
    return int(hits[0]) if hits.size else None


def cg_problems(config: Config, key) -> dict[str, tuple[jax.Array, jax.Array]]:
    """Name -> (A, b) for every spectrum of :func:`cg_spectra`; float64 under ``enable_x64``."""
    out = {}
    for i, (name, lam) in enumerate(cg_spectra(config).items()):
        k_a, k_b = jax.random.split(jax.random.fold_in(key, i))
        A = spd_matrix(k_a, jnp.asarray(lam))
        out[name] = A, jax.random.normal(k_b, (config.n,), A.dtype)
    return out


def cg_study(config: Config, key) -> dict:
    """Plain and reorthogonalised CG residuals on every system, in float64."""
    n = config.n
    out = {}
    with jax.enable_x64(True):
        tols = jnp.logspace(0.0, np.log10(config.cg_tol), config.num_tols, dtype=jnp.float64)
        spectra = cg_spectra(config)
        for name, (A, b) in cg_problems(config, key).items():
            lam = spectra[name]
            iters, rel = _cg_on_grid(A, b, tols, maxiter=config.cg_max_factor * n)
            iters, rel = np.asarray(iters), np.asarray(rel)
            exact = reorthogonalised_residuals(A, b)
            reached = iters[-1] if rel[-1] <= config.cg_tol else None
            out[name] = {
                "distinct_eigenvalues": len(np.unique(lam)),
                "cond": float(lam.max() / lam.min()),
                "tols": [float(t) for t in tols],
                "cg_iterations": [int(v) for v in iters],
                "cg_relative_residual": [float(v) for v in rel],
                "cg_iterations_to_tol": None if reached is None else int(reached),
                "reorth_residuals": [float(v) for v in exact],
                "reorth_iterations_to_tol": _first_at_or_below(exact, config.cg_tol),
            }
    return out


# ------------------------------------------------------------------------ Lanczos


def _mlp(params, x):
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return (h @ params["w2"] + params["b2"])[:, 0]


def _mse(params, x, y):
    return jnp.mean((_mlp(params, x) - y) ** 2)


def trained_network(config: Config, key):
    """(params, x, y): the MLP after ``net_steps`` Adam steps on ``y = sin(x w)``."""
    kx, kw, k1, k2 = jax.random.split(key, 4)
    d, h = config.net_inputs, config.net_hidden
    x = jax.random.normal(kx, (config.net_samples, d))
    y = jnp.sin(x @ jax.random.normal(kw, (d,)))
    params = {
        "w1": jax.random.normal(k1, (d, h)) / np.sqrt(d),
        "b1": jnp.zeros(h),
        "w2": jax.random.normal(k2, (h, 1)) / np.sqrt(h),
        "b2": jnp.zeros(1),
    }
    return _train(params, x, y, steps=config.net_steps), x, y


@partial(jax.jit, static_argnames="steps")
def _train(params, x, y, *, steps):
    opt = optax.adam(1e-2)

    def step(carry, _):
        p, s = carry
        g = jax.grad(_mse)(p, x, y)
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    return params


@partial(jax.jit, static_argnames=("k", "num_iters"))
def _hessian_lanczos(params, x, y, key, *, k, num_iters):
    """top_eigenvalues of the Hessian operator, and Lanczos's T from the same start vector."""
    op = hessian_operator(_mse, params, x, y)
    top, _ = top_eigenvalues(op, k, key=key, num_iters=num_iters)
    res = lanczos(op, jax.random.normal(key, (op.shape[0],)), num_iters)
    return top, res.alphas, res.betas


@jax.jit
def _dense_hessian(params, x, y):
    flat, unravel = ravel_pytree(params)
    return jax.hessian(lambda z: _mse(unravel(z), x, y))(flat)


def lanczos_study(config: Config, key) -> dict:
    """Top Hessian eigenvalues by Lanczos against eigvalsh of jax.hessian (float32).

    The key is split into the network's key (:func:`trained_network`) and the start's.
    """
    k_net, k_start = jax.random.split(key)
    params, x, y = trained_network(config, k_net)
    flat = ravel_pytree(params)[0]
    H = _dense_hessian(params, x, y)
    exact = np.asarray(jnp.linalg.eigvalsh(H))[::-1]
    k, m_max = config.top_k, max(config.lanczos_iters)
    top, alphas, betas = _hessian_lanczos(params, x, y, k_start, k=k, num_iters=m_max)
    top, alphas, betas = (np.asarray(v, np.float64) for v in (top, alphas, betas))
    # Convergence: T_m is the leading m x m block of the deepest run's T (same start).
    by_iters = {}
    for m in config.lanczos_iters:
        w = np.linalg.eigvalsh(_tridiagonal(alphas, betas, m))[::-1][:k]
        by_iters[str(m)] = {
            "eigenvalues": [float(v) for v in w],
            "max_rel_error": float(np.max(np.abs(w - exact[:k]) / np.abs(exact[:k]))),
        }
    return {
        "num_params": int(flat.size),
        "loss": float(_mse(params, x, y)),
        "exact_top": [float(v) for v in exact[:k]],
        "exact_bottom": float(exact[-1]),
        "top_eigenvalues": [float(v) for v in top],
        "max_rel_error": float(np.max(np.abs(top - exact[:k]) / np.abs(exact[:k]))),
        "by_iters": by_iters,
    }


# ----------------------------------------------------------------- preconditioners


def kron_factors(key, dim: int, cond: float, rotated: bool):
    """Two SPD factors with log-spaced eigenvalues in ``[1, sqrt(cond)]`` (A1 kron A2 has cond)."""
    lam = jnp.logspace(0.0, 0.5 * np.log10(cond), dim)
    factors = []
    for k in jax.random.split(key, 2):
        if rotated:
            factors.append(spd_matrix(k, lam))
        else:
            factors.append(jnp.diag(jax.random.permutation(k, lam)))
    return factors


def _quadratic(X, A1, A2, X_star):
    E = X - X_star
    return 0.5 * jnp.sum(E * (A1 @ E @ A2))


def _optimizer(name, lr, A1, A2):
    if name == "kfac":

        def update(g, state, params=None):
            # A1^-1 g A2^-1 (A2 symmetric)
            return -lr * jnp.linalg.solve(A1, jnp.linalg.solve(A2, g.T).T), state

        return optax.GradientTransformation(lambda _: optax.EmptyState(), update)
    return {
        "gd": lambda: optax.sgd(lr),
        "momentum": lambda: optax.sgd(lr, momentum=0.9),
        "adagrad": lambda: optax.adagrad(lr),
        "adam": lambda: optax.adam(lr),
    }[name]()


def _descend(name, lrs, A1, A2, X_star, steps):
    """f(X_k) / f(X_0) for k = 0..steps, one row per learning rate (vmapped)."""

    def one(lr):
        opt = _optimizer(name, lr, A1, A2)
        X0 = jnp.zeros_like(X_star)

        def step(carry, _):
            X, s = carry
            value, g = jax.value_and_grad(_quadratic)(X, A1, A2, X_star)
            u, s = opt.update(g, s, X)
            return (X + u, s), value

        (X, _), values = jax.lax.scan(step, (X0, opt.init(X0)), None, length=steps)
        values = jnp.concatenate([values, _quadratic(X, A1, A2, X_star)[None]])
        return values / values[0]

    return jax.vmap(one)(lrs)


_descend_jit = jax.jit(_descend, static_argnums=(0, 5))


def _iterations(curve, tol):
    """First k from which f_j <= tol f_0 for every j >= k up to the budget (else None)."""
    above = ~(np.asarray(curve) <= tol)  # nan counts as above
    if above[-1]:
        return None
    return int(np.nonzero(above)[0][-1] + 1) if above.any() else 0


def quadratic_problems(config: Config, key) -> dict[str, tuple[jax.Array, ...]]:
    """Kind ("rotated", "axis-aligned") -> (A1, A2, X*) of the Kronecker quadratic."""
    out = {}
    for i, kind in enumerate(("rotated", "axis-aligned")):
        k_f, k_x = jax.random.split(jax.random.fold_in(key, i))
        A1, A2 = kron_factors(k_f, config.factor_dim, config.cond_quadratic, kind == "rotated")
        out[kind] = A1, A2, jax.random.normal(k_x, (config.factor_dim, config.factor_dim))
    return out


def preconditioner_study(config: Config, key) -> dict:
    """Every method at every learning rate on both quadratics; the best run of each."""
    lrs = jnp.asarray(config.learning_rates, jnp.float32)
    stride = max(1, config.quad_steps // 500)
    # The stored curves: every step up to 50, then every stride-th, and the last.
    kept = np.unique(
        np.concatenate(
            [
                np.arange(min(51, config.quad_steps + 1)),
                np.arange(0, config.quad_steps + 1, stride),
                [config.quad_steps],
            ]
        )
    )
    out = {}
    for kind, (A1, A2, X_star) in quadratic_problems(config, key).items():
        rows = {}
        for name in METHODS:
            curves = np.asarray(_descend_jit(name, lrs, A1, A2, X_star, config.quad_steps))
            its = [_iterations(c, config.quad_tol) for c in curves]
            reached = [j for j, v in enumerate(its) if v is not None]
            with np.errstate(invalid="ignore"):
                finals = np.where(np.isfinite(curves[:, -1]), curves[:, -1], np.inf)
            best = min(reached, key=lambda j: its[j]) if reached else int(np.argmin(finals))
            curve = curves[best]
            rows[name] = {
                "iterations": its[best],
                "best_lr": config.learning_rates[best],
                "iterations_by_lr": its,
                "final_by_lr": [float(v) for v in finals],
                "curve_steps": [int(k) for k in kept],
                "curve": [float(v) if np.isfinite(v) else None for v in curve[kept]],
            }
        out[kind] = {"cond": float(np.linalg.cond(np.kron(A1, A2))), "methods": rows}
    return out


def _helps(study, config, method, kind):
    rows = study[kind]["methods"]
    base = rows[BASELINE[method]]["iterations"]
    own = rows[method]["iterations"]
    base = config.quad_steps + 1 if base is None else base
    return own is not None and own * HELP_FACTOR <= base


# --------------------------------------------------------------------------- run


def run(config: Config, key) -> tuple[ClaimResult, object]:
    """CG, Lanczos and the preconditioner comparison; returns the row and a figure.

    The key is split into the three parts' keys, in this order.
    """
    k_cg, k_lz, k_pc = jax.random.split(key, 3)
    cgs = cg_study(config, k_cg)
    lz = lanczos_study(config, k_lz)
    pc = preconditioner_study(config, k_pc)
    n, tol = config.n, config.cg_tol

    # Verdict, thresholds stated here. CG "holds" when the few-distinct system
    # needs <= d steps and every system <= n with plain CG; "partly" when only
    # the reorthogonalised (exact-arithmetic) iterates meet those counts.
    few = next(iter(cgs.values()))
    plain_ok = (
        all(
            c["cg_iterations_to_tol"] is not None and c["cg_iterations_to_tol"] <= n
            for c in cgs.values()
        )
        and (few["cg_iterations_to_tol"] or n + 1) <= few["distinct_eigenvalues"]
    )
    exact_ok = (
        all(
            c["reorth_iterations_to_tol"] is not None and c["reorth_iterations_to_tol"] <= n
            for c in cgs.values()
        )
        and (few["reorth_iterations_to_tol"] or n + 1) <= few["distinct_eigenvalues"]
    )
    cg_part = "holds" if plain_ok and exact_ok else "partly" if exact_ok else "no"
    # Lanczos: top-k within LANCZOS_RTOL at the largest iteration count.
    lz_err = lz["max_rel_error"]
    lz_part = "holds" if lz_err <= LANCZOS_RTOL else "no"
    # Preconditioners: all three precondition both quadratics -> holds; K-FAC both
    # and some diagonal method on some quadratic -> partly.
    helps = {m: {k: _helps(pc, config, m, k) for k in pc} for m in BASELINE}
    if all(all(v.values()) for v in helps.values()):
        pc_part = "holds"
    elif all(helps["kfac"].values()) and any(any(helps[m].values()) for m in ("adagrad", "adam")):
        pc_part = "partly"
    else:
        pc_part = "no"
    parts = {"cg": cg_part, "lanczos": lz_part, "preconditioners": pc_part}
    verdict = (
        "holds"
        if all(p == "holds" for p in parts.values())
        else "does not hold here"
        if all(p == "no" for p in parts.values())
        else "holds partly"
    )

    def its(v):
        return "-" if v is None else str(v)

    cg_text = ", ".join(
        f"{name}: {its(c['cg_iterations_to_tol'])} ({its(c['reorth_iterations_to_tol'])} reorth.)"
        for name, c in cgs.items()
    )
    lz_text = ", ".join(f"{v:.4g}" for v in lz["exact_top"])
    pc_text = "; ".join(
        f"{kind} (cond {d['cond']:.0f}): "
        + ", ".join(f"{m} {its(r['iterations'])}" for m, r in d["methods"].items())
        for kind, d in pc.items()
    )
    measured = (
        f"CG iterations to ||r|| <= {tol:g} ||b|| (float64, n={n}): {cg_text}. "
        f"Lanczos top-{config.top_k} Hessian eigenvalues of a {lz['num_params']}-parameter MLP: "
        f"max rel. error {lz_err:.1e} at {max(config.lanczos_iters)} iterations vs eigvalsh "
        f"({lz_text}). Iterations to f - f* <= {config.quad_tol:g} (f0 - f*) on a "
        f"{config.factor_dim**2}-dim Kronecker quadratic, best of a learning-rate grid: "
        f"{pc_text}"
    )
    exceeded = [name for name, c in cgs.items() if (c["cg_iterations_to_tol"] or 10**9) > n]
    why = (
        (
            f"CG: {few['distinct_eigenvalues']} distinct eigenvalues take "
            f"{its(few['cg_iterations_to_tol'])} steps; "
            + (
                f"plain CG exceeds n={n} on {', '.join(exceeded)} (rounding, the reorthogonalised "
                "iterates stay within n)"
                if exceeded
                else f"every system within n={n}"
            )
        )
        + f"; Lanczos rel. error {lz_err:.0e}; "
        + "preconditioning (<= 1/2 the iterations of GD, heavy ball for Adam): "
        + ", ".join(
            f"{m} {'/'.join(k for k, v in helps[m].items() if v) or 'neither'}" for m in helps
        )
    )
    result = ClaimResult(
        claim=(
            "CG solves an SPD system in at most n steps; Lanczos finds the top Hessian "
            "eigenvalues; Adagrad, Adam and K-FAC precondition the same quadratic"
        ),
        stated="CG: <= n steps (= number of distinct eigenvalues); qualitative otherwise",
        measured=measured,
        verdict=verdict,
        why=why,
        data={
            "n": n,
            "cg_tol": tol,
            "cg": cgs,
            "lanczos": lz,
            "preconditioners": pc,
            "helps": helps,
            "parts": parts,
        },
    )
    return result, _figure(config, cgs, lz, pc)


def _iterations_text(iterations) -> str:
    if iterations is None:
        return "not reached"
    return f"{iterations} iteration" + ("" if iterations == 1 else "s")


def _figure(config, cgs, lz, pc):
    plt = pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(2, 2, figsize=(11, 9.5))
    ax = axes[0, 0]
    for i, (name, c) in enumerate(cgs.items()):
        color = f"C{i}"
        ax.step(c["cg_iterations"], c["tols"], where="post", color=color, label=f"CG, {name}")
        ax.semilogy(
            np.maximum(c["reorth_residuals"], 1e-17), ":", color=color, label="reorthogonalised"
        )
    ax.axvline(config.n, color="k", lw=0.8, ls="--", label=f"n = {config.n}")
    ax.set_yscale("log")
    ax.set_ylim(1e-16, 2)
    ax.set_xlabel("CG iteration k")
    ax.set_ylabel("relative residual ||r_k|| / ||b||")
    ax.set_title("CG in float64: residual vs iteration")
    ax.legend(fontsize=6.5, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.16))

    ax = axes[0, 1]
    iters = [int(m) for m in lz["by_iters"]]
    errs = [max(r["max_rel_error"], 1e-12) for r in lz["by_iters"].values()]
    ax.semilogy(iters, errs, "o-", label=f"top-{config.top_k} eigenvalues, Lanczos (float32)")
    ax.axhline(float(jnp.finfo(jnp.float32).eps), color="k", ls=":", label="float32 eps")
    ax.set_xlabel("Lanczos iterations")
    ax.set_ylabel("max relative error vs eigvalsh")
    ax.set_title(f"Hessian of a {lz['num_params']}-parameter MLP")
    ax.legend(fontsize=8)

    for ax, (kind, d) in zip(axes[1], pc.items(), strict=True):
        for i, (name, r) in enumerate(d["methods"].items()):
            curve = np.array([np.nan if v is None else v for v in r["curve"]])
            steps = np.asarray(r["curve_steps"]) + 1
            ax.semilogy(
                steps,
                np.maximum(curve, 1e-16),
                color=f"C{i}",
                ls="--" if name == "momentum" else "-",
                marker="o" if name == "kfac" else None,
                markevery=[0, 1],
                label=f"{name} (lr {r['best_lr']:.2g}): {_iterations_text(r['iterations'])}",
            )
        ax.axhline(config.quad_tol, color="k", lw=0.8, ls=":",
                   label=f"tolerance {config.quad_tol:g} (iterations to reach it)")  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("iteration + 1 (log scale)")
        ax.set_ylabel("(f - f*) / (f0 - f*)")
        ax.set_title(f"{kind} Kronecker quadratic, cond {d['cond']:.0f}")
        ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    fig.suptitle("CG, Lanczos and preconditioners")
    fig.tight_layout()
    return fig
