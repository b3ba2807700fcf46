"""Claim: fp16 training underflows without loss scaling; scaling by 2^15 recovers it.

The full claim: float16 gradients underflow without loss scaling; a dynamic
loss scale starting at 2^15 recovers the float32 loss; bfloat16 needs no
scaling. float16's smallest subnormal is 2^-24 (6e-8): any cotangent below
half of it rounds to zero in the backward pass, and a weight gradient built
from zero cotangents is exactly zero. Multiplying the loss by S before
differentiating (and the gradients by 1/S in float32 afterwards) shifts the
cotangents up by log2(S) binades. bfloat16 keeps float32's 8 exponent bits
(smallest normal 2^-126), so the same small values stay representable
(Micikevicius et al., Mixed Precision Training, ICLR 2018, Sec. 3.2,
https://arxiv.org/abs/1710.03740; Kalamkar et al., A Study of BFLOAT16 for
Deep Learning Training, 2019, https://arxiv.org/abs/1905.12322).

Setup (that of ``tests/precision/test_fp16_training.py``): a 2-hidden-layer
tanh MLP (width 64, float32 master parameters, computation in the policy's
dtype via :class:`jaxnum.Policy`) regresses the outputs of a random teacher
MLP on Gaussian inputs. The mean squared error is multiplied by
``loss_factor`` = 2^-24, standing in for the tiny per-example gradients of a
large model, so that in float16 every cotangent flushes to zero; SGD's
learning rate is divided by the same factor, so the float32 run is plain SGD
on the unscaled loss. Full-batch runs of the same steps from the same
initialisation:

- float32;
- float16 without scaling;
- float16 with :func:`jaxnum.loss_scaling` (dynamic, initial scale 2^15, the
  usual growth interval of 2000 steps) and :func:`jaxnum.scaled_value_and_grad`;
- the same with a short growth interval (``fast_growth_interval``), so that
  the run shows the schedule at work: the scale doubles until the scaled
  gradients overflow float16, then the step is skipped and the scale halved;
- bfloat16 without scaling.

Measured: the float32 loss of each run's parameters after every step, the
fraction of gradient entries that are exactly zero, the loss scale used at
each step and the skipped steps. Verdict: the scaled float16 run and the
bfloat16 run end within ``TOLERANCE`` (5%) of the float32 loss, and the
unscaled float16 run ends at least ``WORSE_FACTOR`` (2x) above it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import jaxnum as jn
from jaxnum.tour._common import pyplot
from jaxnum.tour.result import ClaimResult

TOLERANCE = 0.05  # scaled fp16 and bf16: final loss within 5% of fp32's
WORSE_FACTOR = 2.0  # unscaled fp16: final loss at least 2x fp32's ("measurably worse")
INITIAL_SCALE = 2.0**15
RUNS = ("fp32", "fp16", "fp16_scaled", "fp16_scaled_fast", "bf16")
_POLICIES = {
    "fp32": "params=float32,compute=float32,output=float32",
    "fp16": "params=float32,compute=float16,output=float32",
    "bf16": "params=float32,compute=bfloat16,output=float32",
}
LABELS = {
    "fp32": "float32",
    "fp16": "float16, no scaling",
    "fp16_scaled": "float16, dynamic scaling",
    "fp16_scaled_fast": "float16, dynamic scaling (fast growth)",
    "bf16": "bfloat16, no scaling",
}


@dataclass(frozen=True)
class Config:
    """Problem and run sizes.

    ``learning_rate`` is SGD's step on the unscaled loss (the optimizer sees
    ``learning_rate / loss_factor``). ``growth_interval`` is the loss-scaling
    default; ``fast_growth_interval`` the short one of the extra run.
    """

    num_samples: int = 256
    num_features: int = 8
    teacher_width: int = 16
    width: int = 64
    loss_factor: float = 2.0**-24
    learning_rate: float = 0.05
    steps: int = 1000
    growth_interval: int = 2000
    fast_growth_interval: int = 10

    @classmethod
    def quick(cls) -> Config:
        return cls(steps=300, fast_growth_interval=5)

    def __post_init__(self):
        for name in ("num_samples", "num_features", "teacher_width", "width", "steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Config: {name} must be an int >= 1, got {value!r}")
        for name in ("growth_interval", "fast_growth_interval"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Config: {name} must be an int >= 1, got {value!r}")
        if not 0.0 < self.loss_factor <= 1.0:
            raise ValueError(f"Config: loss_factor must be in (0, 1], got {self.loss_factor}")
        if not self.learning_rate > 0.0:
            raise ValueError(f"Config: learning_rate must be > 0, got {self.learning_rate}")


class MLP(nn.Module):
    """Two tanh hidden layers and a linear output, computed in ``policy``'s dtype."""

    width: int
    policy: jn.Policy = jn.Policy()

    @nn.compact
    def __call__(self, x):
        kwargs = self.policy.flax_kwargs()
        for _ in range(2):
            x = nn.tanh(nn.Dense(self.width, **kwargs)(x))
        return self.policy.cast_to_output(nn.Dense(1, **kwargs)(x))


