"""A character-level transformer trained in float32, bfloat16 and float16, loss-scaled or not.

The model is a small decoder-only transformer (Flax linen): token and position
embeddings, 2 pre-LayerNorm blocks of causal 4-head self-attention and a GELU
MLP, d_model 64, context 64 characters, about 110k parameters. It reads the
opening of Shakespeare's Coriolanus (examples/data/coriolanus.txt, public
domain; see examples/data/README.md), 90% for training, the last 10% held out.

The same model (same initial key, same batches) is trained four ways, each
with optax.adam inside `jn.clip_by_global_norm`: float32; bfloat16 compute
(`jn.Policy.parse("params=float32,compute=bfloat16,output=float32")`, whose
`flax_kwargs()` go to every layer); float16 compute without loss scaling; and
float16 compute with dynamic `jn.loss_scaling` and `jn.scaled_value_and_grad`.
Printed per run: the held-out loss (float32 evaluation of the trained float32
parameters) in nats and bits per character, and the fraction of gradient
entries that were exactly zero at the last step; for the scaled run the final
loss scale and the skipped steps; then characters sampled from the float32 and
the bfloat16 models (temperature 0.8, an explicit key).

Why float16 without scaling fails here, and when it would not. Each step's
loss is its micro-batch's share of a large global batch: the mean over the
16 x 64 = 1024 tokens of the micro-batch divided by `--accumulation` (256), as
in gradient accumulation toward a global batch of 2^18 = 262,144 tokens (GPT-3
small used 0.5M). Adam's eps and the clipping threshold carry the same factor,
so the float32 run is the same training as on the plain mean, up to rounding.
The cotangent of logit k of one token is then (p_k - y_k) / 2^18: below half
of float16's smallest subnormal (2^-25) whenever p_k < 2^-7, which is most of
the vocabulary once the model predicts well. Those cotangents flush to zero at
the first cast of the float16 backward pass; the script measures this
(`jn.underflow_fraction` of the float32 logit cotangents in float16, before
and after training). Gradient entries built only from flushed values are
exactly 0, and the float16 run stalls: its held-out loss after 300 steps is no
better than after 60. `jn.loss_scaling` multiplies the loss by S (2^15, grown
every 50 finite steps) before differentiating, which lifts the cotangents back
into range, and unscales in float32. Run with `--accumulation 1` (the plain
mean over 1024 tokens) and float16 without scaling trains as well as float32:
the failure is one of range, and it comes when the loss, and with it every
cotangent, is small. bfloat16 has float32's exponent range and needs no
scaling.

Run: python examples/transformer_lm_mixed_precision.py  (about 45 s on 2 CPU cores)
"""

# Text: William Shakespeare, "The Tragedy of Coriolanus" (c. 1608), Act I to the
# middle of Scene 9, as in the first 31,742 characters of the tinyshakespeare
# file (karpathy/char-rnn, data/tinyshakespeare/input.txt). Public domain.

import argparse
import math
import pathlib
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxnum as jn

TEXT = pathlib.Path(__file__).parent / "data" / "coriolanus.txt"
PROGRESS_SECONDS = 5.0  # a progress line at least this often while training
CONTEXT, BATCH, D_MODEL, HEADS, LAYERS = 64, 16, 64, 4, 2
RUNS = {  # name: (policy, loss scaling)
    "float32": ("params=float32,compute=float32,output=float32", False),
    "bfloat16": ("params=float32,compute=bfloat16,output=float32", False),
    "float16, no loss scaling": ("params=float32,compute=float16,output=float32", False),
    "float16 + jn.loss_scaling": ("params=float32,compute=float16,output=float32", True),
}


class Block(nn.Module):
    policy: jn.Policy

    @nn.compact
    def __call__(self, x):
        kw = self.policy.flax_kwargs()
        causal = nn.make_causal_mask(jnp.ones(x.shape[:2], jnp.int32))
        x = x + nn.MultiHeadDotProductAttention(HEADS, **kw)(nn.LayerNorm(**kw)(x), mask=causal)
        h = nn.gelu(nn.Dense(4 * D_MODEL, **kw)(nn.LayerNorm(**kw)(x)))
        return x + nn.Dense(D_MODEL, **kw)(h)


