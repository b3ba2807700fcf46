"""Full-batch L-BFGS: jaxnum.optim.minimize vs scipy L-BFGS-B, optax.lbfgs and jaxopt.LBFGS.

Problems: Rosenbrock n=100 and n=1000 from (-1.2, 1, -1.2, 1, ...), and
L2-regularised multinomial logistic regression on scikit-learn's digits
(X / 16, W 64 x 10 and b 10, mean cross-entropy + 0.5 * 1e-3 * ||W||^2, from
zeros). Float64 stops at a gradient 2-norm of 1e-6, float32 at 1e-4; every
solver has memory 10 and maxiter 20000 and stops on that same rule:
- jaxnum: ``minimize(fun, x0, *args, tol, options={"ftol": 0})``, one jitted while_loop;
  ``fun`` is the same module-level object on every call (one compile).
- optax: ``optax.lbfgs(memory_size=10)`` (its zoom line search) in a jitted
  ``lax.while_loop`` driven the documented way (``value_and_grad_from_state``,
  ``update(..., value=, grad=, value_fn=)``); its evaluations are 1 + the zoom
  search's ``num_linesearch_steps`` summed over iterations.
- jaxopt: ``jaxopt.LBFGS(history_size=10, tol, jit=True)`` (zoom search; its
  error is the gradient 2-norm), ``run`` under ``jax.jit``; evaluations are
  ``state.num_fun_eval``.
- scipy: L-BFGS-B (``maxcor=10``, ``ftol=gtol=0``, ``maxfun=10**6``) on a numpy
  float64 objective returning ``(f, grad)`` (``jac=True``; the gradient is
  written by hand and checked against ``jax.grad`` at start), stopped by a
  ``callback(intermediate_result)`` that raises ``StopIteration`` when the
  gradient cached at the accepted point meets the rule; evaluations counted by
  a wrapper. Timed with BLAS at 1 and 2 threads (threadpoolctl), the faster
  reported. scipy has no float32 mode: the float32 rows compare with scipy in
  float64 stopped at the float32 tolerance 1e-4.
Every jax solver (jaxnum only in --quick) is also run once, untimed, on a copy
of the objective that counts its own executions (``jax.debug.callback``): the "counted" column, a
check on each library's evaluation count. Final loss and gradient 2-norm are
recomputed at each returned x (in the run's dtype) and the float32 runs are
checked to return float32. The cost of one evaluation alone (jax's value_and_grad in a
compiled loop, numpy's (f, grad) at 1 BLAS thread) is given beside the solvers' time per
evaluation, to part objective cost from solver overhead. Times are medians
over interleaved rounds (every solver once per round, the order rotating each
round, a 0.3 s pause before each call so OpenBLAS's spinning worker threads do
not slow the next solver, then one untimed call of the same solver so that each
is timed in steady state: after the pause, a cold CPU and parked XLA worker
threads made a 4 ms jax solve take 7 ms, a handicap that falls hardest on the
shortest runs), after a first call that compiles the jax solvers; compile time
is not included.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.harness import interleaved, machine_summary, one_core, run_in_child, write_section
from benchmarks.problems import Problem, optimisation_problems, unflatten
from jaxnum.optim import minimize

MEMORY, MAXITER, MAXFUN = 10, 20000, 10**6
TOL = {np.float64: 1e-6, np.float32: 1e-4}
DTYPES = (np.float64, np.float32)
JAX_SOLVERS = ("jaxnum", "optax", "jaxopt")


def _check_numpy_gradients(problems):
    """The hand-written numpy objectives agree with jax in float64 (scipy's inputs are right)."""
    with jax.enable_x64(True):
        for p in problems:
            v = np.random.default_rng(0).normal(size=p.flat_x0.shape) * 0.3
            f, g = p.numpy_fg(v)
            jf, jg = jax.value_and_grad(p.fun)(
                unflatten(v, p.x0(jnp.float64)), *p.args(jnp.float64)
            )
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
    x: object  # the returned point (pytree for jax solvers, flat float64 for scipy)
    note: str = ""


def _norm(tree):
    return float(np.sqrt(sum(float(jnp.vdot(a, a)) for a in jax.tree.leaves(tree))))


def _jaxnum(fun, p, dtype):
    x0, args, tol = p.x0(dtype), p.args(dtype), TOL[dtype]

    def call():
        options = {"ftol": 0.0, "memory_size": MEMORY}
        return minimize(fun, x0, *args, tol=tol, maxiter=MAXITER, options=options)

    def outcome(r):
        note = f"{r.message}; success={bool(r.success)}"
        extras = {
            "line-search failures": int(r.stats["num_linesearch_failures"]),
            "memory resets": int(r.stats["num_resets"]),
            "non-finite trials": int(r.stats["num_nonfinite"]),
        }
        note += "".join(f", {k} {v}" for k, v in extras.items() if v)
        return Outcome(int(r.nit), int(r.nfev), float(r.fun), float(r.grad_norm), r.x, note)

    return call, outcome


def _optax(fun, p, dtype):
    x0, args, tol = p.x0(dtype), p.args(dtype), TOL[dtype]
    opt = optax.lbfgs(memory_size=MEMORY)

    @jax.jit
    def solve(x0, args):
        def f(x):
            return fun(x, *args)

        value_and_grad = optax.value_and_grad_from_state(f)

        def step(carry):
            x, state, k, nfev = carry
            value, grad = value_and_grad(x, state=state)
            updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=f)
            nfev = nfev + optax.tree.get(state, "num_linesearch_steps")
            return optax.apply_updates(x, updates), state, k + 1, nfev

        def keep_going(carry):
            _, state, k, _ = carry
            norm = optax.tree.norm(optax.tree.get(state, "grad"))
            return (k == 0) | ((k < MAXITER) & (norm > tol))

        carry = (x0, opt.init(x0), jnp.array(0), jnp.array(1))
        x, state, k, nfev = jax.lax.while_loop(keep_going, step, carry)
        return x, k, nfev, optax.tree.get(state, "value"), optax.tree.get(state, "grad")

    def outcome(r):
        x, k, nfev, value, grad = r
        return Outcome(int(k), int(nfev), float(value), _norm(grad), x)

    return (lambda: solve(x0, args)), outcome


