"""Cost of loss scaling + clipping in a training step: jaxnum vs plain optax vs jmp.

One step of a small MLP (784-512-512-10, batch 128 and 1024, softmax
cross-entropy, float32 compute so that only the machinery differs), these ways:

- ``optax``: grad, adam, apply (the baseline);
- ``optax+clip``: the same with ``optax.clip_by_global_norm`` before adam;
- ``optax+clip, scaled loss``: the optax+clip step on the gradients of
  ``loss * scale`` divided by the scale, with no check and no skip: what any
  loss scaling pays for scaling alone, so ``jaxnum`` over it is the wrapper's own cost;
- ``jaxnum``: ``jn.scaled_value_and_grad`` + ``jn.loss_scaling(adam, max_norm=...)``
  (clipping from the finiteness check's own reduction);
- ``jaxnum, clip in chain``: the same with
  ``jn.loss_scaling(chain(jn.clip_by_global_norm, adam))``;
- ``jaxnum, check_updates``: ``jaxnum`` with ``check_updates=True`` (the updates
  adam returns are checked too, and the state selected after it);
- ``jaxnum, no loss scale``: ``jn.loss_scaling(adam, max_norm=..., initial_scale=1,
  dynamic=False)`` on ``jax.value_and_grad`` of the plain loss: the same check,
  clip, exact skip and state as ``jaxnum`` (the same program but for the scale
  that multiplies the backward pass), as bf16 or float32 training would use it;
- ``jmp``: ``DynamicLossScale.scale`` / ``unscale`` + ``all_finite`` + the optax+clip
  update + ``select_tree`` over params and state + ``adjust`` (jmp's README recipe);
- ``optax.apply_if_finite``: optax's own exact skip of non-finite steps around
  optax+clip (no loss scale, a select of every update and state leaf): what an
  exact skip costs when written by optax.

Steps are timed as a dependent chain, each step's parameters and state
feeding the next as in training: independent calls on the same arguments can
overlap on a multi-core CPU and hide part of a step's cost. The overhead of a
wrapper is its time over the baseline's, minus one. It is a
fixed cost per parameter (a few elementwise passes), so its share of a step
shrinks as the batch grows; both batch sizes are reported.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import jaxnum as jn
from benchmarks.harness import (
    KEEP_FREED_MEMORY,
    compare,
    compiled_costs,
    cost_table,
    machine_summary,
    median_timings,
    ratio_table,
    run_in_child,
    timings_to_json,
    write_section,
)
from benchmarks.problems import CLASSES as OUT
from benchmarks.problems import IN_FEATURES as IN
from benchmarks.problems import mlp_classification

BATCHES = (128, 1024)
WIDTH = 512
MAX_NORM = 1.0
PROCESSES, ROUNDS = 3, 21  # fresh processes, and interleaved rounds in each
DONATION = {"no donation": False, "donated": True}  # how each step is jitted
# A third setting: no donation, in processes whose glibc malloc keeps freed memory
# (each step's fresh multi-MB outputs then reuse pages instead of faulting new ones in).
KEPT_MEMORY = "no donation, malloc keeps freed memory"
# A fourth: no donation, each process pinned to one core (no concurrent thunks).
PINNED = "no donation, pinned to one core"


def _problem(batch):
    return mlp_classification(batch, (WIDTH, WIDTH), nn.relu)


def _variants(batch):
    import jmp

    params, loss_fn = _problem(batch)
    adam = optax.adam(1e-3)
    clipped = optax.chain(optax.clip_by_global_norm(MAX_NORM), optax.adam(1e-3))
    ours = jn.loss_scaling(optax.adam(1e-3), max_norm=MAX_NORM)
    ours_chain = jn.loss_scaling(optax.chain(jn.clip_by_global_norm(MAX_NORM), optax.adam(1e-3)))
    checked = jn.loss_scaling(optax.adam(1e-3), max_norm=MAX_NORM, check_updates=True)
    unscaled = jn.loss_scaling(
        optax.adam(1e-3), max_norm=MAX_NORM, initial_scale=1.0, dynamic=False
    )
    scaled_grad = jn.scaled_value_and_grad(loss_fn)

    # Every step maps its carry (params, state..., loss) to the next one, so the
    # timed calls form a dependent chain like a training loop.
    def optax_step(carry, tx=adam):
        p, s, _ = carry
        loss, g = jax.value_and_grad(loss_fn)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    def optax_clip_step(carry):
        return optax_step(carry, clipped)

    def scaled_loss_step(carry):
        p, s, scale, _ = carry
        loss, g = jax.value_and_grad(lambda q: loss_fn(q) * scale)(p)
        u, s = clipped.update(jax.tree.map(lambda x: x / scale, g), s, p)
        return optax.apply_updates(p, u), s, scale, loss / scale

    def jaxnum_step(carry, tx=ours):
        p, s, _ = carry
        loss, g = scaled_grad(s, p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    def jaxnum_chain_step(carry):
        return jaxnum_step(carry, ours_chain)

    def jaxnum_checked_step(carry):
        return jaxnum_step(carry, checked)

    def jaxnum_unscaled_step(carry):
        return optax_step(carry, unscaled)

    def jmp_step(carry):
        # jmp's DynamicLossScale cannot be an argument of jit(...).lower() (its
        # unflatten runs a check on placeholder objects), so its arrays travel alone.
        p, s, scale, counter, _ = carry
        ls = jmp.DynamicLossScale(scale, counter)
        loss, g = jax.value_and_grad(lambda q: ls.scale(loss_fn(q)))(p)
        g = ls.unscale(g)
        finite = jmp.all_finite(g)
        u, new_s = clipped.update(g, s, p)
        new_p = optax.apply_updates(p, u)
        p, s = jmp.select_tree(finite, (new_p, new_s), (p, s))
        ls = ls.adjust(finite)
        return p, s, ls.loss_scale, ls.counter, ls.unscale(loss)

    if_finite = optax.apply_if_finite(clipped, max_consecutive_errors=2**30)

    def if_finite_step(carry):
        return optax_step(carry, if_finite)

    zero = jnp.zeros([], jnp.float32)
    jmp_scale = (jnp.float32(2.0**15), jnp.zeros([], jnp.int32))
    return {
        "optax": (optax_step, ((params, adam.init(params), zero),)),
        "optax+clip": (optax_clip_step, ((params, clipped.init(params), zero),)),
        "optax+clip, scaled loss": (
            scaled_loss_step,
            ((params, clipped.init(params), jnp.float32(2.0**15), zero),),
        ),
        "jaxnum": (jaxnum_step, ((params, ours.init(params), zero),)),
        "jaxnum, clip in chain": (jaxnum_chain_step, ((params, ours_chain.init(params), zero),)),
        "jaxnum, check_updates": (jaxnum_checked_step, ((params, checked.init(params), zero),)),
        "jaxnum, no loss scale": (
            jaxnum_unscaled_step,
            ((params, unscaled.init(params), zero),),
        ),
        "jmp": (jmp_step, ((params, clipped.init(params), *jmp_scale, zero),)),
        "optax.apply_if_finite": (if_finite_step, ((params, if_finite.init(params), zero),)),
    }


def _pct(a: float, b: float) -> str:
    """``a``'s time over ``b``'s, as a signed percentage."""
    return f"{100 * (a / b - 1):+.1f}%"


def _summary(timings) -> str:
    base, clip = timings["optax"].median_s, timings["optax+clip"].median_s
    scaled = timings["optax+clip, scaled loss"].median_s
    ours, jmp_t = timings["jaxnum"].median_s, timings["jmp"].median_s
    chained = timings["jaxnum, clip in chain"].median_s
    unscaled = timings["jaxnum, no loss scale"].median_s
    if_finite = timings["optax.apply_if_finite"].median_s

    return (
        f"Over the plain optax step: jaxnum {_pct(ours, base)} (target <= +5%), with the "
        f"clip in the chain {_pct(chained, base)}, with no loss scale (check, clip, skip "
        f"alone) {_pct(unscaled, base)}, jmp {_pct(jmp_t, base)} "
        f"(optax's clipping alone {_pct(clip, base)}, scaling the loss alone "
        f"{_pct(scaled, clip)} over optax+clip). The wrappers' own cost (check, skip, "
        f"schedule) over the scaled-loss step: jaxnum {_pct(ours, scaled)}, jmp "
        f"{_pct(jmp_t, scaled)}. jaxnum / jmp = {ours / jmp_t:.3f}. optax's own exact skip "
        f"(apply_if_finite around optax+clip, no scaling): {_pct(if_finite, base)}."
    )


def _per_process(per_process, name) -> str:
    """``name``'s overhead over optax in each process, as a list."""
    return ", ".join(_pct(r[name]["median_s"], r["optax"]["median_s"]) for r in per_process)


