"""The Kronecker family against AdamW and muon: a transformer LM and two digits tasks (issue 24).

Task: the transformer language model of examples/transformer_lm_mixed_precision.py
(2 pre-LayerNorm blocks, d_model 64, 4 heads, context 64, batch 16 windows of
the shipped Coriolanus text), float32, the same seeded batches for every run.
Optimisers, each at its defaults with a learning-rate grid of four values:

- AdamW (``optax.adamw``, weight decay 1e-4): the baseline; its best final
  held-out loss after ``STEPS`` steps is the target;
- muon (``optax.contrib.muon``: Newton-Schulz orthogonalised momentum on 2-D
  weights, AdamW on the rest);
- Shampoo (``jn.shampoo``: Adam-grafted, roots every 10 steps);
- SOAP (``jn.soap``: Adam in the eigenbasis, refreshed every 10 steps).

Reported per optimiser at its best learning rate: the final held-out loss;
the steps to reach AdamW's target (held-out loss evaluated every
``EVAL_EVERY`` steps, so a count is a multiple of it); the median time per
step (jitted ``lax.scan`` chunks, interleaved rounds, compile excluded); the
wall time to the target relative to AdamW's ``STEPS`` steps; the optimizer
state's bytes relative to Adam's 2x params. The curves go to
benchmarks/figures/kron_transformer.png.

Digits tasks (the models, data and steps of ``benchmarks/kfac.py``): the deep
autoencoder on the full batch and the conv classifier on mini-batches of 256.
AdamW (1000 steps, grid as above) sets the target, its best final full-data
training loss; muon, Shampoo and SOAP run 1000 steps with their grids; K-FAC
(``jaxnum.kfac.optimizer``) and EKFAC (``jaxnum.kfac.ekfac``) run 300 steps at
their defaults with the learning rates {0.1, 0.3, 1}, beside the tuned K-FAC
setting of ``benchmarks/kfac.py``. Steps count the first step whose full-data
loss is at or below the target. OpenBLAS (the LAPACK behind eigh and the
Cholesky inverses) is held to 1 thread with threadpoolctl.
"""

from __future__ import annotations

import importlib.util
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxnum as jn
from benchmarks.harness import ROOT, compare, machine_summary, write_section

STEPS = 600
EVAL_EVERY = 20
GRIDS = {
    "AdamW": (1e-3, 3e-3, 1e-2, 3e-2),
    "muon": (3e-3, 1e-2, 3e-2, 1e-1),
    "Shampoo": (1e-3, 3e-3, 1e-2, 3e-2),
    "SOAP": (1e-3, 3e-3, 1e-2, 3e-2),
}
FIGURE = ROOT / "benchmarks" / "figures" / "kron_transformer.png"
DIGITS_STEPS = 1000  # AdamW, muon, Shampoo, SOAP
CURVATURE_STEPS = 300  # K-FAC and EKFAC
CURVATURE_GRID = (0.1, 0.3, 1.0)


def optimiser(name: str, lr: float) -> optax.GradientTransformation:
    if name == "AdamW":
        return optax.adamw(lr, weight_decay=1e-4)
    if name == "muon":
        return optax.contrib.muon(lr)
    if name == "Shampoo":
        return jn.shampoo(lr)
    return jn.soap(lr)