def _jaxopt(fun, p, dtype):
    import jaxopt

    x0, args, tol = p.x0(dtype), p.args(dtype), TOL[dtype]
    solver = jaxopt.LBFGS(fun=fun, maxiter=MAXITER, tol=tol, history_size=MEMORY, jit=True)
    run = jax.jit(solver.run)

    def outcome(r):
        x, state = r
        note = "line search failed at the last step" if bool(state.failed_linesearch) else ""
        return Outcome(
            int(state.iter_num),
            int(state.num_fun_eval),
            float(state.value),
            float(state.error),
            x,
            note,
        )

    return (lambda: run(x0, *args)), outcome


def _scipy(p, tol, threads):
    import scipy.optimize as so
    from threadpoolctl import threadpool_limits

    options = {"maxcor": MEMORY, "ftol": 0.0, "gtol": 0.0, "maxiter": MAXITER, "maxfun": MAXFUN}

    def call():
        count, last, misses = [0], {}, [0]

        def fg(v):
            count[0] += 1
            f, g = p.numpy_fg(v)
            last["x"], last["g"] = v.copy(), g
            return f, g

        def stop_on_norm(intermediate_result):
            x = intermediate_result.x
            if np.array_equal(x, last["x"]):
                g = last["g"]
            else:  # not expected: L-BFGS-B's accepted point is its last evaluation
                misses[0] += 1
                g = p.numpy_fg(x)[1]
            if np.linalg.norm(g) <= tol:
                raise StopIteration

        with threadpool_limits(limits=threads, user_api="blas"):
            res = so.minimize(
                fg, p.flat_x0, jac=True, method="L-BFGS-B", callback=stop_on_norm, options=options
            )
        return res, count[0], misses[0]

    def outcome(r):
        res, nfev, misses = r
        note = f"{res.message}" + (f"; {misses} callback points not cached" if misses else "")
        gnorm = np.linalg.norm(p.numpy_fg(res.x)[1])
        return Outcome(int(res.nit), nfev, float(res.fun), float(gnorm), res.x, note)

    return call, outcome


def _counting(fun, counter):
    """``fun`` that adds 1 to ``counter[0]`` each time an evaluation is executed."""

    def tick():
        counter[0] += 1

    def counted(x, *args):
        jax.debug.callback(tick)
        return fun(x, *args)

    return counted


