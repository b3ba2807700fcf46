"""Claim: K-FAC inverts a Kronecker product by its factors, and reaches Adam's loss in fewer steps.

Two measurements (Martens and Grosse, "Optimizing neural networks with
Kronecker-factored approximate curvature", ICML 2015):

1. The identity behind K-FAC, (A kron G)^-1 = A^-1 kron G^-1 (Sec. 3), checked
   on random SPD factors in float64: A^-1 W G^-1 by Cholesky solves with the
   factors (what ``kfac.scale_by_kfac`` applies to each layer's gradient)
   against the dense solve of (A kron G) vec(W), and the cost of each as the
   factor size s grows: the dense solve is O(s^6) flops, the factored one
   O(s^3).
2. Steps to a loss (the "10x fewer steps than first-order methods" of Sec. 13):
   a 64-96-16-96-64 tanh autoencoder with Bernoulli outputs on synthetic
   images (each pixel a sigmoid of a random two-layer map of an 8-dimensional
   Gaussian code; nothing downloaded), full batch. Adam with the best of a
   learning-rate grid runs ``adam_steps`` steps; adaptive K-FAC
   (``kfac.adaptive_optimizer``: step size and momentum from the exact quadratic
   model, Sec. 7, and Levenberg-Marquardt damping) runs until it reaches
   Adam's final loss or ``kfac_steps``. The ratio of step counts is the claim's
   figure; the time per step is reported beside it, since a K-FAC step costs
   more than an Adam step.
"""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnum import kfac
from jaxnum.tour._common import median_seconds, pyplot, reference_slope
from jaxnum.tour.result import ClaimResult

PIXELS, CODE = 64, 8


@dataclass(frozen=True)
class Config:
    """Sizes: identity check, cost sweep, training run."""

    identity_sizes: tuple[int, ...] = (4, 8, 16)
    cost_sizes: tuple[int, ...] = (8, 12, 16, 24, 32)
    num_images: int = 1024
    adam_steps: int = 1000
    adam_lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2)
    kfac_steps: int = 200
    repeats: int = 5

    @classmethod
    def quick(cls) -> Config:
        return cls(
            identity_sizes=(4, 8),
            cost_sizes=(8, 12, 16, 24),
            num_images=256,
            adam_steps=200,
            adam_lrs=(3e-3, 1e-2),
            kfac_steps=40,
            repeats=3,
        )

    def __post_init__(self):
        if not (self.identity_sizes and self.cost_sizes and self.adam_lrs):
            raise ValueError("Config: sizes and learning rates must not be empty")
        if len(set(self.cost_sizes)) < 4:
            raise ValueError(
                f"Config: cost_sizes needs >= 4 sizes for a slope, got {self.cost_sizes}"
            )
        if min(*self.identity_sizes, *self.cost_sizes) < 2:
            raise ValueError("Config: factor sizes must be >= 2")
        if min(self.num_images, self.adam_steps, self.kfac_steps, self.repeats) < 1:
            raise ValueError("Config: counts must be >= 1")


def _spd(key, size, dtype):
    M = jax.random.normal(key, (size, 2 * size), dtype)
    return M @ M.T / (2 * size) + 0.1 * jnp.eye(size, dtype=dtype)


def _dense_solve(A, G, W):
    return jnp.linalg.solve(jnp.kron(A, G), W.ravel()).reshape(W.shape)


def _factored(A, G, W):
    """``A^-1 W G^-1`` (G symmetric) by Cholesky solves with the factors."""
    solve = jax.scipy.linalg.cho_solve
    left = solve(jax.scipy.linalg.cho_factor(A), W)
    return solve(jax.scipy.linalg.cho_factor(G), left.T).T


def _median_seconds(fn, args, repeats):
    compiled = jax.jit(fn).lower(*args).compile()
    return median_seconds(lambda: compiled(*args), repeats)


def _identity_and_cost(config: Config, key):
    errors, dense_s, factored_s = {}, {}, {}
    with jax.enable_x64(True):
        for s in sorted({*config.identity_sizes, *config.cost_sizes}):
            ka, kg, kw = jax.random.split(jax.random.fold_in(key, s), 3)
            A, G = _spd(ka, s, jnp.float64), _spd(kg, s, jnp.float64)
            W = jax.random.normal(kw, (s, s), jnp.float64)
            if s in config.identity_sizes:
                dense, factored = _dense_solve(A, G, W), _factored(A, G, W)
                errors[s] = float(jnp.linalg.norm(dense - factored) / jnp.linalg.norm(dense))
            if s in config.cost_sizes:
                dense_s[s] = _median_seconds(_dense_solve, (A, G, W), config.repeats)
                factored_s[s] = _median_seconds(_factored, (A, G, W), config.repeats)
    return errors, dense_s, factored_s


