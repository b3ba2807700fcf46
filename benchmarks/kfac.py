"""K-FAC vs Adam, SGD-momentum and kfac-jax on scikit-learn's digits (issue 6).

Two tasks, each with the full batch (all 1797 images) and mini-batches of 256
(the same seeded epoch permutations for every optimiser), float32:

- the deep autoencoder 64-128-32-128-64 (tanh, Bernoulli output: binary
  cross-entropy summed over pixels, mean over images);
- a small convolutional classifier (8x8x1 -> conv 3x3x8 -> conv 3x3x16
  stride 2 -> dense 10, tanh, softmax cross-entropy).

For each: Adam with the best learning rate of {1e-3, 3e-3, 1e-2, 3e-2} at
step 1000 sets the target (its full-data training loss after 1000 steps);
SGD-momentum (0.9) takes the best of {0.03, 0.1, 0.3}. K-FAC runs in two
forms, one configuration each per task: adaptive
(``jaxnum.kfac.adaptive_optimizer``: step size and momentum from the exact
quadratic model, Martens-Grosse Sec. 7) and ``jaxnum.kfac.optimizer`` with a
fixed learning rate, momentum and KL clip. On the full batch K-FAC's statistics
use 256 random examples per step
and the adaptive form's 2 x 2 Fisher Gram 64 (measured: 47, 48, 49 steps to
the target with 256, 128, 64 examples; each jvp costs two matmuls per layer);
on mini-batches both use the whole mini-batch. The adaptive form adapts its
lambda every 5 steps (Levenberg-Marquardt, never below the initial damping).
With damping 3e-3 it diverged on the conv classifier's mini-batches once the
data were memorised, so that task uses 1e-2.
Adam and SGD run whichever layers are faster for them on this machine, flax's
own ``nn.Dense``/``nn.Conv`` or the capture layers with the same parameters
(patches times a matrix: on XLA:CPU much faster than its convolution); the
table says which. Reported:
steps to reach the target (full-data loss after each step), median time per
step (a jitted ``lax.scan`` of 20 steps, rounds interleaved between the
optimisers, compile excluded), and wall time to the target relative to
Adam's 1000 steps.

The LAPACK that jaxlib calls for K-FAC's Cholesky inverses is OpenBLAS; its
worker threads keep spinning after each call and take the 2 cores from XLA's
own threads (measured: a K-FAC step with inverses 11.8 ms vs 5.2 ms). The
benchmark limits it to 1 thread with threadpoolctl (Adam and SGD make no
LAPACK call); set ``OPENBLAS_NUM_THREADS=1`` to get the same in your runs.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.harness import machine_summary, write_section
from jaxnum import kfac

ADAM_LRS = (1e-3, 3e-3, 1e-2, 3e-2)
SGD_LRS = (0.03, 0.1, 0.3)
ADAM_STEPS = 1000
KFAC_MAX_STEPS = 300
KFAC_SEEDS = 5  # K-FAC's random draws (sampled targets, subsets): median over these keys
MINI_BATCH = 256
CURVATURE_SUBSET = 256  # examples for K-FAC's statistics (full batch)
# Examples for the adaptive form's 2 x 2 Fisher Gram on the full batch (mini-batches use
# all theirs: with 64 of a mini-batch of 256 the conv classifier diverged, loss 828).
GRAM_EXAMPLES = 64


class Autoencoder(nn.Module):
    dense: type = kfac.Dense  # nn.Dense for the first-order optimisers (same parameters)

    @nn.compact
    def __call__(self, x):
        for i, width in enumerate((128, 32, 128)):
            x = jnp.tanh(self.dense(width, name=f"dense{i}")(x))
        return self.dense(64, name="logits")(x)


class ConvNet(nn.Module):
    dense: type = kfac.Dense
    conv: type = kfac.Conv  # nn.Conv for the first-order optimisers (same parameters)

    @nn.compact
    def __call__(self, x):
        x = jnp.tanh(self.conv(8, (3, 3), name="conv0")(x))
        x = jnp.tanh(self.conv(16, (3, 3), strides=(2, 2), name="conv1")(x))
        return self.dense(10, name="logits")(x.reshape(x.shape[0], -1))


class Task(NamedTuple):
    name: str
    model: nn.Module  # with jaxnum.kfac capture layers
    plain_model: nn.Module  # the same with flax's own layers, for Adam and SGD
    loss: str  # a jaxnum.kfac loss name
    inputs: jax.Array
    targets: jax.Array
    kfac_config: dict  # jaxnum.kfac.optimizer with a fixed learning rate and KL clip
    adaptive_config: dict  # jaxnum.kfac.adaptive_optimizer: alpha, mu from the quadratic model


def tasks() -> list[Task]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = jnp.asarray(digits.data / 16.0, jnp.float32)
    return [
        Task(
            "autoencoder",
            Autoencoder(),
            Autoencoder(dense=nn.Dense),
            "sigmoid_cross_entropy",
            pixels,
            pixels,
            dict(learning_rate=1.0, damping=0.03, momentum=0.8, decay=0.9, inverse_every=5),
            dict(damping=3e-3, decay=0.9, inverse_every=5),
        ),
        Task(
            "conv classifier",
            ConvNet(),
            ConvNet(dense=nn.Dense, conv=nn.Conv),
            "softmax_cross_entropy",
            pixels.reshape(-1, 8, 8, 1),
            jnp.asarray(digits.target, jnp.int32),
            dict(learning_rate=1.0, damping=0.03, momentum=0.8, decay=0.9, inverse_every=5),
            dict(damping=1e-2, decay=0.9, inverse_every=5),
        ),
    ]


def mean_loss(task: Task, params, inputs, targets, *, plain: bool = True):
    """The mean loss; ``plain``: with flax's own layers (the same parameters)."""
    model = task.plain_model if plain else task.model
    outputs = model.apply({"params": params}, inputs)
    if task.loss == "sigmoid_cross_entropy":
        return jnp.mean(jnp.sum(optax.sigmoid_binary_cross_entropy(outputs, targets), axis=1))
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(outputs, targets))


