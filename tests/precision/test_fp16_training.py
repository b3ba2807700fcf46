"""float16 training whose gradients underflow: loss scaling recovers the float32 result."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnum as jn

# The loss is multiplied by 2**-24 so that, in a float16 backward pass, every
# cotangent falls below float16's smallest subnormal (6e-8) and flushes to zero.
# SGD's learning rate is divided by the same factor, so in float32 the run is
# plain SGD on the unscaled loss.
LOSS_FACTOR = 2.0**-24
LEARNING_RATE = 0.05 / LOSS_FACTOR
STEPS = 300


class MLP(nn.Module):
    width: int
    policy: jn.Policy = jn.Policy()

    @nn.compact
    def __call__(self, x):
        for _ in range(2):
            x = nn.tanh(nn.Dense(self.width, **self.policy.flax_kwargs())(x))
        return self.policy.cast_to_output(nn.Dense(1, **self.policy.flax_kwargs())(x))


@pytest.fixture(scope="module")
def problem():
    kx, kt, kp = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (256, 8))
    teacher = MLP(16)
    y = teacher.apply(teacher.init(kt, x), x)
    y = y / y.std()
    params = MLP(64).init(kp, x)
    return x, y, params


def _loss_fn(policy, x, y):
    model = MLP(64, policy)

    def loss(params):
        return jnp.mean((model.apply(params, x) - y) ** 2) * LOSS_FACTOR

    return loss


def _train(problem, policy, tx, scaled):
    x, y, params = problem
    loss = _loss_fn(policy, x, y)
    grad_fn = jn.scaled_value_and_grad(loss) if scaled else (lambda s, p: (None, jax.grad(loss)(p)))

    @jax.jit
    def step(params, state):
        _, grads = grad_fn(state, params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for _ in range(STEPS):
        params, state = step(params, state)
    return float(_loss_fn(jn.Policy(), x, y)(params) / LOSS_FACTOR), state


@pytest.mark.slow
def test_float16_gradients_underflow_without_scaling(problem):
    x, y, params = problem
    grads = jax.grad(_loss_fn(jn.Policy.parse("p=f32,c=f16,o=f32"), x, y))(params)
    zeros = np.mean(np.concatenate([np.ravel(g) == 0 for g in jax.tree.leaves(grads)]))
    assert zeros > 0.95


def test_loss_scaling_recovers_the_float32_loss(problem):
    fp16 = jn.Policy.parse("params=float32,compute=float16,output=float32")
    initial = float(_loss_fn(jn.Policy(), problem[0], problem[1])(problem[2]) / LOSS_FACTOR)
    fp32_loss, _ = _train(problem, jn.Policy(), optax.sgd(LEARNING_RATE), scaled=False)
    unscaled_loss, _ = _train(problem, fp16, optax.sgd(LEARNING_RATE), scaled=False)
    scaled_loss, state = _train(
        problem, fp16, jn.loss_scaling(optax.sgd(LEARNING_RATE)), scaled=True
    )
    assert fp32_loss < 0.2 * initial  # the float32 run really trains
    assert abs(scaled_loss - fp32_loss) <= 0.05 * fp32_loss
    assert unscaled_loss > 5 * fp32_loss  # measurably worse: it barely moves
    assert int(state.total_skipped) == 0


def test_bfloat16_trains_without_scaling(problem):
    bf16 = jn.Policy.parse("params=float32,compute=bfloat16,output=float32")
    fp32_loss, _ = _train(problem, jn.Policy(), optax.sgd(LEARNING_RATE), scaled=False)
    bf16_loss, _ = _train(problem, bf16, optax.sgd(LEARNING_RATE), scaled=False)
    assert abs(bf16_loss - fp32_loss) <= 0.1 * fp32_loss
