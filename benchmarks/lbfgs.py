"""Full-batch L-BFGS: jaxnum.optim.minimize vs scipy L-BFGS-B, optax.lbfgs and jaxopt.LBFGS.

Problems: Rosenbrock n=100 and n=1000 from (-1.2, 1, -1.2, 1, ...), and
L2-regularised multinomial logistic regression on scikit-learn's digits
(X / 16, W 64 x 10 and b 10, lambda = 1e-3, from zeros). Float64 stops at a
gradient 2-norm of 1e-6, float32 at 1e-4; every solver has memory 10 and
maxiter 20000 and stops on that same rule:
- jaxnum: ``minimize(fun, x0, *args, tol, ftol=0)``, one jitted while_loop.
- optax: ``optax.lbfgs(memory_size=10)`` (its zoom line search) in a jitted
  ``lax.while_loop`` driven the documented way (``value_and_grad_from_state``);
  evaluations = 1 + the line search's ``num_linesearch_steps`` summed.
- jaxopt: ``jaxopt.LBFGS(history_size=10, tol)`` (its default zoom search;
  its error is the gradient 2-norm), ``run`` jitted; evaluations
  ``state.num_fun_eval``.
- scipy: L-BFGS-B (``maxcor=10``, ``ftol=gtol=0``) on a numpy float64 objective
  with a hand-written gradient (checked against jax), stopped by a callback on
  the 2-norm rule; timed with BLAS at 1 and 2 threads (threadpoolctl), the
  faster reported. scipy works in float64 only, so it is timed on the float64
  problems only.
Times are medians over interleaved rounds (every solver once per round), after
a first call that compiles the jax solvers; compile time is not included.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.harness import machine_summary, write_section
from jaxnum.optim import minimize

MEMORY, MAXITER, LAMBDA = 10, 20000, 1e-3
TOL = {np.float64: 1e-6, np.float32: 1e-4}


# ---------------------------------------------------------------- problems


def rosenbrock(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def _rosenbrock_np(x):
    r = x[1:] - x[:-1] ** 2
    f = np.sum(100.0 * r**2 + (1.0 - x[:-1]) ** 2)
    g = np.zeros_like(x)
    g[:-1] = -400.0 * x[:-1] * r - 2.0 * (1.0 - x[:-1])
    g[1:] += 200.0 * r
    return f, g


def logistic(params, X, Y):
    z = X @ params["W"] + params["b"]
    nll = jnp.mean(jax.nn.logsumexp(z, axis=1) - jnp.sum(Y * z, axis=1))
    return nll + 0.5 * LAMBDA * jnp.sum(params["W"] ** 2)


def _logistic_np(v, X, Y):
    W, b = v[:640].reshape(64, 10), v[640:]
    z = X @ W + b
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    n = X.shape[0]
    f = np.mean(np.log(np.sum(np.exp(z), axis=1)) - np.sum(Y * z, axis=1))
    f += 0.5 * LAMBDA * np.sum(W**2)
    dz = (p - Y) / n
    gW = X.T @ dz + LAMBDA * W
    return f, np.concatenate([gW.ravel(), dz.sum(axis=0)])


@dataclass(frozen=True)
class Problem:
    name: str
    fun: Callable  # jax objective fun(x, *args)
    x0: Callable  # dtype -> pytree
    args: Callable  # dtype -> tuple of jax arrays
    numpy_fg: Callable  # flat float64 x -> (f, g)
    flat_x0: np.ndarray


def _problems() -> list[Problem]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = digits.data / 16.0
    Y = np.eye(10)[digits.target]
    out = []
    for n in (100, 1000):
        x0 = np.tile([-1.2, 1.0], n // 2)
        out.append(
            Problem(
                f"Rosenbrock n={n}",
                rosenbrock,
                lambda dt, x0=x0: jnp.asarray(x0, dt),
                lambda dt: (),
                _rosenbrock_np,
                x0,
            )
        )
    out.append(
        Problem(
            "digits logistic (650 params)",
            logistic,
            lambda dt: {"W": jnp.zeros((64, 10), dt), "b": jnp.zeros(10, dt)},
            lambda dt: (jnp.asarray(X, dt), jnp.asarray(Y, dt)),
            lambda v: _logistic_np(v, X, Y),
            np.zeros(650),
        )
    )
    return out


def _check_numpy_gradients(problems):
    """The hand-written numpy objectives agree with jax in float64 (scipy's inputs are right)."""
    with jax.enable_x64(True):
        for p in problems:
            v = np.random.default_rng(0).normal(size=p.flat_x0.shape) * 0.3
            f, g = p.numpy_fg(v)
            tree = p.x0(jnp.float64)
            leaves, treedef = jax.tree.flatten(tree)
            sizes = np.cumsum([x.size for x in leaves])[:-1]
            parts = np.split(v, sizes)
            x = jax.tree.unflatten(
                treedef, [a.reshape(b.shape) for a, b in zip(parts, leaves, strict=True)]
            )
            jf, jg = jax.value_and_grad(p.fun)(x, *p.args(jnp.float64))
            jg = np.concatenate([np.ravel(a) for a in jax.tree.leaves(jg)])
            assert np.isclose(f, float(jf), rtol=1e-12), p.name
            assert np.allclose(g, jg, rtol=1e-9, atol=1e-12), p.name


# ---------------------------------------------------------------- solvers


@dataclass
class Outcome:
    nit: int
    nfev: int
    fun: float
    grad_norm: float
    note: str = ""


def _norm(tree):
    return float(np.sqrt(sum(float(jnp.vdot(a, a)) for a in jax.tree.leaves(tree))))


def _jaxnum(p, dtype):
    x0, args, tol = p.x0(dtype), p.args(dtype), TOL[dtype]

    def call():
        return minimize(p.fun, x0, *args, tol=tol, ftol=0.0, maxiter=MAXITER, memory_size=MEMORY)

    def outcome(r):
        return Outcome(int(r.nit), int(r.nfev), float(r.fun), float(r.grad_norm), r.message)

    return call, outcome


def _optax(p, dtype):
    x0, args, tol = p.x0(dtype), p.args(dtype), TOL[dtype]
    opt = optax.lbfgs(memory_size=MEMORY)

    @jax.jit
    def solve(x0, args):
        def f(x):
            return p.fun(x, *args)

        value_and_grad = optax.value_and_grad_from_state(f)

        def step(carry):
            x, state, k, nfev = carry
            value, grad = value_and_grad(x, state=state)
            updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=f)
            nfev = nfev + optax.tree.get(state, "num_linesearch_steps")
            return optax.apply_updates(x, updates), state, k + 1, nfev

        def keep_going(carry):
            _, state, k, _ = carry
            grad = optax.tree.get(state, "grad")
            norm = optax.tree.norm(grad)
            return (k == 0) | ((k < MAXITER) & (norm > tol))

        carry = (x0, opt.init(x0), jnp.array(0), jnp.array(1))
        x, state, k, nfev = jax.lax.while_loop(keep_going, step, carry)
        return x, k, nfev, optax.tree.get(state, "value"), optax.tree.get(state, "grad")

    def outcome(r):
        _, k, nfev, value, grad = r
        return Outcome(int(k), int(nfev), float(value), _norm(grad))

    return (lambda: solve(x0, args)), outcome