def _counted_evaluations(p, dtype, names):
    """Executions of the objective per jax solver in ``names``, from one untimed run each."""
    counts = {}
    for name, factory in zip(JAX_SOLVERS, (_jaxnum, _optax, _jaxopt), strict=True):
        if name not in names:
            continue
        counter = [0]
        call, _ = factory(_counting(p.fun, counter), p, dtype)
        jax.block_until_ready(call())
        jax.effects_barrier()
        counts[name] = counter[0]
    return counts


def _evaluation_floor(p, dtype, rounds):
    """Seconds per objective evaluation with no solver around it: jax's value_and_grad in a
    compiled loop of 100 dependent calls (in the run's dtype), numpy's float64 (f, grad) at
    1 BLAS thread."""
    from threadpoolctl import threadpool_limits

    args, calls = p.args(dtype), 100

    @jax.jit
    def chain(x):
        def body(_, x):
            _, g = jax.value_and_grad(p.fun)(x, *args)
            return jax.tree.map(lambda a, b: a - 1e-9 * b, x, g)

        return jax.lax.fori_loop(0, calls, body, x)

    x0 = p.x0(dtype)
    jax.block_until_ready(chain(x0))
    t_jax, t_np = [], []
    with threadpool_limits(limits=1, user_api="blas"):
        for _ in range(max(rounds, 3)):
            start = time.perf_counter()
            jax.block_until_ready(chain(x0))
            t_jax.append((time.perf_counter() - start) / calls)
            start = time.perf_counter()
            for _ in range(calls):
                p.numpy_fg(p.flat_x0)
            t_np.append((time.perf_counter() - start) / calls)
    return statistics.median(t_jax), statistics.median(t_np)


# ---------------------------------------------------------------- driver


def _recheck(p, dtype, o: Outcome):
    """Loss and gradient 2-norm recomputed at the returned point, in the run's dtype."""
    if isinstance(o.x, np.ndarray):
        f, g = p.numpy_fg(o.x)
        return float(f), float(np.linalg.norm(g))
    assert all(a.dtype == dtype for a in jax.tree.leaves(o.x)), (p.name, dtype)
    f, g = jax.value_and_grad(p.fun)(o.x, *p.args(dtype))
    return float(f), _norm(g)


@dataclass
class Row:
    solver: str
    time_s: float
    out: Outcome
    counted: int | None
    recheck: tuple[float, float]
    run_on: str = "2 cores"  # or "1 core": the faster of the two runs


def _solvers(p: Problem, dtype, scipy_threads: tuple[int, ...]) -> dict:
    """name -> (call, outcome) for every jax solver and scipy at each BLAS thread count."""
    solvers = {
        name: f(p.fun, p, dtype)
        for name, f in zip(JAX_SOLVERS, (_jaxnum, _optax, _jaxopt), strict=True)
    }
    for threads in scipy_threads:
        solvers[f"scipy {threads}"] = _scipy(p, TOL[dtype], threads)
    return solvers


def _key(p: Problem, dtype, solver: str) -> str:
    return f"{p.name}|{np.dtype(dtype).name}|{solver}"


def one_core_times(rounds: int) -> dict[str, float]:
    """Median seconds per solve of every problem, dtype and solver, timed in this process.

    Run by :func:`benchmarks.harness.run_in_child` in a child pinned to one
    core. scipy at 1 BLAS thread only: two threads on one core just take turns.
    """
    times = {}
    for dtype in DTYPES:
        for p in optimisation_problems():
            with jax.enable_x64(dtype == np.float64):
                solvers = _solvers(p, dtype, (1,))
                timed = interleaved({name: call for name, (call, _) in solvers.items()}, rounds)
            times.update({_key(p, dtype, name): t for name, (t, _) in timed.items()})
    return times


