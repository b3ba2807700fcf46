"""float16 training of a Flax MLP with dynamic loss scaling, clipping and adam.

Trains the same model three ways on a synthetic regression problem and prints
the final loss of each: float32; float16 compute without loss scaling; float16
compute with `jn.loss_scaling`. Midway, one example is blown up to 3e4 times
its size, so the float16 forward pass overflows: the step is skipped, and
`jn.first_nonfinite` names the op that made the first inf.

Run: python examples/mixed_precision_training.py  [--steps N | --quick]
"""

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import jaxnum as jn

STEPS = 300
# Small per-example losses: their float16 cotangents underflow unless scaled.
LOSS_WEIGHT = 2.0**-20


class MLP(nn.Module):
    policy: jn.Policy

    @nn.compact
    def __call__(self, x):
        kw = self.policy.flax_kwargs()
        x = nn.gelu(nn.Dense(128, **kw)(x))
        x = nn.gelu(nn.Dense(128, **kw)(x))
        return self.policy.cast_to_output(nn.Dense(1, **kw)(x))


def poison(x):
    """One example 3e4 times too large: finite in float16, but its activations overflow."""
    return x.at[0].multiply(3e4)


def make_data(key):
    kx, kw = jax.random.split(key)
    x = jax.random.normal(kx, (512, 16))
    w = jax.random.normal(kw, (16, 1))
    return x, jnp.sin(x @ w) + 0.1 * x[:, :1] ** 2


def train(policy: jn.Policy, scaled: bool, x, y, steps: int, poison_step: int | None = None):
    model = MLP(policy)
    params = model.init(jax.random.key(1), x)

    def loss_fn(p, xb):
        return jnp.mean((model.apply(p, xb) - y) ** 2) * LOSS_WEIGHT

    inner = optax.chain(jn.clip_by_global_norm(1.0), optax.adam(1e-3, eps=1e-12))
    tx = jn.loss_scaling(inner) if scaled else inner
    state = tx.init(params)
    grad_fn = (
        jn.scaled_value_and_grad(loss_fn)
        if scaled
        else lambda s, p, xb: jax.value_and_grad(loss_fn)(p, xb)
    )

    @jax.jit
    def step(params, state, xb):
        loss, grads = grad_fn(state, params, xb)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    for i in range(steps):
        xb = poison(x) if i == poison_step else x
        params, state, _ = step(params, state, xb)
    return params, state, float(loss_fn(params, x) / LOSS_WEIGHT)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS, help=f"steps per run ({STEPS})")
    parser.add_argument("--quick", action="store_true", help="150 steps per run")
    args = parser.parse_args()
    steps = 150 if args.quick else args.steps
    x, y = make_data(jax.random.key(0))
    fp32 = jn.Policy()
    fp16 = jn.Policy.parse("params=float32,compute=float16,output=float32")
    print("fraction of float32 gradients that underflow in float16: ", end="")
    grads = jax.grad(lambda p: jnp.mean((MLP(fp32).apply(p, x) - y) ** 2) * LOSS_WEIGHT)(
        MLP(fp32).init(jax.random.key(1), x)
    )
    print(f"{float(jn.underflow_fraction(grads, jnp.float16)):.2f}")

    _, _, loss32 = train(fp32, False, x, y, steps)
    _, _, loss16 = train(fp16, False, x, y, steps)
    _, state, loss16s = train(fp16, True, x, y, steps, poison_step=steps // 2)
    print(f"float32                      final loss {loss32:.3e}")
    print(f"float16, no loss scaling     final loss {loss16:.3e}")
    print(
        f"float16 + jn.loss_scaling    final loss {loss16s:.3e}  "
        f"(scale {float(state.scale):g}, skipped steps {int(state.total_skipped)})"
    )

    def forward(xb):
        return MLP(fp16).apply(MLP(fp16).init(jax.random.key(1), x), xb)

    print("first non-finite op on the poisoned batch:")
    print(jn.first_nonfinite(forward, poison(x)))


if __name__ == "__main__":
    main()