class CharTransformer(nn.Module):
    vocab: int
    policy: jn.Policy

    @nn.compact
    def __call__(self, ids):
        kw = self.policy.flax_kwargs()
        x = nn.Embed(self.vocab, D_MODEL, **kw)(ids)
        x = x + nn.Embed(CONTEXT, D_MODEL, **kw)(jnp.arange(ids.shape[1]))
        for _ in range(LAYERS):
            x = Block(self.policy)(x)
        logits = nn.Dense(self.vocab, **kw)(nn.LayerNorm(**kw)(x))
        return self.policy.cast_to_output(logits)  # the loss is reduced in float32


def load_text():
    text = TEXT.read_text()
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text], np.int32)
    cut = int(0.9 * len(ids))
    return chars, ids[:cut], ids[cut:]


def training_batches(key, ids, steps):
    """(steps, BATCH, CONTEXT + 1) windows at random offsets: the same for every run."""
    starts = np.asarray(jax.random.randint(key, (steps, BATCH), 0, len(ids) - CONTEXT - 1))
    return ids[starts[..., None] + np.arange(CONTEXT + 1)]


def mean_nll(logits, seqs):
    return optax.softmax_cross_entropy_with_integer_labels(logits, seqs[..., 1:]).mean()


def train(model, params, weight, scaled, seqs, name=""):
    """Trains on ``seqs``; prints a progress line at least every PROGRESS_SECONDS and at the end."""

    def loss_fn(p, batch):  # this micro-batch's share of the global-batch mean
        return mean_nll(model.apply(p, batch[:, :-1]), batch) * weight

    inner = optax.chain(jn.clip_by_global_norm(1.0 * weight), optax.adam(3e-3, eps=1e-8 * weight))
    if scaled:
        tx = jn.loss_scaling(inner, initial_scale=2.0**15, growth_interval=50)
        grad_fn = jn.scaled_value_and_grad(loss_fn)
    else:
        tx = inner
        grad_fn = lambda state, p, batch: jax.value_and_grad(loss_fn)(p, batch)  # noqa: E731

    @jax.jit
    def step(params, state, batch):
        loss, grads = grad_fn(state, params, batch)
        updates, state = tx.update(grads, state, params)
        leaves = jax.tree.leaves(grads)
        zeros = sum(jnp.sum(g == 0) for g in leaves) / sum(g.size for g in leaves)
        return optax.apply_updates(params, updates), state, loss / weight, zeros

    state = tx.init(params)
    start = last = time.perf_counter()
    for i, batch in enumerate(seqs, 1):
        params, state, loss, zeros = step(params, state, batch)
        if time.perf_counter() - last > PROGRESS_SECONDS or i == len(seqs):
            last = time.perf_counter()
            print(f"  {name}: step {i}/{len(seqs)}, train loss {float(loss):.3f} "
                  f"({last - start:.0f} s)", flush=True)  # fmt: skip
    return params, state, float(zeros)


def logit_cotangent_underflow(model):
    """Fraction of the float32 cotangents d loss / d logits that flush to zero in float16."""

    @jax.jit
    def fraction(p, batch, weight):
        logits = model.apply(p, batch[:, :-1])
        cot = jax.grad(lambda lg: mean_nll(lg, batch) * weight)(logits)
        return jn.underflow_fraction(cot, jnp.float16)

    return fraction