def _example_module():
    path = ROOT / "examples" / "transformer_lm_mixed_precision.py"
    spec = importlib.util.spec_from_file_location("transformer_lm_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Task:
    """The example's model, batches and held-out windows, built once."""

    def __init__(self, steps: int):
        ex = _example_module()
        chars, train_ids, val_ids = ex.load_text()
        self.seqs = jnp.asarray(ex.training_batches(jax.random.key(0), train_ids, steps))
        n_val = (len(val_ids) - 1) // ex.CONTEXT
        self.val = jnp.asarray(
            np.stack([val_ids[i * ex.CONTEXT : (i + 1) * ex.CONTEXT + 1] for i in range(n_val)])
        )
        self.model = ex.CharTransformer(len(chars), jn.Policy())
        self.params0 = jax.jit(self.model.init)(jax.random.key(1), self.seqs[0, :, :-1])
        self.nll = ex.mean_nll

    def loss(self, params, batch):
        return self.nll(self.model.apply(params, batch[:, :-1]), batch)


def _chunk_fn(task: Task, tx):
    def step(carry, batch):
        params, state = carry
        grads = jax.grad(task.loss)(params, batch)
        updates, state = tx.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    def chunk(carry, batches):
        return jax.lax.scan(step, carry, batches)[0]

    return jax.jit(chunk)


def train(task: Task, tx, steps: int, label: str) -> list[float]:
    """Held-out loss after every EVAL_EVERY steps (index 0: at initialisation)."""
    chunk = _chunk_fn(task, tx)
    evaluate = jax.jit(lambda p: task.loss(p, task.val))
    carry = (task.params0, tx.init(task.params0))
    curve = [float(evaluate(carry[0]))]
    start = last = time.perf_counter()
    for c in range(steps // EVAL_EVERY):
        carry = chunk(carry, task.seqs[c * EVAL_EVERY : (c + 1) * EVAL_EVERY])
        curve.append(float(evaluate(carry[0])))
        if time.perf_counter() - last > 5 or c == steps // EVAL_EVERY - 1:
            last = time.perf_counter()
            print(f"  {label}: step {(c + 1) * EVAL_EVERY}/{steps}, held-out loss "
                  f"{curve[-1]:.3f} ({last - start:.0f} s)", flush=True)  # fmt: skip
    return curve


def steps_to(curve: list[float], target: float) -> int | None:
    reached = [i for i, v in enumerate(curve) if v <= target]
    return reached[0] * EVAL_EVERY if reached else None


def state_bytes(tx, params) -> int:
    state = jax.eval_shape(tx.init, params)
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state)))