def problem(config: Config, key):
    """Inputs (n, d), teacher targets (n, 1) of unit std, and the student's float32 init."""
    kx, kt, kp = jax.random.split(key, 3)
    x = jax.random.normal(kx, (config.num_samples, config.num_features))
    teacher = MLP(config.teacher_width)
    y = teacher.apply(teacher.init(kt, x), x)
    return x, y / jnp.std(y), MLP(config.width).init(kp, x)


def mse(policy: jn.Policy, width: int, params, x, y):
    """Mean squared error of the student in ``policy``'s dtypes (float32 output)."""
    return jnp.mean((MLP(width, policy).apply(params, x) - y) ** 2)


def _train(config: Config, dtype: str, scaled: bool, interval, x, y, params):
    """One run in one scan: per step the fp32 loss after it, zero-gradient fraction, scale, finite.

    ``interval`` (the growth interval) is traced, so both scaled runs share one compilation.
    """
    policy = jn.Policy.parse(_POLICIES[dtype])
    sgd = optax.sgd(config.learning_rate / config.loss_factor)
    tx = (
        jn.loss_scaling(sgd, initial_scale=INITIAL_SCALE, growth_interval=interval)
        if scaled
        else sgd
    )

    def loss(p):
        return mse(policy, config.width, p, x, y) * config.loss_factor

    def step(carry, _):
        p, state = carry
        if scaled:
            scale = jn.current_loss_scale(state)
            _, grads = jn.scaled_value_and_grad(loss)(state, p)
        else:
            scale = jnp.float32(1.0)
            grads = jax.grad(loss)(p)
        leaves = jax.tree.leaves(grads)
        zeros = sum(jnp.sum(g == 0) for g in leaves) / sum(g.size for g in leaves)
        updates, state = tx.update(grads, state, p)
        p = optax.apply_updates(p, updates)
        finite = state.last_finite if scaled else jnp.array(True)
        true_loss = mse(jn.Policy(), config.width, p, x, y)
        return (p, state), (true_loss, zeros, scale, finite)

    _, out = jax.lax.scan(step, (params, tx.init(params)), None, length=config.steps)
    return out


_trainer = jax.jit(_train, static_argnums=(0, 1, 2))


def _relative(a: float, ref: float) -> float:
    return (a - ref) / ref


def run(config: Config, key) -> tuple[ClaimResult, object]:
    """Trains the five runs; returns the row and a figure (or None)."""
    x, y, params = problem(config, key)
    initial = float(mse(jn.Policy(), config.width, params, x, y))
    fp32_grads = jax.grad(lambda p: mse(jn.Policy(), config.width, p, x, y))(params)
    would_underflow = float(
        jn.underflow_fraction(jax.tree.map(lambda g: g * config.loss_factor, fp32_grads), "float16")
    )
    runs = {}
    for name in RUNS:
        interval = config.fast_growth_interval if name.endswith("fast") else config.growth_interval
        out = _trainer(config, name.split("_")[0], "scaled" in name, interval, x, y, params)
        losses, zeros, scales, finite = jax.device_get(out)
        runs[name] = {
            "loss": [initial, *losses.astype(float).tolist()],
            "zero_grad_fraction": zeros.astype(float).tolist(),
            "scale": scales.astype(float).tolist(),
            "finite": finite.astype(bool).tolist(),
        }
    final = {name: r["loss"][-1] for name, r in runs.items()}
    skipped = {name: r["finite"].count(False) for name, r in runs.items()}
    ref = final["fp32"]
    rel = {name: _relative(final[name], ref) for name in RUNS}
    # A skipped step applies no update: compare the fast-growth run with fp32 after as many steps.
    applied = config.steps - skipped["fp16_scaled_fast"]
    fast_vs_applied = _relative(final["fp16_scaled_fast"], runs["fp32"]["loss"][applied])
    checks = {
        "fp16_scaled_recovers_fp32": abs(rel["fp16_scaled"]) <= TOLERANCE,
        "fp16_unscaled_worse": final["fp16"] >= WORSE_FACTOR * ref,
        "bf16_recovers_fp32": abs(rel["bf16"]) <= TOLERANCE,
    }
    passed = sum(checks.values())
    verdict = "holds" if passed == 3 else "does not hold here" if passed == 0 else "holds partly"
    measured, why = _texts(
        config, runs, final, rel, skipped, checks, would_underflow, fast_vs_applied
    )
    result = ClaimResult(
        claim=(
            "fp16 training underflows without loss scaling; scaling by 2^15 (dynamic) recovers "
            "the fp32 loss; bf16 needs no scaling"
        ),
        stated="loss scale 2^15 (dynamic); fp16 with it and bf16 without it match fp32",
        measured=measured,
        verdict=verdict,
        why=why,
        data={
            "runs": runs,
            "final_loss": final,
            "relative_to_fp32": rel,
            "skipped_steps": skipped,
            "fast_growth_vs_fp32_at_applied_steps": fast_vs_applied,
            "initial_loss": initial,
            "fp32_grad_underflow_fraction_in_fp16": would_underflow,
            "checks": checks,
            "thresholds": {"tolerance": TOLERANCE, "worse_factor": WORSE_FACTOR},
        },
    )
    return result, _figure(config, runs)


