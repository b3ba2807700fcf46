"""Compressing a trained MLP with randomized SVD, then adapting it with LoRA from its SVD.

A 64-256-256-10 ReLU network is trained on scikit-learn's digits (8x8 images,
1,200 for training, 597 held out) by full-batch Adam for a few seconds.

1. Compression. Its largest weight, the 256x256 hidden kernel, is replaced by
   the rank-r factorisation from `jaxnum.linalg.randomized_svd` (4 power
   iterations, 10 oversampling columns). Printed per rank: the parameters
   kept, r (m + n), against m n; the relative Frobenius error; the error of the
   best rank-r matrix, which by Eckart and Young (1936) is
   sqrt(sum_{i>r} s_i^2) / ||W||_F with the singular values s_i of
   `np.linalg.svd` in float64, so the ratio of the two says how close the
   randomized factorisation comes to optimal; and the held-out accuracy of the
   network with the compressed kernel. The errors are large (0.78 at rank 8)
   while from rank 8 on the accuracy stays within a point of the full
   network's: much of ||W||_F is the kernel's random initialisation W_0, a
   matrix with no dominant directions, and the last column, the same error
   for the trained change W - W_0, shows that change to be closer to low rank
   than W itself.

2. Adaptation. The task shifts: every image is rotated by 90 degrees, and the
   network's accuracy drops to chance level. Only rank-r adapters on the three
   kernels are trained (`jaxnum.lora.count` gives trainable against total),
   with Adam for `--lora-steps` full-batch steps at each of three learning
   rates, from two starts: `jaxnum.lora.split` (the adapters hold each
   kernel's top-r singular directions, A = U_r sqrt(S_r), B = sqrt(S_r) V_r^T,
   the frozen part is the rest: PiSSA, Meng et al. 2024) and the LoRA of Hu
   et al. (2022), A Gaussian with variance 1/d_in and B zero, the kernel
   frozen whole. Both start from the very same function. Printed: the
   training loss after those steps and the held-out accuracy, with full
   fine-tuning of all parameters beside them for reference.

Run: python examples/rsvd_lora_compression.py  (about 15 s on 2 CPU cores)
"""

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

import jaxnum as jn
from jaxnum import lora

RANKS = (2, 4, 8, 16, 32, 64)
LEARNING_RATES = (1e-3, 3e-3, 1e-2)
KERNEL = "Dense_1"  # the 256x256 hidden kernel, the largest


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(256)(x))
        x = nn.relu(nn.Dense(256)(x))
        return nn.Dense(10)(x)


MODEL = MLP()