class _Autoencoder(nn.Module):
    @nn.compact
    def __call__(self, x):
        for i, width in enumerate((96, 16, 96)):
            x = jnp.tanh(kfac.Dense(width, name=f"dense{i}")(x))
        return kfac.Dense(PIXELS, name="logits")(x)


def _images(key, num_images):
    kz, k1, k2 = jax.random.split(key, 3)
    z = jax.random.normal(kz, (num_images, CODE))
    hidden = jnp.tanh(z @ jax.random.normal(k1, (CODE, 32)))
    return jax.nn.sigmoid(2.0 * hidden @ jax.random.normal(k2, (32, PIXELS)) / np.sqrt(32))


def _training(config: Config, key):
    k_data, k_init, k_kfac = jax.random.split(key, 3)
    x = _images(k_data, config.num_images)
    model = _Autoencoder()
    params0 = model.init(k_init, x)["params"]
    loss_name = "sigmoid_cross_entropy"
    stats_fn = kfac.value_grad_and_stats(model, loss_name)

    def loss(p):
        logits = model.apply({"params": p}, x)
        return jnp.mean(jnp.sum(optax.sigmoid_binary_cross_entropy(logits, x), axis=1))

    def adam_run(lr):
        tx = optax.adam(lr)

        def step(carry, _):
            p, s = carry
            value, grads = jax.value_and_grad(loss)(p)
            updates, s = tx.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), value

        return jax.lax.scan(step, (params0, tx.init(params0)), None, length=config.adam_steps)[1]

    tx = kfac.adaptive_optimizer(damping=3e-3, decay=0.9, inverse_every=5)

    def kfac_step(carry, key):
        p, s = carry
        value, grads, stats = stats_fn(p, x, x, key)
        gram = kfac.fisher_gram_fn(model, loss_name, p, x, key=key, examples=64)
        updates, s = tx.update(
            grads, s, p, curvature=stats, fisher_gram=gram, value=value, value_fn=loss
        )
        return (optax.apply_updates(p, updates), s), value

    def kfac_run(keys):
        return jax.lax.scan(kfac_step, (params0, tx.init(params0)), keys)[1]

    keys = jax.random.split(k_kfac, config.kfac_steps)
    adam = {lr: np.asarray(jax.jit(adam_run)(lr)) for lr in config.adam_lrs}
    best_lr = min(adam, key=lambda lr: float(adam[lr][-1]))
    kfac_losses = np.asarray(jax.jit(kfac_run)(keys))

    # Time per step of each, compiled, one step from the initial state.
    adam_tx = optax.adam(best_lr)

    def adam_one(p, s):
        grads = jax.grad(loss)(p)
        updates, s = adam_tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s

    adam_step_s = _median_seconds(adam_one, (params0, adam_tx.init(params0)), config.repeats)
    kfac_step_s = _median_seconds(
        lambda c, k: kfac_step(c, k)[0], ((params0, tx.init(params0)), keys[0]), config.repeats
    )
    return adam, best_lr, kfac_losses, adam_step_s, kfac_step_s


def _step_cost_text(kfac_over_adam: float) -> str:
    """What one K-FAC step costs against one Adam step, read from the measured ratio."""
    if kfac_over_adam > 1.1:
        return f"each K-FAC step costs {kfac_over_adam:.1f}x an Adam step"
    if kfac_over_adam < 0.9:
        return f"each K-FAC step costs less than an Adam step here ({kfac_over_adam:.2f}x)"
    return f"each K-FAC step costs about an Adam step ({kfac_over_adam:.2f}x)"


