"""Cost of Hessian-vector products against the gradient, and against the explicit Hessian.

Part 1: an MLP loss with about 1.07M parameters (784-1024-256-10, batch 128,
softmax cross-entropy): f, grad, ``jn.autodiff.hvp`` in each mode, and plain
jax forward-over-reverse (``jax.jvp(jax.grad(f))``), as ratios to grad.
Part 2: 10 sequential products (power iteration, each direction depending on
the last, in a ``lax.fori_loop``) through ``hvp_fn`` (linearized once, outside
the loop) against ``hvp`` called in the loop body.
Part 2b: 10 products driven from Python, each a compiled call: ``hvp`` each
time against ``hvp_fn`` (one compiled linearization, then one compiled linear
product each time), the linearization included in the time; for independent
directions (every result kept, or each dropped once computed) and for chained
ones (each result the next direction), in fresh processes, with glibc's malloc
as it comes and told to keep freed memory; the
speed-up XLA's flop counts of the three programs allow at equal speed per flop,
and how many dots of each program XLA:CPU leaves to its slower unfused kernel.
Part 3: one hvp against the explicit ``jax.hessian`` of
``f(x) = sum(tanh(A x))`` as n grows (the O(n) vs O(n**2) claim).
"""

from __future__ import annotations

import re
import statistics

import jax
import jax.numpy as jnp

from benchmarks.harness import (
    KEEP_FREED_MEMORY,
    compare,
    compare_python,
    machine_summary,
    ratio_table,
    run_in_child,
    write_section,
)
from benchmarks.problems import CLASSES as OUT
from benchmarks.problems import IN_FEATURES as IN
from benchmarks.problems import mlp_classification
from jaxnum.autodiff import hvp, hvp_fn
from jaxnum.autodiff.hessian_vector import _apply_linear, _gradient_vjp  # hvp_fn's programs

BATCH, HIDDEN = 128, (1024, 256)
NUM_PRODUCTS = 10
PROCESSES = 3  # fresh processes per allocator setting in part 2b
ALLOCATORS = {"default": {}, "keep freed memory": KEEP_FREED_MEMORY}
ALLOCATOR_NOTE = " ".join(f"{k}={v}" for k, v in KEEP_FREED_MEMORY.items())
PATTERNS = {  # part 2b's ways to drive 10 products: name -> (hvp's key, hvp_fn's key)
    "independent, results kept": ("hvp kept", "hvp_fn kept"),
    "independent, each result dropped": ("hvp dropped", "hvp_fn dropped"),
    "chained": ("hvp chained", "hvp_fn chained"),
}
SIZES = (64, 128, 256, 512, 1024)


def _mlp_problem():
    params, loss = mlp_classification(BATCH, HIDDEN, jnp.tanh)
    kv = jax.random.key(1)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(kv, len(leaves))
    v = treedef.unflatten(
        [jax.random.normal(k, p.shape) for k, p in zip(keys, leaves, strict=True)]
    )
    return loss, params, v


def _part1(rounds):
    loss, params, v = _mlp_problem()
    n = sum(p.size for p in jax.tree.leaves(params))
    variants = {
        "f": (loss, (params,)),
        "grad": (jax.grad(loss), (params,)),
        "jax jvp(grad)": (lambda p, d: jax.jvp(jax.grad(loss), (p,), (d,))[1], (params, v)),
    }
    for mode in ("fwd-rev", "rev-rev", "rev-fwd"):
        variants[f"hvp {mode}"] = (lambda p, d, m=mode: hvp(loss, p, d, mode=m), (params, v))
    timings = compare(variants, rounds=rounds, calls_per_round=5)
    return n, timings


def _part2(rounds):
    loss, params, v = _mlp_problem()
    vs = [jax.tree.map(lambda a, i=i: a * (1.0 + i), v) for i in range(NUM_PRODUCTS)]

    def repeated(p, ds):
        return [hvp(loss, p, d) for d in ds]

    def linearized(p, ds):
        product = hvp_fn(loss, p)
        return [product(d) for d in ds]

    return compare(
        {
            f"{NUM_PRODUCTS} x hvp": (repeated, (params, vs)),
            f"hvp_fn + {NUM_PRODUCTS} products": (linearized, (params, vs)),
        },
        rounds=rounds,
        calls_per_round=2,
    )