def loss(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(MODEL.apply(params, x), y).mean()


@jax.jit
def accuracy(params, x, y):
    return jnp.mean(jnp.argmax(MODEL.apply(params, x), axis=-1) == y)


def adapter_loss(adapters, frozen, x, y):
    return loss(lora.merge(frozen, adapters), x, y)


@jax.jit(static_argnames=("steps", "loss_of"))
def fit(theta, data, learning_rate, *, steps, loss_of=loss):
    """Full-batch Adam on ``loss_of(theta, *data)`` in one compiled scan."""
    tx = optax.adam(learning_rate)

    def step(carry, _):
        theta, state = carry
        grads = jax.grad(loss_of)(theta, *data)
        updates, state = tx.update(grads, state, theta)
        return (optax.apply_updates(theta, updates), state), None

    (theta, _), _ = jax.lax.scan(step, (theta, tx.init(theta)), None, length=steps)
    return theta, loss_of(theta, *data)


def with_kernel(params, kernel):
    return {"params": {**params["params"], KERNEL: {**params["params"][KERNEL], "kernel": kernel}}}


def rotate(x):
    return jnp.rot90(x.reshape(-1, 8, 8), axes=(1, 2)).reshape(-1, 64)


@jax.jit(static_argnums=1)
def truncate(W, rank, key):
    """The rank-``rank`` randomized SVD of W, multiplied out, and its relative Frobenius error."""
    U, S, Vt = jn.linalg.randomized_svd(W, rank, key=key)
    approx = (U * S) @ Vt
    return approx, jnp.linalg.norm(W - approx) / jnp.linalg.norm(W)


def eckart_young(singular_values, rank):
    """The smallest relative Frobenius error of any rank-``rank`` matrix."""
    s2 = np.asarray(singular_values) ** 2
    return float(np.sqrt(np.sum(s2[rank:]) / np.sum(s2)))


def print_row(label, cells):
    print((f"{label:30s}" + "".join(f"{cell:17s}" for cell in cells)).rstrip())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=500, help="Adam steps, training (500)")
    parser.add_argument("--lora-steps", type=int, default=100, help="Adam steps, adaptation (100)")
    parser.add_argument("--rank", type=int, default=4, help="LoRA rank (4)")
    parser.add_argument(
        "--quick", action="store_true", help="300 training and 50 adaptation steps (the tests')"
    )
    args = parser.parse_args()
    if args.quick:
        args.train_steps, args.lora_steps = 300, 50

    digits = load_digits()
    x = jnp.asarray(digits.data / 16.0, jnp.float32)
    y = jnp.asarray(digits.target, jnp.int32)
    order = np.asarray(jax.random.permutation(jax.random.key(0), len(y)))
    train, test = order[:1200], order[1200:]

    params0 = jax.jit(MODEL.init)(jax.random.key(1), x[:1])
    params, train_loss = fit(params0, (x[train], y[train]), 1e-3, steps=args.train_steps)
    full_acc = float(accuracy(params, x[test], y[test]))
    print(
        f"trained 64-256-256-10 MLP: {args.train_steps} Adam steps, training loss "
        f"{float(train_loss):.4f}, held-out accuracy {full_acc:.3f}"
    )

    W = params["params"][KERNEL]["kernel"]
    W0 = params0["params"][KERNEL]["kernel"]
    delta = W - W0
    m, n = W.shape
    s_W = np.linalg.svd(np.asarray(W, np.float64), compute_uv=False)  # the reference, float64
    print(f"\ncompressing the {m}x{n} hidden kernel ({m * n:,} parameters), randomized SVD:")
    print("rank  kept    share   rel. error  optimum (Eckart-Young)  ratio   accuracy   W-W0 error")
    for i, r in enumerate(RANKS):
        key = jax.random.fold_in(jax.random.key(3), i)
        approx, err = truncate(W, r, key)
        err, opt, delta_err = float(err), eckart_young(s_W, r), float(truncate(delta, r, key)[1])
        acc = float(accuracy(with_kernel(params, approx), x[test], y[test]))
        kept = r * (m + n)
        print(
            f"{r:4d}  {kept:6,d}  {kept / (m * n):5.1%}   {err:.4f}      {opt:.4f}"
            f"                  {err / opt:.4f}  {acc:.3f}      {delta_err:.4f}"
        )
    norm = float(jnp.linalg.norm(W))
    print(
        f"||W0||_F / ||W||_F = {float(jnp.linalg.norm(W0)) / norm:.2f}, "
        f"||W - W0||_F / ||W||_F = {float(jnp.linalg.norm(delta)) / norm:.2f}"
    )

    xs, ys = rotate(x), y
    before = float(accuracy(params, xs[test], ys[test]))
    # lora.split on every 2-D leaf (the 3 kernels), jitted: the rank is static
    frozen_svd, adapters_svd = jax.jit(lora.split, static_argnums=1)(params, args.rank)
    keys = jax.random.split(jax.random.key(5), len(adapters_svd))
    adapters_lora = {
        path: lora.Adapter(
            jax.random.normal(k, ad.A.shape) / np.sqrt(ad.A.shape[0]), jnp.zeros_like(ad.B)
        )
        for k, (path, ad) in zip(keys, adapters_svd.items(), strict=True)
    }
    c = lora.count(frozen_svd, adapters_svd)
    print(
        f"\nshifted task: digits rotated by 90 degrees (held-out accuracy now {before:.3f}); "
        f"rank-{args.rank} adapters on the 3 kernels: {c.trainable:,} trainable of "
        f"{c.total:,} parameters ({c.reduction:.0f}x fewer)"
    )
    start = [
        float(jnp.max(jnp.abs(MODEL.apply(lora.merge(f, a), xs) - MODEL.apply(params, xs))))
        for f, a in ((frozen_svd, adapters_svd), (params, adapters_lora))
    ]
    print(f"both start from the trained network (largest logit change {max(start):.1e})")

    runs = {
        "LoRA, SVD init (lora.split)": (frozen_svd, adapters_svd),
        "LoRA, random A / zero B": (params, adapters_lora),
    }
    print(
        f"loss on the rotated training set after {args.lora_steps} Adam steps (held-out accuracy)"
    )
    print_row("", [f"lr {lr:g}" for lr in LEARNING_RATES])
    for name, (frozen, adapters) in runs.items():
        row = []
        for lr in LEARNING_RATES:
            data = (frozen, xs[train], ys[train])
            tuned, value = fit(adapters, data, lr, steps=args.lora_steps, loss_of=adapter_loss)
            acc = float(accuracy(lora.merge(frozen, tuned), xs[test], ys[test]))
            row.append(f"{float(value):.4f} ({acc:.3f})")
        print_row(name, row)
    row = []
    for lr in LEARNING_RATES:
        tuned, value = fit(params, (xs[train], ys[train]), lr, steps=args.lora_steps)
        row.append(f"{float(value):.4f} ({float(accuracy(tuned, xs[test], ys[test])):.3f})")
    print_row(f"full fine-tuning ({c.total:,})", row)


if __name__ == "__main__":
    main()