def _measure(p: Problem, dtype, rounds, count: tuple[str, ...], pinned: dict | None):
    """Every solver on ``p``: outcome from this process, time the faster of this process
    (both cores) and ``pinned`` (one core; None when there is no such run)."""
    with jax.enable_x64(dtype == np.float64):
        solvers = _solvers(p, dtype, (1, 2))
        timed = interleaved({name: call for name, (call, _) in solvers.items()}, rounds)
        counted = _counted_evaluations(p, dtype, count)
        floor = _evaluation_floor(p, dtype, rounds)
        rows = {}
        for name, (_, outcome) in solvers.items():
            out = outcome(timed[name][1])
            rows[name] = Row(name, timed[name][0], out, counted.get(name), _recheck(p, dtype, out))
            pinned_s = (pinned or {}).get(_key(p, dtype, name))
            if pinned_s is not None and pinned_s < rows[name].time_s:
                rows[name].time_s, rows[name].run_on = pinned_s, "1 core"
    one, two = rows.pop("scipy 1"), rows.pop("scipy 2")
    best, threads = (one, 1) if one.time_s <= two.time_s else (two, 2)
    best.solver = f"scipy L-BFGS-B (float64, {threads} BLAS thread{'s' * (threads > 1)})"
    rows["scipy"] = best
    return rows, floor


def _table_lines(p, dtype, rows):
    tol = TOL[dtype]
    sp, ox = rows["scipy"], rows["optax"]
    lines = []
    for key in (*JAX_SOLVERS, "scipy"):
        r = rows[key]
        counted = "" if r.counted is None else str(r.counted)
        lines.append(
            f"| {p.name} | {np.dtype(dtype).name} | {r.solver} | {r.out.nit} | {r.out.nfev} | "
            f"{counted} | {r.out.fun:.9g} | {r.out.grad_norm:.2e} | "
            f"{'yes' if r.out.grad_norm <= tol else 'no'} | {r.run_on} | "
            f"{r.time_s * 1e3:.2f} | "
            f"{r.time_s / r.out.nfev * 1e6:.1f} | "
            f"{r.out.nfev / sp.out.nfev:.2f} | {r.time_s / sp.time_s:.3f} | "
            f"{r.time_s / ox.time_s:.2f} |"
        )
    return lines


def _summary(p, dtype, rows, floor):
    """One line on the issue's targets for this problem, and every solver's non-convergence."""
    tol = TOL[dtype]
    ours, sp, ox = rows["jaxnum"], rows["scipy"], rows["optax"]
    ok = {k: r.out.grad_norm <= tol for k, r in rows.items()}
    evals, vs_scipy, vs_optax = (
        ours.out.nfev / sp.out.nfev,
        ours.time_s / sp.time_s,
        ours.time_s / ox.time_s,
    )

    def mark(met):
        return "met" if met else "MISSED"

    text = (
        f"{p.name}, {np.dtype(dtype).name}: evaluations {evals:.2f}x scipy's "
        f"(target <= 1.1: {mark(evals <= 1.1)}); time {vs_scipy:.3f}x scipy's (target <= 0.25: "
        f"{mark(vs_scipy <= 0.25)}); time {vs_optax:.2f}x optax's (target <= 1: "
        f"{mark(vs_optax <= 1)})"
    )
    if dtype == np.float32:
        peers = [k for k in rows if k != "jaxnum" and ok[k]]
        text += (
            f"; converges where a peer does ({', '.join(peers) or 'none'}): "
            f"{mark(ok['jaxnum'] or not peers)}"
        )
    failed = [f"{rows[k].solver} ({rows[k].out.note or 'no message'})" for k in rows if not ok[k]]
    if failed:
        text += "; not converged: " + "; ".join(failed)
    t_jax, t_np = floor
    alone = ours.out.nfev * t_jax / sp.time_s
    return text + (
        f". One evaluation alone: jax {t_jax * 1e6:.1f} us (in a compiled loop), numpy "
        f"{t_np * 1e6:.1f} us; jaxnum's {ours.out.nfev} evaluations alone, with no solver, "
        f"take {alone:.3f}x scipy's time"
        + (
            " (so no solver using as many evaluations of this objective can reach 0.25x)"
            if alone > 0.25
            else ""
        )
    )