def _compiled_stats(jitted, *args) -> tuple[float, int]:
    """XLA's flop count for the compiled ``jitted(*args)``, and its dots left outside
    XLA:CPU's fused dot kernels: on this jaxlib the transposed-operand products such as
    a weight gradient's X^T Y, which run 1.3-2x slower than a fused row-major dot."""
    compiled = jitted.lower(*args).compile()
    cost = compiled.cost_analysis()
    flops = float((cost[0] if isinstance(cost, list) else cost).get("flops", 0.0))  # 0: copies
    text = compiled.as_text()
    return flops, len(re.findall(r"= \S+ dot\(", text[text.index("ENTRY") :]))


def _program_stats() -> tuple[dict[str, float], dict[str, int]]:
    """Flops and unfused dots of the very programs part 2b times: hvp's, and hvp_fn's
    linearization and product."""
    loss, params, v = _mlp_problem()
    linear = _gradient_vjp(loss, params, ())
    hvp_flops, hvp_dots = _compiled_stats(jax.jit(lambda p, d: hvp(loss, p, d)), params, v)
    product_flops, product_dots = _compiled_stats(_apply_linear, linear, v)
    linearization = _compiled_stats(_gradient_vjp, loss, params, ())[0]
    flops = {"hvp": hvp_flops, "linearization": linearization, "product": product_flops}
    return flops, {"hvp": hvp_dots, "product": product_dots}


