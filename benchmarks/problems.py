"""Problems shared by the benchmarks: synthetic data, so every run sees the same numbers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
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


# ---------------------------------------------------------------- optimisation (lbfgs, newton)

LAMBDA = 1e-3  # the digits problem's L2 weight


def rosenbrock(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def rosenbrock_np(x):
    r = x[1:] - x[:-1] ** 2
    f = np.sum(100.0 * r**2 + (1.0 - x[:-1]) ** 2)
    g = np.zeros_like(x)
    g[:-1] = -400.0 * x[:-1] * r - 2.0 * (1.0 - x[:-1])
    g[1:] += 200.0 * r
    return f, g


def logistic(params, X, Y):
    z = X @ params["W"] + params["b"]
    nll = jnp.mean(jax.nn.logsumexp(z, axis=1) - jnp.sum(Y * z, axis=1))
    return nll + 0.5 * LAMBDA * jnp.sum(params["W"] ** 2)


def logistic_np(v, X, Y):
    """Value and gradient of :func:`logistic` on the flat vector (W row-major, then b)."""
    W, b = v[:640].reshape(64, 10), v[640:]
    z = X @ W + b
    z -= z.max(axis=1, keepdims=True)
    lse = np.log(np.sum(np.exp(z), axis=1, keepdims=True))
    f = np.mean(lse[:, 0] - np.sum(Y * z, axis=1)) + 0.5 * LAMBDA * np.sum(W**2)
    dz = (np.exp(z - lse) - Y) / X.shape[0]
    gW = X.T @ dz + LAMBDA * W
    return f, np.concatenate([gW.ravel(), dz.sum(axis=0)])


@dataclass(frozen=True)
class Problem:
    name: str
    fun: Callable  # jax objective fun(x, *args)
    x0: Callable  # dtype -> pytree
    args: Callable  # dtype -> tuple of jax arrays
    numpy_fg: Callable  # flat float64 x -> (f, g)
    flat_x0: np.ndarray


def optimisation_problems() -> list[Problem]:
    """Rosenbrock n=100 and n=1000 from (-1.2, 1, ...), and L2-regularised multinomial
    logistic regression on scikit-learn's digits (from zeros)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = digits.data / 16.0
    Y = np.eye(10)[digits.target]
    out = []
    for n in (100, 1000):
        x0 = np.tile([-1.2, 1.0], n // 2)
        out.append(
            Problem(
                f"Rosenbrock n={n}",
                rosenbrock,
                lambda dt, x0=x0: jnp.asarray(x0, dt),
                lambda dt: (),
                rosenbrock_np,
                x0,
            )
        )
    out.append(
        Problem(
            "digits logistic (650 params)",
            logistic,
            lambda dt: {"W": jnp.zeros((64, 10), dt), "b": jnp.zeros(10, dt)},
            lambda dt: (jnp.asarray(X, dt), jnp.asarray(Y, dt)),
            lambda v: logistic_np(v, X, Y),
            np.zeros(650),
        )
    )
    return out


def unflatten(v, like):
    """The flat numpy vector ``v`` as a pytree shaped and typed like ``like``."""
    leaves, treedef = jax.tree.flatten(like)
    parts = np.split(v, np.cumsum([x.size for x in leaves])[:-1])
    return jax.tree.unflatten(
        treedef,
        [jnp.asarray(a.reshape(b.shape), b.dtype) for a, b in zip(parts, leaves, strict=True)],
    )
