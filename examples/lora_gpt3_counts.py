"""LoRA's parameter reduction on GPT-3 175B shapes, counted without allocating a weight.

Builds the parameter shapes of GPT-3 175B (96 layers, d_model 12288, 4x MLP,
vocabulary 50257, context 2048) as `jax.ShapeDtypeStruct`s, puts rank-4
adapters on the query and value projections as in Hu et al. (2022), and
prints `jn.lora.count`: the paper's "10,000 times fewer trainable parameters".

Run: python examples/lora_gpt3_counts.py  (instant)
"""

import argparse

import jax
import jax.numpy as jnp

from jaxnum.lora import Adapter, count

LAYERS, D_MODEL, VOCAB, CONTEXT, RANK = 96, 12288, 50257, 2048, 4


def shape(*dims):
    return jax.ShapeDtypeStruct(dims, jnp.float16)


def gpt3_shapes():
    d = D_MODEL
    layer = {
        "query": {"kernel": shape(d, d), "bias": shape(d)},
        "key": {"kernel": shape(d, d), "bias": shape(d)},
        "value": {"kernel": shape(d, d), "bias": shape(d)},
        "out": {"kernel": shape(d, d), "bias": shape(d)},
        "mlp_in": {"kernel": shape(d, 4 * d), "bias": shape(4 * d)},
        "mlp_out": {"kernel": shape(4 * d, d), "bias": shape(d)},
        "ln1": {"scale": shape(d), "bias": shape(d)},
        "ln2": {"scale": shape(d), "bias": shape(d)},
    }
    return {
        "embed": shape(VOCAB, d),
        "position": shape(CONTEXT, d),
        "layers": [layer] * LAYERS,
        "ln_final": {"scale": shape(d), "bias": shape(d)},
    }


def main():
    params = gpt3_shapes()
    adapters = {
        jax.tree_util.keystr(path): Adapter(shape(D_MODEL, RANK), shape(RANK, D_MODEL))
        for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]
        if any(f"['{name}']['kernel']" in jax.tree_util.keystr(path) for name in ("query", "value"))
    }
    c = count(params, adapters)
    print(f"GPT-3 175B parameters:      {c.total:,}")
    print(f"LoRA rank {RANK} on W_q and W_v: {c.trainable:,} trainable ({len(adapters)} adapters)")
    print(f"reduction:                  {c.reduction:,.0f}x (the paper says about 10,000x)")
    print(f"so the paper's figure is {10_000 / c.reduction:.2f}x off this count of its own shapes")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="accepted; the count is instant")
    parser.parse_args()
    main()
