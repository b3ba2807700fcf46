"""K-FAC vs Adam vs SGD-momentum on the deep autoencoder task, scikit-learn's digits.

The classic K-FAC benchmark (Martens and Grosse 2015, Sec. 13) at small size:
a 64-128-32-128-64 tanh autoencoder with Bernoulli outputs (sigmoid
cross-entropy summed over the 64 pixels, mean over images), full batch of all
1797 images, float32. Adam's learning rate is the best of {1e-3, 3e-3, 1e-2,
3e-2} at step 1000; K-FAC (true Fisher from sampled targets, statistics from
256 random images per step) in its two forms: jaxnum.kfac.adaptive_optimizer
(step size and momentum from the exact quadratic model) and
jaxnum.kfac.optimizer (a fixed learning rate and KL clip). Printed: each
optimiser's loss and the number of
steps K-FAC needs to reach Adam's step-1000 loss; with matplotlib installed,
the convergence plot is written to kfac_digits_autoencoder.png (or ``--plot PATH``).
Sizes: ``--steps N`` Adam and SGD steps (1000; K-FAC runs N / 5), ``--quick`` for
300 (about 10 s on 2 cores). Timings side by side: ``python -m benchmarks kfac``.
"""

import argparse
import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from sklearn.datasets import load_digits

from jaxnum import kfac


class Autoencoder(nn.Module):
    @nn.compact
    def __call__(self, x):
        for i, width in enumerate((128, 32, 128)):
            x = jnp.tanh(kfac.Dense(width, name=f"dense{i}")(x))
        return kfac.Dense(64, name="logits")(x)


def main(adam_steps=1000, kfac_steps=200, plot_path="kfac_digits_autoencoder.png"):
    x = jnp.asarray(load_digits().data / 16.0, jnp.float32)
    model = Autoencoder()
    params0 = model.init(jax.random.key(0), x)["params"]
    loss_name = "sigmoid_cross_entropy"
    stats_fn = kfac.value_grad_and_stats(model, loss_name, curvature_batch=256)

    def loss(p):
        logits = model.apply({"params": p}, x)
        return jnp.mean(jnp.sum(optax.sigmoid_binary_cross_entropy(logits, x), axis=1))

    def first_order(optimizer, steps):
        """``lr -> losses``: compiled once for every learning rate (a traced hyperparameter)."""

        @jax.jit
        def train(lr):
            tx = optax.inject_hyperparams(optimizer)(learning_rate=lr)

            def step(carry, _):
                p, s = carry
                value, grads = jax.value_and_grad(loss)(p)
                updates, s = tx.update(grads, s, p)
                return (optax.apply_updates(p, updates), s), value

            return jax.lax.scan(step, (params0, tx.init(params0)), None, length=steps)[1]

        return train

    def run_kfac(tx, steps, adaptive):
        def step(carry, key):
            p, s = carry
            value, grads, stats = stats_fn(p, x, x, key)
            if adaptive:  # the exact Fisher's 2 x 2 Gram on 64 random images picks alpha, mu
                gram = kfac.fisher_gram_fn(model, loss_name, p, x, key=key, examples=64)
                updates, s = tx.update(
                    grads, s, p, curvature=stats, fisher_gram=gram, value=value, value_fn=loss
                )
            else:
                updates, s = tx.update(grads, s, p, curvature=stats)
            return (optax.apply_updates(p, updates), s), value

        keys = jax.random.split(jax.random.key(1), steps)
        _, losses = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), keys))(params0)
        return losses

    start = time.perf_counter()

    def progress(what, losses):
        print(
            f"  {what}: loss {float(losses[-1]):.4f} ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
        return losses

    adam_train = first_order(optax.adam, adam_steps)
    adam = {
        lr: progress(f"adam lr {lr:g}, {adam_steps} steps", adam_train(lr))
        for lr in (1e-3, 3e-3, 1e-2, 3e-2)
    }
    best_lr = min(adam, key=lambda lr: float(adam[lr][-1]))
    sgd_momentum = functools.partial(optax.sgd, momentum=0.9)
    sgd = progress("sgd-momentum lr 0.1", first_order(sgd_momentum, adam_steps)(0.1))
    specs = {
        "kfac (adaptive)": (
            kfac.adaptive_optimizer(damping=3e-3, decay=0.9, inverse_every=5),
            True,
        ),
        "kfac (lr 1, clip)": (
            kfac.optimizer(1.0, damping=0.03, momentum=0.8, decay=0.9, inverse_every=5),
            False,
        ),
    }
    runs = {}
    for name, (tx, adaptive) in specs.items():
        print(f"  {name}: compiling and running {kfac_steps} steps ...", flush=True)
        runs[name] = progress(f"{name}, {kfac_steps} steps", run_kfac(tx, kfac_steps, adaptive))
    print()

    target = float(adam[best_lr][-1])
    print(f"adam (lr {best_lr:g})     loss at step {adam_steps}: {target:.4f}")
    print(f"sgd-momentum (lr 0.1) loss at step {adam_steps}: {float(sgd[-1]):.4f}")
    for name, losses in runs.items():
        reached = [i + 1 for i, v in enumerate(losses) if float(v) <= target]
        print(f"{name:21} loss at step {kfac_steps}: {float(losses[-1]):.4f}")
        if reached:
            print(
                f"  reaches adam's step-{adam_steps} loss in {reached[0]} steps "
                f"({adam_steps / reached[0]:.1f}x fewer)"
            )
        else:
            print(f"  does not reach adam's step-{adam_steps} loss in {kfac_steps} steps")
    curves = {f"Adam (lr {best_lr:g})": adam[best_lr], "SGD-momentum": sgd}
    plot(plot_path, curves | {f"K-FAC {k[5:]}": v for k, v in runs.items()})


def plot(path, curves):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, losses in curves.items():
        ax.plot(range(1, len(losses) + 1), losses, label=label)
    ax.set(xscale="log", xlabel="step", ylabel="training loss (nats per image)")
    ax.set_title("Digits autoencoder 64-128-32-128-64, full batch")
    ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"plot written to {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="Adam and SGD steps (1000)")
    parser.add_argument("--quick", action="store_true", help="300 steps (K-FAC 60)")
    parser.add_argument("--plot", default="kfac_digits_autoencoder.png", help="plot path")
    args = parser.parse_args()
    steps = 300 if args.quick else args.steps
    main(adam_steps=steps, kfac_steps=max(steps // 5, 1), plot_path=args.plot)