def _jaxopt(p, dtype):
    import jaxopt

    x0, args, tol = p.x0(dtype), p.args(dtype), TOL[dtype]
    solver = jaxopt.LBFGS(fun=p.fun, maxiter=MAXITER, tol=tol, history_size=MEMORY)
    run = jax.jit(solver.run)

    def outcome(r):
        _, state = r
        return Outcome(
            int(state.iter_num), int(state.num_fun_eval), float(state.value), float(state.error)
        )

    return (lambda: run(x0, *args)), outcome


class _Stop(Exception):
    pass


def _scipy(p, threads):
    import scipy.optimize as so
    from threadpoolctl import threadpool_limits

    tol = TOL[np.float64]

    def call():
        count, last = [0], {}

        def fg(v):
            count[0] += 1
            f, g = p.numpy_fg(v)
            last["x"], last["g"] = v.copy(), g
            return f, g

        def stop_on_norm(intermediate_result):
            x = intermediate_result.x
            g = last["g"] if np.array_equal(x, last["x"]) else p.numpy_fg(x)[1]
            if np.linalg.norm(g) <= tol:
                raise StopIteration

        options = {"maxcor": MEMORY, "ftol": 0.0, "gtol": 0.0, "maxiter": MAXITER, "maxfun": 10**7}
        with threadpool_limits(limits=threads, user_api="blas"):
            res = so.minimize(
                fg, p.flat_x0, jac=True, method="L-BFGS-B", callback=stop_on_norm, options=options
            )
        return res, count[0], np.linalg.norm(p.numpy_fg(res.x)[1])

    def outcome(r):
        res, nfev, gnorm = r
        return Outcome(int(res.nit), nfev, float(res.fun), float(gnorm), str(res.message))

    return call, outcome