def _observations(p, dtype, rows):
    """Places where a reported figure disagrees with the independent check."""
    notes = []
    tol = TOL[dtype]
    for r in rows.values():
        f, gnorm = r.recheck
        where = f"{p.name} {np.dtype(dtype).name} {r.solver}"
        if r.counted is not None and r.counted != r.out.nfev:
            notes.append(
                f"{where}: reports {r.out.nfev} evaluations, the objective ran {r.counted}"
            )
        # The same formula at the same x, evaluated in a different program: allow rounding.
        if abs(f - r.out.fun) > 16 * np.finfo(dtype).eps * max(abs(f), 1.0):
            notes.append(f"{where}: reports loss {r.out.fun:.9g}, at its x it is {f:.9g}")
        if (gnorm <= tol) != (r.out.grad_norm <= tol):
            notes.append(
                f"{where}: reports grad norm {r.out.grad_norm:.3e}, at its x it is {gnorm:.3e}"
            )
    ours = rows["jaxnum"].out
    if ("success=True" in ours.note) != (ours.grad_norm <= tol):
        notes.append(
            f"{p.name} {np.dtype(dtype).name} jaxnum: {ours.note}, grad norm {ours.grad_norm:.3e}"
        )
    return notes


def run(quick: bool = False) -> None:
    rounds = 2 if quick else 7
    count = ("jaxnum",) if quick else JAX_SOLVERS  # each counted run is one more compile
    problems = optimisation_problems()
    _check_numpy_gradients(problems)
    lines = [
        "| problem | dtype | solver | iterations | evaluations | counted | final loss "
        "| grad 2-norm | converged | run on | median time (ms) | us per evaluation "
        "| evaluations / scipy | time / scipy | time / optax |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    summary, observations = [], []
    pinned = (
        run_in_child("benchmarks.lbfgs:one_core_times", rounds, pin_one_core=True)
        if one_core() is not None
        else None
    )
    for dtype in DTYPES:
        for p in problems:
            rows, floor = _measure(p, dtype, rounds, count, pinned)
            lines += _table_lines(p, dtype, rows)
            summary.append(_summary(p, dtype, rows, floor))
            observations += _observations(p, dtype, rows)
            print("\n".join([*lines[-4:], summary[-1]]), flush=True)
    body = "\n\n".join(
        [
            "## lbfgs: full-batch L-BFGS vs scipy L-BFGS-B, optax.lbfgs, jaxopt.LBFGS",
            f"Memory {MEMORY}, maxiter {MAXITER}; every solver stops when the gradient 2-norm "
            "is <= 1e-6 (float64) or <= 1e-4 (float32) (scipy through a callback; jaxnum with "
            "ftol=0). Evaluations are objective evaluations as each library counts them "
            '(optax: 1 + its zoom search\'s steps; scipy: a counting wrapper); "counted" is '
            "how often the objective actually ran (jax.debug.callback, separate untimed run; "
            f'{", ".join(count)} only in --quick). "us per evaluation" is median time / '
            "evaluations: objective plus solver overhead; each summary line gives the objective "
            "alone. "
            f"Median of {rounds} interleaved rounds after a compiling call; each timed call "
            "follows a 0.3 s pause (OpenBLAS's spinning threads) and an untimed call of the "
            "same solver (steady state). scipy runs a numpy "
            "float64 objective with BLAS at 1 and 2 threads (threadpoolctl), the faster shown "
            "and named; it has no float32 mode, so the float32 rows compare with scipy in "
            "float64 stopped at 1e-4. Every solver is timed twice, the faster kept and named "
            '("run on"): in this process on both cores, and in a child process pinned to one '
            "core (all its threads included; `harness.run_in_child`, scipy at 1 BLAS "
            "thread there). On 2 cores XLA:CPU spreads a loop of small operations over both "
            "cores (the second spins, waiting for work) and some processes ran the same solve "
            "up to 2x slower than others (Rosenbrock n=1000: 74 or 120 ms, n=100: 3.7 or 7 ms); "
            + ("pinned, it did not." if pinned else "no pinned run here (needs Linux and 2 cores).")
            + " Targets (issue): "
            "evaluations <= 1.1x scipy on every problem; time <= 0.25x scipy and <= optax; in "
            "float32, converge wherever a peer converges. Run: `python -m benchmarks lbfgs`.",
            machine_summary(
                ("jax", "jaxlib", "optax", "jaxopt", "scipy", "numpy", "threadpoolctl")
            ),
            "\n".join(lines),
            "\n".join(f"- {s}" for s in summary),
            "Checks (reported figures vs recomputed): "
            + ("; ".join(observations) if observations else "all agree."),
        ]
    )
    print(body)
    if not quick:
        write_section("lbfgs", body)