def run(config: Config, key) -> tuple[ClaimResult, object]:
    """The Kronecker identity and cost sweep, then K-FAC vs Adam steps to Adam's final loss."""
    k_identity, k_train = jax.random.split(key)
    errors, dense_s, factored_s = _identity_and_cost(config, k_identity)
    adam, best_lr, kfac_losses, adam_step_s, kfac_step_s = _training(config, k_train)
    target = float(adam[best_lr][-1])
    reached = np.flatnonzero(kfac_losses <= target)
    kfac_steps_needed = int(reached[0]) + 1 if reached.size else None
    step_ratio = config.adam_steps / kfac_steps_needed if kfac_steps_needed else None
    wall_ratio = (
        kfac_steps_needed * kfac_step_s / (config.adam_steps * adam_step_s)
        if kfac_steps_needed
        else None
    )
    sizes = sorted(dense_s)
    slope_dense = float(np.polyfit(np.log(sizes), np.log([dense_s[s] for s in sizes]), 1)[0])
    slope_factored = float(np.polyfit(np.log(sizes), np.log([factored_s[s] for s in sizes]), 1)[0])
    speedup = dense_s[sizes[-1]] / factored_s[sizes[-1]]
    identity_ok = max(errors.values()) < 1e-10
    if step_ratio is not None and step_ratio >= 10:
        steps_verdict = "holds"
    elif step_ratio is not None and step_ratio > 1:
        steps_verdict = "holds partly"
    else:
        steps_verdict = "does not hold here"
    verdict = steps_verdict if identity_ok else "holds partly"
    steps_text = (
        f"K-FAC reached Adam's step-{config.adam_steps} loss {target:.3f} (lr {best_lr:g}) in "
        f"{kfac_steps_needed} steps ({step_ratio:.1f}x fewer) at {kfac_step_s / adam_step_s:.1f}x "
        f"Adam's time per step (wall {wall_ratio:.2f}x)"
        if kfac_steps_needed
        else f"K-FAC did not reach Adam's step-{config.adam_steps} loss {target:.3f} in "
        f"{config.kfac_steps} steps (its last {kfac_losses[-1]:.3f})"
    )
    measured = (
        f"(A kron G)^-1 vec(W) vs A^-1 W G^-1: max relative difference "
        f"{max(errors.values()):.1e} (float64, s = {list(errors)}); solve time ~ s^"
        f"{slope_dense:.1f} dense vs s^{slope_factored:.1f} factored over s = {sizes} (flop "
        f"counts s^6 and s^3; {_cost_note(slope_dense)}), the dense {speedup:.0f}x the factored at "
        f"s = {sizes[-1]} (matrix {sizes[-1] ** 2} x {sizes[-1] ** 2}). " + steps_text
    )
    result = ClaimResult(
        claim="K-FAC: (A kron G)^-1 = A^-1 kron G^-1, and K-FAC reaches Adam's loss in fewer steps",
        stated="exact identity; O(s^3) instead of O(s^6); '10x' fewer steps",
        measured=measured,
        verdict=verdict,
        why=(
            f"identity to {max(errors.values()):.0e}; steps: "
            + (f"{step_ratio:.1f}x fewer" if step_ratio else "not reached")
            + " (>= 10x for holds); "
            + _step_cost_text(kfac_step_s / adam_step_s)
            + ", so the wall-clock gain is "
            + (f"{1 / wall_ratio:.1f}x" if wall_ratio else "none")
        ),
        data={
            "identity_errors": {str(k): v for k, v in errors.items()},
            "dense_seconds": {str(k): v for k, v in dense_s.items()},
            "factored_seconds": {str(k): v for k, v in factored_s.items()},
            "dense_slope": slope_dense,
            "factored_slope": slope_factored,
            "adam_losses": {str(lr): [float(v) for v in adam[lr]] for lr in adam},
            "adam_best_lr": best_lr,
            "kfac_losses": [float(v) for v in kfac_losses],
            "target": target,
            "kfac_steps_needed": kfac_steps_needed,
            "step_ratio": step_ratio,
            "adam_step_seconds": adam_step_s,
            "kfac_step_seconds": kfac_step_s,
            "wall_ratio": wall_ratio,
        },
    )
    return result, _figure(result.data, sizes)


def _cost_note(slope_dense: float) -> str:
    """Why a measured dense exponent sits below 6, when it does (a verdict-free remark)."""
    if slope_dense >= 5:
        return "the times follow the counts"
    return (
        "time grows slower than the count at these sizes, where a larger matrix runs at a "
        "higher flop rate; the exponents are reported, not judged"
    )


def _figure(data, sizes):
    plt = pyplot()
    if plt is None:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    s = np.array(sizes)
    left.loglog(s, [1e3 * data["dense_seconds"][str(k)] for k in sizes], "o-", label="dense")
    left.loglog(
        s, [1e3 * data["factored_seconds"][str(k)] for k in sizes], "s-", label="A^-1 W G^-1"
    )
    left.set(
        xlabel="factor size s (matrix s^2 x s^2)",
        ylabel="time (ms)",
        title="solve (A kron G) x = vec(W)",
    )
    dense = [1e3 * data["dense_seconds"][str(k)] for k in sizes]
    factored = [1e3 * data["factored_seconds"][str(k)] for k in sizes]
    reference_slope(left, s, dense, 6, "s⁶ (flops)", at="middle")
    reference_slope(left, s, factored, 3, "s³ (flops)", at="below")
    left.set_xticks(s, labels=[str(k) for k in sizes], minor=False)
    left.minorticks_off()
    left.legend()
    adam = data["adam_losses"][str(data["adam_best_lr"])]
    right.plot(range(1, len(adam) + 1), adam, label=f"Adam (lr {data['adam_best_lr']:g})")
    kf = data["kfac_losses"]
    right.plot(range(1, len(kf) + 1), kf, label="K-FAC (adaptive)")
    right.axhline(data["target"], color="gray", ls=":", label="Adam's final loss")
    right.set(
        xscale="log",
        xlabel="step",
        ylabel="training loss (nats per image)",
        title="autoencoder 64-96-16-96-64, full batch",
    )
    right.legend(fontsize=8)
    fig.suptitle("K-FAC: Kronecker inverse by factors; steps to Adam's loss")
    fig.tight_layout()
    return fig