# ---------------------------------------------------------------- driver


def _interleaved(calls: dict[str, Callable], rounds: int) -> dict[str, tuple[float, object]]:
    """Median seconds per call over interleaved rounds, and the last result of each."""
    results = {name: jax.block_until_ready(call()) for name, call in calls.items()}  # compiles
    samples = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            results[name] = jax.block_until_ready(call())
            samples[name].append(time.perf_counter() - start)
    return {name: (statistics.median(samples[name]), results[name]) for name in calls}


def _measure(p: Problem, dtype, rounds):
    with jax.enable_x64(dtype == np.float64):
        solvers = {
            "jaxnum": _jaxnum(p, dtype),
            "optax": _optax(p, dtype),
            "jaxopt": _jaxopt(p, dtype),
        }
        if dtype == np.float64:
            solvers["scipy (1 BLAS thread)"] = _scipy(p, 1)
            solvers["scipy (2 BLAS threads)"] = _scipy(p, 2)
        timed = _interleaved({name: call for name, (call, _) in solvers.items()}, rounds)
        rows = {name: (timed[name][0], solvers[name][1](timed[name][1])) for name in solvers}
    if dtype == np.float64:  # keep the faster scipy configuration
        one, two = rows.pop("scipy (1 BLAS thread)"), rows.pop("scipy (2 BLAS threads)")
        name = "scipy (1 BLAS thread)" if one[0] <= two[0] else "scipy (2 BLAS threads)"
        rows[name] = min(one, two, key=lambda r: r[0])
    return rows


def run(quick: bool = False) -> None:
    rounds = 2 if quick else 7
    problems = _problems()
    _check_numpy_gradients(problems)
    lines = [
        "| problem | dtype | solver | iterations | evaluations | final loss | grad 2-norm "
        "| converged | median time (ms) |",
        "|---|---|---|---:|---:|---:|---:|---|---:|",
    ]
    summary = []
    for dtype in (np.float64, np.float32):
        tol = TOL[dtype]
        for p in problems:
            rows = _measure(p, dtype, rounds)
            for name, (t, o) in rows.items():
                ok = o.grad_norm <= tol
                lines.append(
                    f"| {p.name} | {np.dtype(dtype).name} | {name} | {o.nit} | {o.nfev} | "
                    f"{o.fun:.6g} | {o.grad_norm:.2e} | {'yes' if ok else 'no'} | {t * 1e3:.2f} |"
                )
            t_ours, ours = rows["jaxnum"]
            text = (
                f"{p.name}, {np.dtype(dtype).name}: "
                f"jaxnum / optax time {t_ours / rows['optax'][0]:.2f}"
            )
            scipy_name = next((k for k in rows if k.startswith("scipy")), None)
            if scipy_name:
                t_sp, sp = rows[scipy_name]
                text += (
                    f", jaxnum / scipy time {t_ours / t_sp:.2f} (target <= 0.25), "
                    f"evaluations {ours.nfev / sp.nfev:.2f}x scipy's (target <= 1.1)"
                )
            failed = [k for k, (_, o) in rows.items() if o.grad_norm > tol]
            if failed:
                text += f"; not converged: {', '.join(failed)}"
            summary.append(text)
            print(summary[-1], flush=True)
    body = "\n\n".join(
        [
            "## lbfgs: full-batch L-BFGS vs scipy L-BFGS-B, optax.lbfgs, jaxopt.LBFGS",
            f"Memory {MEMORY}, maxiter {MAXITER}; stop when the gradient 2-norm is <= 1e-6 "
            "(float64) or 1e-4 (float32), the same rule for every solver (scipy through a "
            "callback). Evaluations are value-and-gradient evaluations. Median of "
            f"{rounds} interleaved rounds after a compiling call. scipy runs a numpy float64 "
            "objective with BLAS at 1 and 2 threads (threadpoolctl), the faster shown; it has "
            "no float32 mode. OPENBLAS_* variables are not set here. Run: "
            "`python -m benchmarks lbfgs`.",
            machine_summary(
                ("jax", "jaxlib", "optax", "jaxopt", "scipy", "numpy", "threadpoolctl")
            ),
            "\n".join(lines),
            "\n".join(f"- {s}" for s in summary),
        ]
    )
    print(body)
    if not quick:
        write_section("lbfgs", body)
