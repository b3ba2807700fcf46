"""Randomized SVD: jaxnum vs scikit-learn's randomized_svd and the exact SVD.

Problems (rank 50, oversample 10, 4 power iterations for every method):
- ``decaying``: 2000 x 2000, singular values 0.97**i;
- ``lowrank+noise``: 4000 x 1000, rank 50 signal plus 1e-3 Gaussian noise;
in float32 and float64. Reported per problem: median time, the relative
spectral error ``||A - U S Vt||_2 / sigma_1`` (against the optimum ``sigma_51 /
sigma_1``) and the largest relative error of the top 50 singular values
(medians over 21 and 101 independent random test matrices per method: from draw
to draw the top-50 error spans a factor of ten; a one-sided Mann-Whitney test
says whether jaxnum's are larger than a peer's), and the time in units of the
flop-bound limit: the 2q + 2 = 10 dense products with an n x 60 block that the
algorithm cannot avoid, timed in the same run with jax. scikit-learn runs with
its default power-iteration normaliser (LU for 4 iterations) and with OpenBLAS
at 1 and at 2 threads (threadpoolctl); torch.svd_lowrank, when torch is
installed (optional), at 1 and 2 threads; the faster of each is reported, and
which it was. jaxnum too is timed with the process's BLAS at 1 and 2 threads:
XLA's LU/QR/SVD go through it, and with 2 OpenBLAS threads those calls fight
XLA's own pool on 2 cores. A last row: a 4096 x 4096 matrix at rank 16 against
the full ``jnp.linalg.svd``.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.harness import (
    compile_jitted,
    compiled_costs,
    cost_table,
    machine_summary,
    run_in_child,
    write_section,
)
from jaxnum.linalg import randomized_svd

RANK, OVERSAMPLE, POWER_ITERS = 50, 10, 4
SEEDS = 101  # random test matrices per method; the top-50 error is the median over them
SPECTRAL_SEEDS = 21  # the first draws, for the (costlier) spectral error


def _problems(rng):
    U, _ = np.linalg.qr(rng.normal(size=(2000, 2000)))
    V, _ = np.linalg.qr(rng.normal(size=(2000, 2000)))
    decaying = (U * 0.97 ** np.arange(2000)) @ V.T
    L = rng.normal(size=(4000, RANK)) @ rng.normal(size=(RANK, 1000)) / 30
    noisy = L + 1e-3 * rng.normal(size=(4000, 1000))
    return {"decaying 2000x2000": decaying, "lowrank+noise 4000x1000": noisy}


def _median_time(fn, rounds):
    fn()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _torch_setup() -> str:
    try:
        import torch
    except ImportError:
        return "torch is not installed here (optional: `pip install torch`)."
    return f"torch {torch.__version__}."


def _top_error(s64, S):
    S = np.asarray(S, np.float64)
    return np.max(np.abs(S - s64[:RANK]) / s64[:RANK])


def _errors(A64, s64, U, S, Vt):
    from scipy.sparse.linalg import svds

    U, S, Vt = (np.asarray(x, np.float64) for x in (U, S, Vt))
    residual = A64 - (U * S) @ Vt  # its largest singular value by Lanczos, not a full SVD
    spectral = svds(residual, k=1, return_singular_vectors=False, tol=1e-10)[0] / s64[0]
    return spectral, _top_error(s64, S)


def _median_errors(A64, s64, results):
    """Median spectral error (first SPECTRAL_SEEDS draws) and top-k error (all draws),
    and every draw's top-k error (for the rank-sum comparison)."""
    spectral = [_errors(A64, s64, *r)[0] for r in results[:SPECTRAL_SEEDS]]
    top = np.array([_top_error(s64, r[1]) for r in results])
    return float(np.median(spectral)), float(np.median(top)), top