def _log2(v: float) -> str:
    return f"2^{round(math.log2(v))}" if v > 0 and math.log2(v).is_integer() else f"{v:.3g}"


def _texts(config, runs, final, rel, skipped, checks, would_underflow, fast_vs_applied):
    """The row's ``measured`` and ``why`` strings, every number from the run."""
    z16 = runs["fp16"]["zero_grad_fraction"]
    zs = runs["fp16_scaled"]["zero_grad_fraction"]
    scales = runs["fp16_scaled"]["scale"]
    fast = runs["fp16_scaled_fast"]["scale"]
    scale_text = (
        f"scale {_log2(scales[0])} throughout"
        if min(scales) == max(scales)
        else f"scale {_log2(min(scales))}..{_log2(max(scales))}"
    )
    fast_skips = skipped["fp16_scaled_fast"]
    measured = (
        f"{config.steps} full-batch SGD steps, loss x {_log2(config.loss_factor)}: final fp32 "
        f"loss {final['fp32']:.4g}; fp16 unscaled {final['fp16']:.4g} "
        f"({final['fp16'] / final['fp32']:.1f}x; {z16[0]:.1%} of gradient entries exactly 0 at "
        f"step 1, {sum(z16) / len(z16):.1%} on average; {would_underflow:.1%} of the fp32 "
        f"gradients underflow when cast to fp16); fp16 + dynamic scaling "
        f"{final['fp16_scaled']:.4g} ({rel['fp16_scaled']:+.1%}; {scale_text}, "
        f"{skipped['fp16_scaled']} skipped, {zs[0]:.1%} zero entries at step 1, {zs[-1]:.1%} "
        f"at the last); bf16 unscaled {final['bf16']:.4g} ({rel['bf16']:+.1%}); with growth "
        f"every {config.fast_growth_interval} steps the scale climbed to {_log2(max(fast))}, "
        f"{fast_skips} steps were skipped on overflow, final loss "
        f"{final['fp16_scaled_fast']:.4g} ({rel['fp16_scaled_fast']:+.1%}; "
        f"{fast_vs_applied:+.1%} against fp32 after the same {config.steps - fast_skips} "
        f"applied steps)"
    )
    failed = [name for name, ok in checks.items() if not ok]
    why = (
        f"fp16+scaling {rel['fp16_scaled']:+.1%} and bf16 {rel['bf16']:+.1%} of fp32 (limit "
        f"{TOLERANCE:.0%}); fp16 without scaling {final['fp16'] / final['fp32']:.1f}x fp32 "
        f"(limit {WORSE_FACTOR:g}x) as {z16[0]:.0%} of its gradients are exactly 0"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return measured, why


def _figure(config, runs):
    plt = pyplot()
    if plt is None:
        return None
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.8))
    styles = {"fp32": "k-", "fp16": "r-", "fp16_scaled": "b--", "fp16_scaled_fast": "c:"}
    for name in RUNS:
        ax0.semilogy(runs[name]["loss"], styles.get(name, "g-."), label=LABELS[name])
    ax0.set_xlabel("SGD step")
    ax0.set_ylabel("training loss (MSE, float32)")
    ax0.set_title("fp16 underflow and loss scaling")
    ax0.legend(fontsize=7)
    for name, style in (("fp16_scaled", "b-"), ("fp16_scaled_fast", "c-")):
        r = runs[name]
        steps = range(1, len(r["scale"]) + 1)
        ax1.semilogy(steps, r["scale"], style, base=2, label=LABELS[name])
        bad = [(t, s) for t, s, ok in zip(steps, r["scale"], r["finite"], strict=True) if not ok]
        if bad:
            ax1.semilogy(
                *zip(*bad, strict=True), "rx", base=2, label="skipped step (fp16 overflow)"
            )
    ax1.set_xlabel("SGD step")
    ax1.set_ylabel("loss scale S (log2 axis)")
    ax1.set_title("dynamic loss scale (start 2^15)")
    ax1.legend(fontsize=7)
    fig.tight_layout()
    return fig