def transformer_section(quick: bool) -> str:
    steps = 200 if quick else STEPS
    grids = {k: v[1:3] for k, v in GRIDS.items()} if quick else GRIDS
    task = Task(steps)
    curves: dict[str, dict[float, list[float]]] = {}
    for name, grid in grids.items():
        curves[name] = {}
        for lr in grid:
            curve = train(task, optimiser(name, lr), steps, f"{name} lr {lr:g}")
            curves[name][lr] = curve if np.isfinite(curve[-1]) else [np.inf] * len(curve)
    best = {name: min(c, key=lambda lr, c=c: c[lr][-1]) for name, c in curves.items()}
    target = curves["AdamW"][best["AdamW"]][-1]

    # Step time at each optimiser's best learning rate: interleaved rounds of chained chunks.
    carry0 = {n: (task.params0, optimiser(n, best[n]).init(task.params0)) for n in grids}
    chunk_batches = task.seqs[:EVAL_EVERY]
    variants = {}
    for n in grids:
        chunk = _chunk_fn(task, optimiser(n, best[n]))
        variants[n] = (lambda carry, chunk=chunk: chunk(carry, chunk_batches), (carry0[n],))
    timings = compare(variants, rounds=5 if quick else 11, calls_per_round=2, chained=True)
    step_s = {n: timings[n].median_s / EVAL_EVERY for n in grids}

    params_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(task.params0))
    adam_bytes = state_bytes(optax.adamw(1e-3), task.params0)
    rows = [
        "| optimiser (defaults) | best lr of grid | final held-out loss | steps to AdamW's "
        "loss (vs AdamW) | time per step, ms (vs AdamW) | wall to AdamW's loss (vs AdamW) | "
        "state bytes (vs AdamW's) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for n in grids:
        curve = curves[n][best[n]]
        reached = steps_to(curve, target)
        step_ratio = f"{reached} ({reached / steps:.2f}x)" if reached else "not reached"
        wall = (
            f"{reached * step_s[n] / (steps * step_s['AdamW']):.2f}x" if reached else "not reached"
        )
        sb = state_bytes(optimiser(n, best[n]), task.params0)
        rows.append(
            f"| {n} | {best[n]:g} of {list(grids[n])} | {curve[-1]:.4f} | {step_ratio} | "
            f"{1e3 * step_s[n]:.2f} ({step_s[n] / step_s['AdamW']:.2f}x) | {wall} | "
            f"{sb / 2**20:.2f} MiB ({sb / adam_bytes:.2f}x) |"
        )
    _figure(curves, best, target, steps)
    return "\n".join(
        [
            "### Transformer LM",
            "",
            f"Character-level transformer LM of the examples (float32, {steps} steps of 16x64 "
            f"tokens, held-out loss every {EVAL_EVERY} steps); target: AdamW's best final "
            f"held-out loss {target:.4f}. Parameters {params_bytes / 2**20:.2f} MiB. Each "
            "optimiser at its defaults with the four learning rates shown.",
            "",
            *rows,
            "",
            f"Curves: [benchmarks/figures/{FIGURE.name}](benchmarks/figures/{FIGURE.name}).",
        ]
    )


def run(quick: bool = False) -> None:
    from threadpoolctl import threadpool_limits

    jnp.linalg.eigh(jnp.eye(2))[0].block_until_ready()  # load jaxlib's LAPACK first
    with threadpool_limits(1, user_api="blas"):
        sections = [transformer_section(quick), *digits_sections(quick)]
    body = "\n".join(
        [
            "## Kronecker family: Shampoo, SOAP, K-FAC and EKFAC vs AdamW and muon "
            "(`python -m benchmarks kron`)",
            "",
            machine_summary(),
            "",
            "\n\n".join(sections),
        ]
    )
    print(body)
    if not quick:
        write_section("kron", body)


def digits_optimiser(name: str, lr: float):
    """``(method for benchmarks.kfac.make_step, transformation)``."""
    from jaxnum import kfac

    if name == "K-FAC":
        return "kfac", kfac.optimizer(lr)
    if name == "EKFAC":
        return "ekfac", kfac.ekfac(lr)
    return "first-order", optimiser(name, lr)


def digits_sections(quick: bool) -> list[str]:
    from benchmarks import kfac as bk

    long_steps = 200 if quick else DIGITS_STEPS
    short_steps = 100 if quick else CURVATURE_STEPS
    grids = dict(GRIDS, **{"K-FAC": CURVATURE_GRID, "EKFAC": CURVATURE_GRID})
    if quick:
        grids = {k: v[1:3] for k, v in grids.items()}
    sections = []
    for task, batch in zip(bk.tasks(), (None, bk.MINI_BATCH), strict=True):
        n = task.inputs.shape[0]
        params = task.model.init(jax.random.key(0), task.inputs[:2])["params"]
        key = jax.random.key(1)
        plain = bk.faster_first_order_layers(task, params, bk.batch_indices(n, batch, 40))
        curves: dict[str, dict[float, np.ndarray]] = {}
        for name, grid in grids.items():
            curves[name] = {}
            horizon = short_steps if name in ("K-FAC", "EKFAC") else long_steps
            indices = bk.batch_indices(n, batch, horizon)
            for lr in grid:
                method, tx = digits_optimiser(name, lr)
                step = bk.make_step(task, method, tx, plain=plain)
                curve = bk.trajectory(task, step, tx, params, indices, key)
                curves[name][lr] = np.where(np.isfinite(curve), curve, np.inf)
                print(f"  {task.name}: {name} lr {lr:g}: final {curve[-1]:.4f}", flush=True)
        tuned_tx = kfac_tuned(task)
        tuned_step = bk.make_step(task, "kfac", tuned_tx)
        curves["K-FAC tuned"] = {
            task.kfac_config["learning_rate"]: bk.trajectory(
                task, tuned_step, tuned_tx, params, bk.batch_indices(n, batch, short_steps), key
            )
        }
        best = {name: min(c, key=lambda lr, c=c: c[lr][-1]) for name, c in curves.items()}
        target = float(curves["AdamW"][best["AdamW"]][-1])
        runs = {}
        for name in curves:
            method, tx = (
                ("kfac", tuned_tx) if name == "K-FAC tuned" else digits_optimiser(name, best[name])
            )
            step = bk.make_step(task, method, tx, plain=plain)
            runs[name] = (step, (params, tx.init(params)), bk.batch_indices(n, batch, 40))
        step_s = bk.time_per_step(runs, rounds=3 if quick else 7)
        adam_bytes = state_bytes(optax.adamw(1e-3), params)
        rows = [
            "| optimiser | best lr of grid | final loss (steps) | steps to AdamW's loss "
            "(vs AdamW) | time per step, ms (vs AdamW) | wall to AdamW's loss (vs AdamW) | "
            "state bytes (vs AdamW's) |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for name, by_lr in curves.items():
            curve = by_lr[best[name]]
            reached = bk.first_reaching(curve, target)
            ratio = f"{reached} ({reached / long_steps:.2f}x)" if reached else "not reached"
            wall = (
                f"{reached * step_s[name] / (long_steps * step_s['AdamW']):.2f}x"
                if reached
                else "not reached"
            )
            tx = tuned_tx if name == "K-FAC tuned" else digits_optimiser(name, best[name])[1]
            sb = state_bytes(tx, params)
            setting = (
                bk._kfac_setting(task, batch)
                if name == "K-FAC tuned"
                else f"{best[name]:g} of {list(grids[name])}"
            )
            rows.append(
                f"| {name} | {setting} | {curve[-1]:.5g} ({len(curve)}) | {ratio} | "
                f"{1e3 * step_s[name]:.2f} ({step_s[name] / step_s['AdamW']:.2f}x) | {wall} | "
                f"{sb / 2**10:.0f} KiB ({sb / adam_bytes:.2f}x) |"
            )
        label = "full batch (1797)" if batch is None else f"mini-batches of {batch}"
        peer = bk.kfac_jax_attempt(task, params)
        figure = _digits_figure(task.name, label, curves, best, target)
        sections.append(
            "\n".join(
                [
                    f"### Digits {task.name}, {label}",
                    "",
                    f"Target: AdamW's best full-data training loss after {long_steps} steps, "
                    f"{target:.5g}. Each at its defaults with the learning rates shown, except "
                    "K-FAC tuned. First-order runs use "
                    + ("flax's layers." if plain else "the patches x matrix layers (faster here)."),
                    "",
                    *rows,
                    "",
                    f"Curves: [benchmarks/figures/{figure}](benchmarks/figures/{figure}).",
                    "",
                    f"kfac-jax (the peer for K-FAC): {peer}",
                ]
            )
        )
    return sections


def kfac_tuned(task):
    from jaxnum import kfac

    return kfac.optimizer(**task.kfac_config)


def _digits_figure(task_name, label, curves, best, target) -> str:
    name = f"kron_digits_{task_name.replace(' ', '_')}.png"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return name
    fig, ax = plt.subplots(figsize=(7, 4))
    for opt, by_lr in curves.items():
        curve = by_lr[best[opt]]
        ax.plot(np.arange(1, len(curve) + 1), curve, label=f"{opt} (lr {best[opt]:g})")
    ax.axhline(target, color="gray", ls=":", label="AdamW's final loss")
    ax.set(xlabel="step", ylabel="full-data training loss", yscale="log", xscale="log",
           title=f"digits {task_name}, {label}, best learning rate of each")  # fmt: skip
    ax.legend(fontsize=8)
    path = FIGURE.parent / name
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return name


def _figure(curves, best, target, steps):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, by_lr in curves.items():
        curve = by_lr[best[name]]
        ax.plot(np.arange(len(curve)) * EVAL_EVERY, curve, label=f"{name} (lr {best[name]:g})")
    ax.axhline(target, color="gray", ls=":", label="AdamW's final loss")
    ax.set(xlabel="step", ylabel="held-out loss (nats per character)", ylim=(None, 3.5),
           title=f"transformer LM, {steps} steps, best learning rate of each")  # fmt: skip
    ax.legend(fontsize=8)
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURE, dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    run()