def _sklearn(A, rounds):
    from sklearn.utils.extmath import randomized_svd as sk_rsvd
    from threadpoolctl import threadpool_limits

    best = None
    for threads in (1, 2):
        with threadpool_limits(limits=threads, user_api="blas"):
            t = _median_time(
                lambda: sk_rsvd(
                    A, RANK, n_oversamples=OVERSAMPLE, n_iter=POWER_ITERS, random_state=0
                ),
                rounds,
            )
            if best is None or t < best[0]:
                best = (t, threads)
    results = [
        sk_rsvd(A, RANK, n_oversamples=OVERSAMPLE, n_iter=POWER_ITERS, random_state=seed)
        for seed in range(SEEDS)
    ]
    return (*best, results)


def plain_process_time(path: str, dtype: str, who: str, rounds: int) -> float:
    """Median seconds of one call in this process as users have it: no threadpoolctl
    limit, jax's and numpy's default threads. Run in a fresh child per call
    (:func:`benchmarks.harness.run_in_child`); ``who`` is ``"jaxnum"`` (its default
    normaliser), ``"jaxnum lu"`` (the previous default) or ``"scikit-learn"``."""
    A64 = np.load(path)
    if who == "scikit-learn":
        from sklearn.utils.extmath import randomized_svd as sk_rsvd

        A = np.asarray(A64, dtype)
        return _median_time(
            lambda: sk_rsvd(A, RANK, n_oversamples=OVERSAMPLE, n_iter=POWER_ITERS, random_state=0),
            rounds,
        )
    normalizer = {"jaxnum": "cholesky_qr", "jaxnum lu": "lu"}[who]
    with jax.enable_x64(dtype == "float64"):
        A = jnp.asarray(A64, dtype)
        ours = jax.jit(
            lambda a, key: randomized_svd(
                a,
                RANK,
                key=key,
                oversample=OVERSAMPLE,
                power_iters=POWER_ITERS,
                normalizer=normalizer,
            )
        )
        return _median_time(lambda: ours(A, jax.random.key(0)), rounds)


PLAIN_WHO = ("jaxnum", "jaxnum lu", "scikit-learn")


def _plain_process_rows(problems, rounds, children):
    """Median over ``children`` fresh processes of each one's median time, per problem,
    dtype and method, the processes of the methods interleaved."""
    import tempfile

    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, A64 in problems.items():
            path = f"{tmp}/{len(times)}.npy"
            np.save(path, A64)
            for dtype in ("float32", "float64"):
                samples = {who: [] for who in PLAIN_WHO}
                for _ in range(children):
                    for who in PLAIN_WHO:
                        samples[who].append(
                            run_in_child(
                                "benchmarks.rsvd:plain_process_time", path, dtype, who, rounds
                            )
                        )
                times[name, dtype] = {w: statistics.median(t) for w, t in samples.items()}
    return times


def _normaliser_costs():
    """Compiled cost of the 2000 x 2000 float64 rank-50 call per normaliser."""
    A = np.random.default_rng(1).normal(size=(2000, 2000))
    costs = {}
    with jax.enable_x64(True):
        A = jnp.asarray(A)
        for normalizer in ("cholesky_qr", "lu", "qr"):
            costs[normalizer] = compiled_costs(
                lambda a, n=normalizer: randomized_svd(
                    a,
                    RANK,
                    key=jax.random.key(0),
                    oversample=OVERSAMPLE,
                    power_iters=POWER_ITERS,
                    normalizer=n,
                ),
                A,
            )
    return costs


def _products_chain(a, block):
    """The 2q + 2 dense products of the algorithm, each depending on the last (no CSE)."""
    y = a @ block
    for _ in range(POWER_ITERS):
        y = a @ (a.T @ y)
    return a.T @ y


def _torch(A, rounds):
    """torch.svd_lowrank (q = rank + oversample, niter = power iterations), best of 1/2 threads."""
    try:
        import torch
    except ImportError:
        return None
    At = torch.from_numpy(A)
    best = None
    saved = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            torch.manual_seed(0)

            def call():
                return torch.svd_lowrank(At, q=RANK + OVERSAMPLE, niter=POWER_ITERS)

            t = _median_time(call, rounds)
            if best is None or t < best[0]:
                best = (t, threads)
        results = []
        for seed in range(SEEDS):
            torch.manual_seed(seed)
            U, S, V = call()
            results.append((U[:, :RANK].numpy(), S[:RANK].numpy(), V[:, :RANK].T.numpy()))
    finally:
        torch.set_num_threads(saved)
    return (*best, results)