def part2b(rounds: int) -> dict:
    """10 products driven from Python (run in a child by :func:`run`), three ways: for
    independent directions keeping every result (a list comprehension) or dropping each
    once computed (an accumulation), and chained (each product's result the next
    direction, as in power iteration, CG or Lanczos): name -> median seconds."""
    loss, params, v = _mlp_problem()
    vs = [jax.tree.map(lambda a, i=i: a * (1.0 + i), v) for i in range(NUM_PRODUCTS)]
    hvp_jit = jax.jit(lambda p, d: hvp(loss, p, d))

    def hvp_product():
        return lambda d: hvp_jit(params, d)

    def hvp_fn_product():
        return hvp_fn(loss, params)  # linearization included in the time

    def kept(make):
        product = make()
        return lambda: [product(d) for d in vs]

    def dropped(make):
        def run():
            product = make()
            for d in vs:
                out = jax.block_until_ready(product(d))
            return out

        return run

    def chained(make):
        def run():
            product, d = make(), v
            for _ in range(NUM_PRODUCTS):
                d = product(d)
            return d

        return run

    variants = {}
    for pattern in (kept, dropped, chained):
        for name, make in (("hvp", hvp_product), ("hvp_fn", hvp_fn_product)):
            variants[f"{name} {pattern.__name__}"] = lambda p=pattern, m=make: p(m)()
    return compare_python(variants, rounds=max(rounds // 2, 5))


def _part3(rounds):
    rows = []
    for n in SIZES:
        A = jax.random.normal(jax.random.key(n), (n, n)) / jnp.sqrt(n)
        x = jax.random.normal(jax.random.key(1), (n,))

        def f(z, A=A):
            return jnp.sum(jnp.tanh(A @ z))

        t = compare(
            {"hessian": (jax.hessian(f), (x,)), "hvp": (lambda z, d, f=f: hvp(f, z, d), (x, x))},
            rounds=rounds,
            calls_per_round=5,
        )
        rows.append((n, t["hessian"].median_s, t["hvp"].median_s))
    lines = ["| n | jax.hessian (ms) | one hvp (ms) | hessian / hvp |", "|---:|---:|---:|---:|"]
    lines += [f"| {n} | {h * 1e3:.3f} | {p * 1e3:.3f} | {h / p:.1f} |" for n, h, p in rows]
    return "\n".join(lines)


def _kept_cost_ms(processes: list[dict], name: str) -> str:
    """Median per-call cost of keeping each result (kept minus dropped), in ms."""
    kept = statistics.median(r[f"{name} kept"] for r in processes)
    dropped = statistics.median(r[f"{name} dropped"] for r in processes)
    return f"{(kept - dropped) / NUM_PRODUCTS * 1e3:.2f}"


def _part2b_table(runs: dict[str, list[dict]]) -> str:
    lines = [
        "| allocator | products | 10 x hvp (ms) | hvp_fn + 10 products (ms) | speed-up |",
        "|---|---|---:|---:|---:|",
    ]
    for allocator, processes in runs.items():
        for pattern, (base, ours) in PATTERNS.items():
            a = statistics.median(r[base] for r in processes)
            b = statistics.median(r[ours] for r in processes)
            lines.append(
                f"| {allocator} | {pattern} | {a * 1e3:.1f} | {b * 1e3:.1f} | {a / b:.2f}x |"
            )
    return "\n".join(lines)


def run(quick: bool = False) -> None:
    rounds = 5 if quick else 21
    n, t1 = _part1(rounds)
    t2 = _part2(rounds)
    part2b_runs = {
        name: [run_in_child("benchmarks.hvp:part2b", rounds, env=env) for _ in range(PROCESSES)]
        for name, env in ALLOCATORS.items()
    }
    flops, transposed = _program_stats()
    ceiling = (
        NUM_PRODUCTS * flops["hvp"] / (flops["linearization"] + NUM_PRODUCTS * flops["product"])
    )
    table3 = _part3(rounds)
    grad_t = t1["grad"].median_s
    fwd_rev, rev_rev = t1["hvp fwd-rev"].median_s, t1["hvp rev-rev"].median_s
    plain = t1["jax jvp(grad)"].median_s
    speedup = (
        t2[f"{NUM_PRODUCTS} x hvp"].median_s / t2[f"hvp_fn + {NUM_PRODUCTS} products"].median_s
    )
    body = "\n\n".join(
        [
            "## hvp: Hessian-vector products vs grad, hvp_fn, explicit Hessian",
            f"MLP {IN}-{'-'.join(map(str, HIDDEN))}-{OUT} ({n:,} parameters), batch {BATCH}, "
            "float32; median of interleaved rounds after warm-up, compile time apart; XLA CPU "
            "default threads. Run: `python -m benchmarks hvp`.",
            machine_summary(("jax", "jaxlib", "flax", "optax")),
            ratio_table(t1, "grad"),
            f"hvp fwd-rev / grad = {fwd_rev / grad_t:.2f} (target <= 2.2); plain jax "
            f"jvp(grad) / grad = {plain / grad_t:.2f}; jaxnum fwd-rev / plain jax = "
            f"{fwd_rev / plain:.3f}; fwd-rev / rev-rev = {fwd_rev / rev_rev:.2f} (target <= 1).",
            ratio_table(t2, f"{NUM_PRODUCTS} x hvp"),
            f"hvp_fn speed-up for {NUM_PRODUCTS} products inside one jit: {speedup:.2f}x "
            "(target >= 1.3): XLA hoists the primal part of hvp out of the loop by itself.",
            f"Driven from Python, {NUM_PRODUCTS} products, each a compiled call, hvp_fn's "
            "linearization included in its time; median of "
            f"{PROCESSES} fresh processes per allocator setting:",
            _part2b_table(part2b_runs),
            "Kept results each need memory of their own (4.3 MB a result), which glibc's "
            "malloc takes from the operating system and gives back when the round's results "
            "are freed, so every call that keeps its result faults in fresh pages: "
            f"{_kept_cost_ms(part2b_runs['default'], 'hvp_fn')} ms a call for hvp_fn, "
            f"{_kept_cost_ms(part2b_runs['default'], 'hvp')} ms for hvp, measured as kept "
            "minus dropped. Both pay it, so it weighs more on the faster one. With "
            f"`{ALLOCATOR_NOTE}` glibc keeps freed memory and the difference goes. "
            f"XLA's flop "
            f"counts: hvp {flops['hvp'] / 1e6:.0f} M, linearization "
            f"{flops['linearization'] / 1e6:.0f} M, one linear product "
            f"{flops['product'] / 1e6:.0f} M, so at equal speed per flop {NUM_PRODUCTS} products "
            f"would be at most {ceiling:.2f}x faster through hvp_fn. The speed per flop is "
            f"not equal: hvp's program leaves {transposed['hvp']} dots outside XLA:CPU's fused "
            f"dot kernels (the weight gradients' X^T Y, transposed operands), hvp_fn's "
            f"product {transposed['product']} (both run as jax differentiates; jaxnum no longer "
            "rewrites dots for XLA:CPU's kernels, which saved no bytes or flops).",
            "Explicit Hessian vs one hvp, f(x) = sum(tanh(A x)):",
            table3,
        ]
    )
    print(body)
    if not quick:
        write_section("hvp", body)