def batch_indices(n: int, batch: int | None, steps: int, seed: int = 0) -> np.ndarray:
    """``(steps, batch)`` example indices: seeded epoch permutations (all for full batch)."""
    if batch is None:
        return np.broadcast_to(np.arange(n), (steps, n))
    rng = np.random.default_rng(seed)
    per_epoch = n // batch
    epochs = [rng.permutation(n)[: per_epoch * batch].reshape(per_epoch, batch)]
    while sum(len(e) for e in epochs) < steps:
        epochs.append(rng.permutation(n)[: per_epoch * batch].reshape(per_epoch, batch))
    return np.concatenate(epochs)[:steps]


def make_step(task: Task, method: str, tx, *, plain: bool = True):
    """``step((params, state), (indices, key)) -> ((params, state), None)``.

    ``method``: "first-order" (``plain``: flax's layers, else the capture layers,
    which outside a statistics pass are ordinary layers), "kfac" (fixed learning
    rate), "ekfac" (per-example statistics) or "kfac-adaptive" (``fisher_gram`` too).
    """
    subset = CURVATURE_SUBSET if task.inputs.shape[0] > 2 * CURVATURE_SUBSET else None
    if method.startswith("kfac") or method == "ekfac":
        stats_fn = kfac.value_grad_and_stats(
            task.model, task.loss, curvature_batch=subset, per_example=method == "ekfac"
        )

    def step(carry, xs):
        params, state = carry
        idx, key = xs
        inputs, targets = task.inputs[idx], task.targets[idx]
        if method in ("kfac", "ekfac"):
            _, grads, stats = stats_fn(params, inputs, targets, key)
            updates, state = tx.update(grads, state, params, curvature=stats)
        elif method == "kfac-adaptive":
            value, grads, stats = stats_fn(params, inputs, targets, key)
            gram = kfac.fisher_gram_fn(
                task.model,
                task.loss,
                params,
                inputs,
                key=jax.random.fold_in(key, 1),
                examples=None if subset is None else GRAM_EXAMPLES,
            )
            updates, state = tx.update(
                grads,
                state,
                params,
                curvature=stats,
                fisher_gram=gram,
                value=value,
                value_fn=lambda p: mean_loss(task, p, inputs, targets, plain=False),
            )
        else:
            grads = jax.grad(lambda p: mean_loss(task, p, inputs, targets, plain=plain))(params)
            updates, state = tx.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    return step


