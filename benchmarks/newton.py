"""Newton-type minimisation: jaxnum Newton-CG and dense Newton vs scipy Newton-CG / trust-ncg,
and jaxnum's own L-BFGS, on the same problems.

Problems (float64, from the L-BFGS benchmark): Rosenbrock n=100 and n=1000
from (-1.2, 1, ...), and L2-regularised multinomial logistic regression on
scikit-learn's digits (650 parameters, from zeros). Every solver stops at the
first iterate whose gradient 2-norm is <= 1e-8 (maxiter 20000):
- jaxnum: ``minimize(fun, x0, *args, method=..., tol=1e-8, options={"ftol": 0})``, one jitted
  while_loop; "newton-cg" (truncated CG on forward-over-reverse products, LM
  damping with the default initial lambda, 1e-3 times the curvature along the
  first gradient, factors 2 / 0.5, Armijo backtracking), "newton"
  (the Hessian from n products, Cholesky; skipped for n = 1000 in --quick) and
  "lbfgs" (memory 10).
- scipy: ``minimize(method="Newton-CG" | "trust-ncg")`` on numpy callbacks in
  their fastest form: scipy's own ``rosen``/``rosen_der``/``rosen_hess_prod``
  (C-backed numpy) for Rosenbrock, a hand-written numpy value, gradient and
  Hessian-vector product for the logistic loss (checked against jax at start);
  stopped by a ``callback(intermediate_result)`` raising ``StopIteration`` when
  the gradient norm meets the rule (Newton-CG's own test is on the step, not
  the gradient). BLAS at 1 and 2 threads (threadpoolctl), the faster reported.
Counted: iterations, function evaluations (jaxnum: every call of ``fun``, the
per-iteration linearisation included, as ``nfev`` counts them; scipy: ``nfev``),
gradient evaluations, Hessian-vector products (scipy's ``nhev``; jaxnum's CG
products, n per dense Hessian).
Times are medians over interleaved rounds (benchmarks.harness.interleaved:
rotating order, a pause before each call for OpenBLAS's spinning threads),
compile excluded.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.harness import interleaved, machine_summary, write_section
from benchmarks.problems import LAMBDA, optimisation_problems, unflatten
from jaxnum.optim import minimize

TOL, MAXITER = 1e-8, 20000


def _logistic_hessp_np(v, p, X, Y, lam):
    W, b = v[:640].reshape(64, 10), v[640:]
    V, vb = p[:640].reshape(64, 10), p[640:]
    z = X @ W + b
    z -= z.max(axis=1, keepdims=True)
    P = np.exp(z)
    P /= P.sum(axis=1, keepdims=True)
    dz = X @ V + vb
    Hz = P * dz - P * np.sum(P * dz, axis=1, keepdims=True)
    Hz /= X.shape[0]
    return np.concatenate([(X.T @ Hz + lam * V).ravel(), Hz.sum(axis=0)])


def _numpy_callbacks(problem):
    import scipy.optimize as so

    if problem.name.startswith("Rosenbrock"):
        return so.rosen, so.rosen_der, so.rosen_hess_prod
    from sklearn.datasets import load_digits

    digits = load_digits()
    X, Y = digits.data / 16.0, np.eye(10)[digits.target]
    return (
        lambda v: problem.numpy_fg(v)[0],
        lambda v: problem.numpy_fg(v)[1],
        lambda v, p: _logistic_hessp_np(v, p, X, Y, LAMBDA),
    )


def _check_hessp(problem, hessp):
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        v, p = rng.normal(size=problem.flat_x0.shape) * 0.3, rng.normal(size=problem.flat_x0.shape)
        x, d = unflatten(v, problem.x0(jnp.float64)), unflatten(p, problem.x0(jnp.float64))
        args = problem.args(jnp.float64)
        ref = jax.jvp(lambda y: jax.grad(problem.fun)(y, *args), (x,), (d,))[1]
        ref = np.concatenate([np.ravel(a) for a in jax.tree.leaves(ref)])
        assert np.allclose(hessp(v, p), ref, rtol=1e-9, atol=1e-12), problem.name


def _scipy_call(problem, method, threads):
    import scipy.optimize as so
    from threadpoolctl import threadpool_limits

    f, g, hessp = _numpy_callbacks(problem)

    def stop(intermediate_result):
        if np.linalg.norm(g(intermediate_result.x)) <= TOL:
            raise StopIteration

    options = {"maxiter": MAXITER}
    options.update({"xtol": 1e-30} if method == "Newton-CG" else {"gtol": TOL})

    def call():
        with threadpool_limits(limits=threads, user_api="blas"):
            return so.minimize(
                f, problem.flat_x0.copy(), jac=g, hessp=hessp, method=method, callback=stop,
                options=options,
            )  # fmt: skip

    return call


def _row_scipy(r, problem):
    # The gradient is recomputed at the returned x: Newton-CG's ``jac`` can be stale.
    f, g, _ = _numpy_callbacks(problem)
    return dict(
        nit=int(r.nit), nfev=int(r.nfev), njev=int(r.njev), nhev=int(r.nhev),
        grad_norm=float(np.linalg.norm(g(r.x))), fun=float(f(r.x)), note=r.message,
    )  # fmt: skip


def _row_jaxnum(r):
    # Newton methods: one gradient per accepted step and at x0; L-BFGS (no
    # num_rejected or nhev in its stats) evaluates value and gradient together.
    newton = "num_rejected" in r.stats
    rejected = int(r.stats["num_rejected"]) if newton else 0
    return dict(
        nit=int(r.nit), nfev=int(r.nfev),
        njev=int(r.nit) - rejected + 1 if newton else int(r.nfev),
        nhev=int(r.stats["nhev"]) if newton else 0,
        grad_norm=float(r.grad_norm), fun=float(r.fun),
        note=r.message + (f", {rejected} steps refused" if rejected else ""),
    )  # fmt: skip


def _measure(problem, rounds, quick):
    with jax.enable_x64(True):
        x0, args = problem.x0(jnp.float64), problem.args(jnp.float64)
        calls, kinds = {}, {}
        methods = ["newton-cg", "newton", "lbfgs"]
        if quick and problem.flat_x0.size > 700:
            methods.remove("newton")
        for method in methods:
            calls[f"jaxnum {method}"] = lambda m=method: minimize(
                problem.fun, x0, *args, method=m, tol=TOL, maxiter=MAXITER, options={"ftol": 0.0}
            )
            kinds[f"jaxnum {method}"] = "jaxnum"
        for method in ("Newton-CG", "trust-ncg"):
            for threads in (1, 2):
                name = f"scipy {method} ({threads} BLAS thread{'s' if threads > 1 else ''})"
                calls[name] = _scipy_call(problem, method, threads)
                kinds[name] = "scipy"
        timed = interleaved(calls, rounds)
    rows = {}
    for name, (seconds, result) in timed.items():
        row = _row_jaxnum(result) if kinds[name] == "jaxnum" else _row_scipy(result, problem)
        rows[name] = dict(row, seconds=seconds)
    # Keep the faster BLAS setting of each scipy method.
    for method in ("Newton-CG", "trust-ncg"):
        one, two = (f"scipy {method} (1 BLAS thread)", f"scipy {method} (2 BLAS threads)")
        slower = one if rows[one]["seconds"] > rows[two]["seconds"] else two
        del rows[slower]
    return rows


def _table(problem, rows):
    lines = [
        f"**{problem.name}** (float64, stop at ||grad|| <= {TOL:g})",
        "",
        "| solver | iterations | f evals | grad evals | Hessian-vector products | "
        "||grad|| | f | time (ms) | time / jaxnum newton-cg |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = rows["jaxnum newton-cg"]["seconds"]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['nit']} | {r['nfev']} | {r['njev']} | {r['nhev']} | "
            f"{r['grad_norm']:.1e} | {r['fun']:.10g} | {1e3 * r['seconds']:.2f} | "
            f"{r['seconds'] / base:.2f} |"
        )
    lines.append("")
    notes = [f"{name}: {r['note']}" for name, r in rows.items()]
    lines += ["Status: " + "; ".join(notes), ""]
    return lines


def _summary(problem, rows):
    ours = rows["jaxnum newton-cg"]
    scipy_rows = {k: v for k, v in rows.items() if k.startswith("scipy")}
    fastest = min(scipy_rows, key=lambda k: scipy_rows[k]["seconds"])
    peers = ", ".join(f"{k.split(' (')[0]} {v['nit']} / {v['nhev']}" for k, v in scipy_rows.items())
    return (
        f"- {problem.name}: jaxnum newton-cg {ours['nit']} iterations / {ours['nhev']} "
        f"products vs {peers}; time / fastest scipy ({fastest}) = "
        f"{ours['seconds'] / scipy_rows[fastest]['seconds']:.2f}."
    )


def run(quick: bool = False) -> None:
    problems = optimisation_problems()
    for p in problems:
        _check_hessp(p, _numpy_callbacks(p)[2])
    rounds = 2 if quick else 7
    body = [
        "## newton: Newton-CG and dense Newton vs scipy Newton-CG / trust-ncg and L-BFGS",
        "",
        machine_summary(("jax", "jaxlib", "optax", "scipy")),
        "",
        __doc__.split("\n\n", 1)[1],
    ]
    summary = ["Summary (iterations / Hessian-vector products):", ""]
    for p in problems:
        rows = _measure(p, rounds, quick)
        body += _table(p, rows)
        summary.append(_summary(p, rows))
        print("\n".join(_table(p, rows)), flush=True)
    body += summary
    print("\n".join(summary))
    if not quick:
        write_section("newton", "\n".join(body))