def sample(model, params, prompt_ids, num_chars, key, temperature=0.8):
    """Autoregressive sampling with a sliding window of CONTEXT characters, one jitted loop."""
    size = len(prompt_ids) + num_chars
    buf = jnp.zeros(max(size, CONTEXT), jnp.int32).at[: len(prompt_ids)].set(prompt_ids)

    @jax.jit
    def run(params, buf, key):
        def body(i, buf):
            length = len(prompt_ids) + i
            start = jnp.maximum(length - CONTEXT, 0)
            window = jax.lax.dynamic_slice(buf, (start,), (CONTEXT,))  # causal: padding unseen
            logits = model.apply(params, window[None])[0, length - 1 - start]
            nxt = jax.random.categorical(jax.random.fold_in(key, i), logits / temperature)
            return buf.at[length].set(nxt)

        return jax.lax.fori_loop(0, num_chars, body, buf)

    return np.asarray(run(params, buf, key))[:size]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps per run (300)")
    parser.add_argument(
        "--accumulation",
        type=int,
        default=256,
        help="the loss is the micro-batch mean divided by this, as in accumulating that many "
        "micro-batches into one global batch (no accumulation is run) (256)",
    )
    parser.add_argument("--sample-chars", type=int, default=160, help="characters to sample (160)")
    parser.add_argument(
        "--quick", action="store_true", help="60 steps, 40 sampled characters (the tests)"
    )
    args = parser.parse_args()
    if args.quick:
        args.steps, args.sample_chars = 60, 40
    weight = 1.0 / args.accumulation

    chars, train_ids, val_ids = load_text()
    seqs = jnp.asarray(training_batches(jax.random.key(0), train_ids, args.steps))
    n_val = (len(val_ids) - 1) // CONTEXT
    val = jnp.asarray(
        np.stack([val_ids[i * CONTEXT : (i + 1) * CONTEXT + 1] for i in range(n_val)])
    )
    fp32_model = CharTransformer(len(chars), jn.Policy())
    # Every policy keeps float32 parameters: one initialisation serves all four runs.
    params0 = jax.jit(fp32_model.init)(jax.random.key(1), seqs[0, :, :-1])
    evaluate = jax.jit(lambda p: mean_nll(fp32_model.apply(p, val[:, :-1]), val))
    underflow = logit_cotangent_underflow(fp32_model)

    print(
        f"text: {len(train_ids):,} training / {len(val_ids):,} held-out characters, "
        f"vocabulary {len(chars)}; {args.steps} steps of {BATCH}x{CONTEXT} tokens, "
        f"loss = micro-batch mean / {args.accumulation}; "
        f"{sum(x.size for x in jax.tree.leaves(params0)):,} parameters"
    )
    results = {}
    for name, (spec, scaled) in RUNS.items():
        model = CharTransformer(len(chars), jn.Policy.parse(spec))
        results[name] = train(model, params0, weight, scaled, seqs, name)
        if name == "float32":
            before = float(underflow(params0, seqs[-1], weight))
            after = float(underflow(results[name][0], seqs[-1], weight))
            print(
                f"float32 logit cotangents that underflow in float16: {before:.0%} at init, "
                f"{after:.0%} after float32 training"
            )

    for name, (params, state, zeros) in results.items():
        nats = float(evaluate(params))
        line = (
            f"{name:27s} held-out loss {nats:.3f} nats  ({nats / math.log(2):.2f} bits/char)  "
            f"zero gradient entries (last step) {zeros:.0%}"
        )
        if isinstance(state, jn.LossScalingState):
            line += (
                f"  (final scale 2^{math.log2(float(jn.current_loss_scale(state))):.0f}, "
                f"skipped steps {int(state.total_skipped)})"
            )
        print(line)

    prompt = "MARCIUS:\n"
    prompt_ids = np.array([chars.index(c) for c in prompt], np.int32)
    for name in ("float32", "bfloat16"):
        model = CharTransformer(len(chars), jn.Policy.parse(RUNS[name][0]))
        ids = sample(model, results[name][0], prompt_ids, args.sample_chars, jax.random.key(2))
        print(f"--- sampled from the {name} model (key 2) ---")
        print("".join(chars[i] for i in ids))


if __name__ == "__main__":
    main()