def timings_in_this_process(batch: int, quick: bool, settings=tuple(DONATION)) -> dict:
    """Every variant at ``batch``, timed in this process (run in a child by :func:`run`)
    in each of ``settings`` (keys of ``DONATION``)."""
    calls = 20 if batch <= 128 else 5
    return {
        setting: timings_to_json(
            compare(
                _variants(batch),
                rounds=5 if quick else ROUNDS,
                calls_per_round=2 if quick else calls,
                chained=True,
                donate=donate,
            )
        )
        for setting, donate in DONATION.items()
        if setting in settings
    }


def costs(batch: int, donate: bool) -> dict[str, dict[str, float]]:
    """Every variant's compiled step at ``batch``: bytes accessed, flops, copies, temp
    memory (XLA's own analyses, the same on any machine of one backend)."""
    return {
        name: compiled_costs(step, *args, donate=donate)
        for name, (step, args) in _variants(batch).items()
    }


def run(quick: bool = False) -> dict:
    """Runs the comparison for each batch size in fresh processes, prints it and (unless
    quick) writes it."""
    processes = 1 if quick else PROCESSES
    parts = [
        "## loss_scaling: training-step overhead of loss scaling + clipping",
        f"MLP {IN}-{WIDTH}-{WIDTH}-{OUT}, float32 compute, adam, softmax cross-entropy; "
        "interleaved rounds after warm-up, each round a chain of dependent steps (each "
        "step's parameters and state feed the next, as in training), median per step, "
        f"compile time apart; all of it in {processes} fresh processes, each variant's "
        "figure the median of the processes' medians (a step's time moves from one "
        "process to the next; each process's overhead is listed). XLA CPU "
        "with its default thread pool (all cores) for every variant. Each batch size is "
        "timed four ways: with every step jitted with `donate_argnums=0` as training "
        "loops do (updates written in place; each round starts from a fresh copy); with "
        "no buffer donation; and with no donation in processes whose glibc malloc keeps "
        f"freed memory (`{' '.join(f'{k}={v}' for k, v in KEEP_FREED_MEMORY.items())}`: "
        "each step's fresh multi-MB outputs reuse pages instead of faulting new ones "
        "in); and with no donation in processes pinned to one core (all their threads "
        "included), where XLA:CPU runs no two operations at once. "
        "Run: `python -m benchmarks loss_scaling`.",
        machine_summary(("jax", "jaxlib", "optax", "flax", "jmp")),
    ]
    results = {}
    target = "benchmarks.loss_scaling:timings_in_this_process"
    for batch in BATCHES:
        for setting, donate in DONATION.items():
            parts += [
                f"### batch {batch}, {setting}: compiled cost (XLA's cost and memory analyses)",
                cost_table(costs(batch, donate), "optax"),
            ]
    for batch in BATCHES:
        runs = [run_in_child(target, batch, quick) for _ in range(processes)]
        kept = [
            run_in_child(target, batch, quick, ["no donation"], env=KEEP_FREED_MEMORY)
            for _ in range(processes)
        ]
        settings = {setting: [r[setting] for r in runs] for setting in DONATION}
        settings[KEPT_MEMORY] = [r["no donation"] for r in kept]
        pinned = [
            run_in_child(target, batch, quick, ["no donation"], pin_one_core=True)
            for _ in range(processes)
        ]
        settings[PINNED] = [r["no donation"] for r in pinned]
        for setting, per_process in settings.items():
            timings = median_timings(per_process)
            results[(batch, setting)] = timings
            first = per_process[0]["optax"]
            parts += [
                f"### batch {batch}, {setting} ({processes} processes x {first['rounds']} "
                f"rounds of {first['calls_per_round']} calls)",
                ratio_table(timings, "optax"),
                _summary(timings)
                + f" Per process, over optax: jaxnum {_per_process(per_process, 'jaxnum')}; "
                f"with no loss scale {_per_process(per_process, 'jaxnum, no loss scale')}.",
            ]
    body = "\n\n".join(parts)
    print(body)
    if not quick:
        write_section("loss_scaling", body)
    return results