def _fastest_blas_threads(fn, rounds):
    """Median time of fn with the process's BLAS (which XLA's LAPACK calls use) at 1 and 2
    threads; the faster and its thread count."""
    from threadpoolctl import threadpool_limits

    best = None
    for threads in (1, 2):
        with threadpool_limits(limits=threads, user_api="blas"):
            t = _median_time(fn, rounds)
        if best is None or t < best[0]:
            best = (t, threads)
    return best


def _measure(A64, s64, dtype, rounds, rng):
    """Times jaxnum, the flop-bound products and scikit-learn on one problem and dtype."""
    with jax.enable_x64(dtype == np.float64):
        A = jnp.asarray(A64, dtype)
        block = jnp.asarray(rng.normal(size=(A.shape[1], RANK + OVERSAMPLE)), dtype)
        products, _ = compile_jitted(_products_chain, A, block)
        t_bound = _median_time(lambda: products(A, block), rounds)
        ours = jax.jit(
            lambda a, key: randomized_svd(
                a, RANK, key=key, oversample=OVERSAMPLE, power_iters=POWER_ITERS
            )
        )
        key0 = jax.random.key(0)
        t_ours, threads_ours = _fastest_blas_threads(lambda: ours(A, key0), rounds)
        err_ours = _median_errors(
            A64, s64, [ours(A, jax.random.key(seed)) for seed in range(SEEDS)]
        )
    t_sk, threads, res_sk = _sklearn(np.asarray(A64, dtype), rounds)
    torch_result = _torch(np.asarray(A64, dtype), rounds)
    if torch_result is not None:
        t_t, threads_t, res_t = torch_result
        torch_result = (t_t, threads_t, _median_errors(A64, s64, res_t))
    return (
        t_bound,
        (t_ours, threads_ours, err_ours),
        (t_sk, threads, _median_errors(A64, s64, res_sk)),
        torch_result,
    )


