"""Problems shared by the benchmarks: synthetic data, so every run sees the same numbers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import optax

IN_FEATURES, CLASSES = 784, 10


class MLP(nn.Module):
    """Dense layers of the given widths with an activation, then a 10-way output."""

    widths: Sequence[int]
    activation: Callable[[jax.Array], jax.Array]

    @nn.compact
    def __call__(self, x):
        for width in self.widths:
            x = self.activation(nn.Dense(width)(x))
        return nn.Dense(CLASSES)(x)


def mlp_classification(
    batch: int, widths: Sequence[int], activation: Callable[[jax.Array], jax.Array]
) -> tuple[Any, Callable[[Any], jax.Array]]:
    """An MLP on a fixed random batch (784 features, 10 classes) with softmax cross-entropy.

    Returns:
      ``(params, loss_fn)`` with ``loss_fn(params) -> scalar`` over the batch.
    """
    kx, ky, kp = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (batch, IN_FEATURES))
    labels = jax.random.randint(ky, (batch,), 0, CLASSES)
    model = MLP(tuple(widths), activation)
    params = model.init(kp, x)

    def loss_fn(p):
        logits = model.apply(p, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return params, loss_fn