def trajectories(task: Task, step, tx, params, indices, keys) -> list[np.ndarray]:
    """Full-data training loss after each step, one run per key (compiled once)."""

    def with_eval(carry, xs):
        carry, _ = step(carry, xs)
        return carry, mean_loss(task, carry[0], task.inputs, task.targets)

    run = jax.jit(lambda c, xs: jax.lax.scan(with_eval, c, xs)[1])
    xs = [(jnp.asarray(indices), jax.random.split(k, len(indices))) for k in keys]
    return [np.asarray(run((params, tx.init(params)), x)) for x in xs]


def trajectory(task: Task, step, tx, params, indices, key) -> np.ndarray:
    """Full-data training loss after each step."""
    return trajectories(task, step, tx, params, indices, [key])[0]


def median_steps(runs: list[np.ndarray], target: float) -> int | None:
    """Median over runs of the steps to ``target`` (a run that never reaches it counts as
    more than any); None when the median run does not reach it."""
    steps = sorted(np.inf if s is None else s for s in (first_reaching(r, target) for r in runs))
    middle = steps[len(steps) // 2]
    return None if np.isinf(middle) else int(middle)


def first_reaching(losses: np.ndarray, target: float) -> int | None:
    hit = np.nonzero(losses <= target)[0]
    return int(hit[0]) + 1 if len(hit) else None


def time_per_step(runs: dict, rounds: int, chunk: int = 20) -> dict[str, float]:
    """Median seconds per step of each compiled ``chunk``-step scan, rounds interleaved."""
    compiled = {}
    for name, (step, carry, indices) in runs.items():
        xs = (jnp.asarray(indices[:chunk]), jax.random.split(jax.random.key(0), chunk))
        fn = jax.jit(lambda c, xs, step=step: jax.lax.scan(step, c, xs)[0])
        jax.block_until_ready(fn(carry, xs))
        compiled[name] = (fn, carry, xs)
    samples = {name: [] for name in runs}
    for r in range(rounds):
        names = list(compiled)
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn, carry, xs = compiled[name]
            time.sleep(0.05)
            start = time.perf_counter()
            jax.block_until_ready(fn(carry, xs))
            samples[name].append((time.perf_counter() - start) / chunk)
    return {name: float(np.median(v)) for name, v in samples.items()}


def kfac_jax_attempt(task: Task, params) -> str:
    """One step of kfac_jax.Optimizer (adaptive lr, momentum, damping); the error if any."""
    try:
        import kfac_jax
    except ImportError as err:  # pragma: no cover - bench extra
        return f"not installed ({err})"
    version = _version("kfac-jax")

    def loss_fn(p, batch):
        inputs, targets = batch
        outputs = task.plain_model.apply({"params": p}, inputs)
        if task.loss == "sigmoid_cross_entropy":
            kfac_jax.register_sigmoid_cross_entropy_loss(outputs, targets)
        else:
            kfac_jax.register_softmax_cross_entropy_loss(outputs, targets)
        return mean_loss(task, p, inputs, targets)

    try:
        opt = kfac_jax.Optimizer(
            value_and_grad_func=jax.value_and_grad(loss_fn),
            l2_reg=0.0,
            use_adaptive_learning_rate=True,
            use_adaptive_momentum=True,
            use_adaptive_damping=True,
            initial_damping=1.0,
            multi_device=False,
            num_burnin_steps=0,
        )
        key = jax.random.key(1)
        batch = (task.inputs, task.targets)
        state = opt.init(params, key, batch)
        opt.step(params, state, key, batch=batch, global_step_int=0)
    except Exception as err:  # the peer's failure is the result
        message = str(err).splitlines()[0][:120]
        return f"kfac-jax {version} fails in its first step: {type(err).__name__}: {message}"
    return f"kfac-jax {version} runs (not yet compared here)"


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


def faster_first_order_layers(task: Task, params, indices) -> bool:
    """True if flax's own layers run Adam faster than the capture layers (patches x matrix
    for convolutions, which XLA:CPU often runs faster than its convolution)."""
    tx = optax.adam(1e-3)
    runs = {
        plain: (make_step(task, "first-order", tx, plain=plain), (params, tx.init(params)), indices)
        for plain in (True, False)
    }
    times = time_per_step(runs, rounds=3)
    return times[True] <= times[False]


def run_task(task: Task, batch: int | None, rounds: int, adam_steps: int, kfac_steps: int):
    n = task.inputs.shape[0]
    params = task.model.init(jax.random.key(0), task.inputs[:2])["params"]
    key = jax.random.key(1)
    long = batch_indices(n, batch, adam_steps)
    short = batch_indices(n, batch, kfac_steps)
    plain = faster_first_order_layers(task, params, long)
    layers = "flax layers" if plain else "patches x matrix layers"

    def first_order(tx):
        return make_step(task, "first-order", tx, plain=plain)

    adam = {}
    for lr in ADAM_LRS:
        tx = optax.adam(lr)
        adam[lr] = trajectory(task, first_order(tx), tx, params, long, key)
    best_adam = min(adam, key=lambda lr: np.nan_to_num(adam[lr][-1], nan=np.inf))
    target = float(adam[best_adam][-1])
    sgd = {}
    for lr in SGD_LRS:
        tx = optax.sgd(lr, momentum=0.9)
        sgd[lr] = trajectory(task, first_order(tx), tx, params, long, key)
    best_sgd = min(sgd, key=lambda lr: np.nan_to_num(sgd[lr][-1], nan=np.inf))

    adam_tx, sgd_tx = optax.adam(best_adam), optax.sgd(best_sgd, momentum=0.9)
    fixed_tx = kfac.optimizer(**task.kfac_config)
    adaptive_tx = kfac.adaptive_optimizer(**task.adaptive_config)
    entries = {
        "Adam": (first_order(adam_tx), adam_tx, f"lr {best_adam:g}, {layers}", [adam[best_adam]]),
        "SGD-momentum": (
            first_order(sgd_tx),
            sgd_tx,
            f"lr {best_sgd:g}, momentum 0.9, {layers}",
            [sgd[best_sgd]],
        ),
    }
    for name, method, tx, setting in (
        ("jaxnum K-FAC, adaptive", "kfac-adaptive", adaptive_tx, _adaptive_setting(task, batch)),
        ("jaxnum K-FAC, fixed lr", "kfac", fixed_tx, _kfac_setting(task, batch)),
    ):
        step = make_step(task, method, tx)
        keys = [jax.random.key(seed) for seed in range(1, 1 + KFAC_SEEDS)]
        entries[name] = (step, tx, setting, trajectories(task, step, tx, params, short, keys))
    times = time_per_step(
        {
            name: (step, (params, tx.init(params)), long)
            for name, (step, tx, _, _) in entries.items()
        },
        rounds,
    )
    adam_wall = adam_steps * times["Adam"]
    rows = []
    for name, (_, _, setting, runs) in entries.items():  # runs: one loss curve per key
        steps = median_steps(runs, target)
        each = [first_reaching(r, target) for r in runs]
        t = times[name]
        rows.append(
            dict(
                optimizer=name,
                setting=setting,
                final=float(np.median([r[-1] for r in runs])),
                horizon=len(runs[0]),
                steps=steps,
                each=each if len(runs) > 1 else None,
                ms=1e3 * t,
                time_ratio=t / times["Adam"],
                wall_ratio=None if steps is None else steps * t / adam_wall,
            )
        )
    return target, rows


def _subset_note(task: Task, batch: int | None) -> str:
    return (
        f", statistics on {CURVATURE_SUBSET} random examples"
        if batch is None and task.inputs.shape[0] > 2 * CURVATURE_SUBSET
        else ""
    )


def _kfac_setting(task: Task, batch: int | None) -> str:
    c = task.kfac_config
    return (
        f"lr {c['learning_rate']:g}, damping {c['damping']:g}, momentum {c['momentum']:g}, "
        f"decay {c['decay']:g}, inverses every {c['inverse_every']}, KL clip 0.01"
        + _subset_note(task, batch)
    )


def _adaptive_setting(task: Task, batch: int | None) -> str:
    c = task.adaptive_config
    return (
        f"adaptive_optimizer: damping {c['damping']:g}, decay {c['decay']:g}, inverses every "
        f"{c['inverse_every']}"
        + (f", F on {GRAM_EXAMPLES} random examples" if _subset_note(task, batch) else "")
        + _subset_note(task, batch)
    )


def _table(target: float, rows: list[dict]) -> str:
    lines = [
        f"Target: Adam's full-data training loss after {ADAM_STEPS} steps = {target:.4f}",
        "",
        "| optimizer | setting | loss at end (steps) | steps to target | fewer than Adam "
        "| ms / step | step time / Adam | wall to target / Adam's |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        steps = "not reached" if r["steps"] is None else str(r["steps"])
        if r["each"] is not None:
            reached = sum(e is not None for e in r["each"])
            steps += " (" + ", ".join("-" if e is None else str(e) for e in r["each"])
            steps += f"; {reached}/{len(r['each'])} reached)"
        fewer = "" if r["steps"] is None else f"{ADAM_STEPS / r['steps']:.1f}x"
        wall = "" if r["wall_ratio"] is None else f"{r['wall_ratio']:.3f}"
        lines.append(
            f"| {r['optimizer']} | {r['setting']} | {r['final']:.4f} ({r['horizon']}) | {steps} "
            f"| {fewer} | {r['ms']:.2f} | {r['time_ratio']:.2f} | {wall} |"
        )
    return "\n".join(lines)


def run(quick: bool = False) -> None:
    from threadpoolctl import threadpool_limits

    jnp.linalg.cholesky(jnp.eye(2)).block_until_ready()  # load jaxlib's LAPACK first
    rounds, adam_steps, kfac_steps = (3, 200, 60) if quick else (7, ADAM_STEPS, KFAC_MAX_STEPS)
    sections = []
    with threadpool_limits(1, user_api="blas"):
        for task in tasks():
            params = task.model.init(jax.random.key(0), task.inputs[:2])["params"]
            peer = kfac_jax_attempt(task, params)
            for batch in (None, MINI_BATCH):
                label = "full batch (1797)" if batch is None else f"mini-batches of {batch}"
                target, rows = run_task(task, batch, rounds, adam_steps, kfac_steps)
                table = _table(target, rows)
                print(f"\n{task.name}, {label}\n{table}\n{peer}", flush=True)
                sections.append(f"### {task.name}, {label}\n\n{table}\n\nkfac-jax: {peer}\n")
    if quick:
        return
    body = "\n".join(
        [
            "## kfac: K-FAC vs Adam, SGD-momentum and kfac-jax (digits, float32)",
            "",
            f"{machine_summary(('jax', 'jaxlib', 'optax', 'flax', 'kfac-jax'))} "
            "`python -m benchmarks kfac` (~10 min).",
            "",
            "Steps to target: full-data training loss after each step first at or below "
            f"Adam's step-1000 loss; for K-FAC the median over {KFAC_SEEDS} keys of its random "
            "draws (sampled targets, statistics subsets), each run's count in brackets, and "
            "the loss at end the median over keys: on the memorised conv classifier a run can "
            "spike and miss the target while another key (or another BLAS kernel's rounding) "
            "reaches it. Time per step: median of "
            f"{rounds} interleaved rounds of a compiled 20-step `lax.scan`. Wall to target: "
            "steps x time per step over Adam's 1000 steps. OpenBLAS (jaxlib's LAPACK, "
            "K-FAC's Cholesky inverses) limited to 1 thread with threadpoolctl; "
            "see the module docstring. Targets (issue 6, full-batch autoencoder): <= 65 "
            "steps, step time <= 2x Adam's, wall <= 1/7.",
            "",
            *sections,
        ]
    )
    write_section("kfac", body)