def run(quick: bool = False) -> None:
    from scipy.stats import mannwhitneyu

    # Load the LAPACK that XLA's CPU kernels call before any threadpool_limits block:
    # threadpoolctl only limits libraries already loaded when the block is entered.
    jax.block_until_ready(jnp.linalg.svd(jnp.eye(4)))
    rounds = 3 if quick else 11
    rng = np.random.default_rng(0)
    lines = [
        "| problem | dtype | method | median (ms) | in flop-bound units | spectral error "
        f"(optimum), median of {SPECTRAL_SEEDS} draws | top-50 max rel. error, median of "
        f"{SEEDS} draws |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    summary = []
    problems = _problems(rng)
    plain = _plain_process_rows(problems, rounds, 1 if quick else 3)
    plain_lines = [
        "| problem | dtype | jaxnum (cholesky_qr, default) ms | jaxnum (lu, the previous "
        "default) ms | scikit-learn ms | jaxnum / scikit-learn |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for (name, dtype), t in plain.items():
        plain_lines.append(
            f"| {name} | {dtype} | {t['jaxnum'] * 1e3:.1f} | {t['jaxnum lu'] * 1e3:.1f} | "
            f"{t['scikit-learn'] * 1e3:.1f} | {t['jaxnum'] / t['scikit-learn']:.2f} |"
        )
    costs = _normaliser_costs()
    for name, A64 in problems.items():
        s64 = np.linalg.svd(A64, compute_uv=False)
        optimum = s64[RANK] / s64[0]
        for dtype in (np.float32, np.float64):
            t_bound, (t_ours, threads_ours, err_ours), (t_sk, threads, err_sk), torch_result = (
                _measure(A64, s64, dtype, rounds, rng)
            )
            sk_name = f"scikit-learn ({threads} BLAS thread{'s' * (threads > 1)})"
            ours_name = f"jaxnum ({threads_ours} BLAS thread{'s' * (threads_ours > 1)})"
            rows = [(ours_name, t_ours, err_ours), (sk_name, t_sk, err_sk)]
            if torch_result is not None:
                t_t, threads_t, err_t = torch_result
                rows.append(
                    (f"torch.svd_lowrank ({threads_t} thread{'s' * (threads_t > 1)})", t_t, err_t)
                )
            for method, t, err in rows:
                lines.append(
                    f"| {name} | {np.dtype(dtype).name} | {method} | {t * 1e3:.1f} | "
                    f"{t / t_bound:.2f} | {err[0]:.3e} ({optimum:.3e}) | {err[1]:.1e} |"
                )
            summary.append(
                f"{name} {np.dtype(dtype).name}: jaxnum / scikit-learn = {t_ours / t_sk:.2f} "
                f"(target <= 0.7), jaxnum / flop bound = {t_ours / t_bound:.2f} (target <= 1.6), "
                f"scikit-learn / flop bound = {t_sk / t_bound:.2f}"
                + (
                    ""
                    if torch_result is None
                    else f", jaxnum / torch.svd_lowrank = {t_ours / torch_result[0]:.2f} "
                    "(target <= 1)"
                )
                + "; errors, jaxnum / peer (target: equal or better): "
                + ", ".join(
                    f"{peer} spectral {err_ours[0] / err[0]:.3f}, top-50 median "
                    f"{err_ours[1] / err[1]:.2f} (one-sided rank-sum p that jaxnum's are larger: "
                    f"{mannwhitneyu(err_ours[2], err[2], alternative='greater').pvalue:.2f})"
                    for peer, err in [("scikit-learn", err_sk)]
                    + ([("torch", torch_result[2])] if torch_result is not None else [])
                )
            )
    big = jnp.asarray(rng.normal(size=(4096, 4096)), jnp.float32)
    full = jax.jit(lambda a: jnp.linalg.svd(a, full_matrices=False))
    small = jax.jit(lambda a: randomized_svd(a, 16, key=jax.random.key(0)))
    t_full = _median_time(lambda: full(big), 1 if quick else 3)
    t_small, _ = _fastest_blas_threads(lambda: small(big), rounds)
    summary.append(
        f"4096x4096 float32, rank 16: full jnp.linalg.svd {t_full:.2f} s, randomized_svd "
        f"{t_small * 1e3:.1f} ms: {t_full / t_small:.0f}x faster (target >= 20x)"
    )
    body = "\n\n".join(
        [
            "## rsvd: randomized SVD vs scikit-learn and the exact SVD",
            "### In a plain process (what users run)\n\n"
            "Each call timed in fresh processes with no thread limit (jax's and numpy's "
            f"defaults), median over {1 if quick else 3} processes of each one's median of "
            f"{rounds} calls; the methods' processes interleaved.",
            "\n".join(plain_lines),
            "Compiled cost of the 2000 x 2000 float64 rank-50 call per normaliser (XLA's "
            "`cost_analysis()`; LAPACK custom calls such as LU and Householder QR count no "
            "flops there, so the flops of the `lu` and `qr` rows are lower bounds):",
            cost_table(costs, "lu"),
            "### With the process's BLAS limited (threadpoolctl), the faster of 1 and 2 threads",
            f"Rank {RANK}, oversample {OVERSAMPLE}, {POWER_ITERS} power iterations for both; "
            "median of timed calls after warm-up (jax compiled before timing). scikit-learn's "
            "default normaliser; BLAS threads 1 and 2 tried, the faster shown. "
            f"{_torch_setup()} Run: `python -m benchmarks rsvd`.",
            machine_summary(("jax", "jaxlib", "numpy", "scikit-learn", "threadpoolctl")),
            "\n".join(lines),
            "\n".join(f"- {s}" for s in summary),
        ]
    )
    print(body)
    if not quick:
        write_section("rsvd", body)
