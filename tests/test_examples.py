"""The newer examples run, shortened, and print what their docstrings claim."""

import re
from functools import partial

from tests.test_docs_run import ROOT, run_example

_run_example = partial(run_example, timeout=180)  # the transformer compiles four models


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text, flags=re.M)
    assert match, f"{pattern!r} not in the output:\n{text}"
    return float(match.group(1).replace(",", ""))


def test_transformer_lm_fp16_needs_loss_scaling_bf16_does_not():
    out = _run_example("transformer_lm_mixed_precision.py", "--quick")
    losses = {
        name: float(value)
        for name, value in re.findall(r"^(\S.*?)\s+held-out loss (\S+) nats", out, flags=re.M)
    }
    assert len(losses) == 4, out
    fp32 = losses["float32"]
    # Measured at 60 steps: float32 2.509, bfloat16 2.509, scaled float16 2.509, unscaled 3.126
    # (at the default 300 steps: 2.155, 2.156, 2.155 and 3.129).
    assert fp32 < 2.8  # it learned something: log(58) = 4.06 nats is the uniform guess
    assert abs(losses["bfloat16"] - fp32) < 0.02 * fp32
    assert abs(losses["float16 + jn.loss_scaling"] - fp32) < 0.02 * fp32
    assert losses["float16, no loss scaling"] > fp32 + 0.3
    assert len(re.findall(r"^  .*: step 60/60, train loss", out, flags=re.M)) == 4  # progress
    # The mechanism printed beside it: logit cotangents underflow float16, more so as it learns,
    # and unscaled float16 gradients carry more exact zeros than float32 ones.
    before, after = (
        float(p) / 100
        for p in re.search(r"underflow in float16: (\d+)% at init, (\d+)% after", out).groups()
    )
    assert 0.1 < before < after
    zeros = dict(
        re.findall(
            r"^(\S.*?)\s+held-out .*zero gradient entries \(last step\) (\d+)%", out, flags=re.M
        )
    )
    assert int(zeros["float16, no loss scaling"]) > int(zeros["float32"]) + 3
    assert _number(r"skipped steps (\d+)", out) == 0
    assert _number(r"final scale 2\^(\d+)", out) == 16  # 2^15, grown once after 50 steps
    samples = re.findall(r"--- sampled from the (\w+) model .*---\nMARCIUS:\n(.+)", out)
    assert [name for name, _ in samples] == ["float32", "bfloat16"], out


def test_rsvd_is_near_optimal_and_svd_initialised_lora_learns_faster():
    out = _run_example("rsvd_lora_compression.py", "--quick")
    full_accuracy = _number(r"held-out accuracy (\S+)$", out)
    assert full_accuracy > 0.95
    rows = re.findall(
        r"^\s*(\d+)\s+([\d,]+)\s+\S+%\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)$", out, flags=re.M
    )
    assert [int(r[0]) for r in rows] == [2, 4, 8, 16, 32, 64], out
    for rank, kept, err, optimum, ratio, _, change_err in rows:
        assert int(kept.replace(",", "")) == int(rank) * (256 + 256)
        # Eckart-Young: no rank-r matrix does better; randomized SVD comes within 1% here
        # (measured ratios 1.000 to 1.005).
        assert float(optimum) <= float(err) + 1e-4
        assert float(ratio) < 1.05
        assert float(change_err) < float(err)  # the trained change is closer to low rank
    accuracies = {int(r[0]): float(r[5]) for r in rows}
    assert accuracies[2] < 0.6  # rank 2 loses the network
    assert accuracies[64] > full_accuracy - 0.02  # rank 64 keeps it

    assert "4,392 trainable of 85,002 parameters" in out  # rank 4 on 64x256, 256x256, 256x10
    assert _number(r"largest logit change (\S+)\)", out) < 1e-3  # both start where training ended
    cells = {
        name: [float(v) for v in re.findall(r"(\d+\.\d+) \(", rest)]
        for name, rest in re.findall(r"^(LoRA, .*?|full fine-tuning.*?\))\s{2,}(.*)$", out, re.M)
    }
    svd, random = cells["LoRA, SVD init (lora.split)"], cells["LoRA, random A / zero B"]
    assert len(svd) == len(random) == 3, out
    # Measured after 50 steps, lr 1e-3 / 3e-3 / 1e-2: SVD init 3.71 / 1.32 / 0.38,
    # random init 6.10 / 2.11 / 1.02.
    assert all(s < 0.8 * r for s, r in zip(svd, random, strict=True))
    assert min(svd) < 0.6 * min(random)


def test_hvp_demos_match_their_references_and_the_costs_scale_apart():
    out = _run_example("hvp_demos.py", "--sizes", "500,1000,2000,4000")
    assert _number(r"closed form\| / max \|f''\| = (\S+)$", out) < 1e-5
    errors = [float(e) for e in re.findall(r"relative error (\S+)$", out, flags=re.M)]
    assert len(errors) == 5, out  # three hvp modes, hvp_fn, gnvp_fn
    assert max(errors) < 1e-5
    hess_min = _number(r"smallest eigenvalue: Hessian (\S+),", out)
    gn_min = _number(r"Gauss-Newton (\S+) \(PSD", out)
    assert hess_min < -1e-2 and gn_min > -1e-5

    exact = _number(r"exact (\S+)$", out)
    estimates = re.findall(r"(hutchinson|hutch\+\+)\s+(\d+) HVPs: (\S+) \+- (\S+)", out)
    assert len(estimates) == 4
    for _, _, value, std_error in estimates:
        assert abs(float(value) - exact) < 3 * float(std_error)
    hutchpp_90 = next(float(v) for m, k, v, _ in estimates if m == "hutch++" and k == "90")
    assert abs(hutchpp_90 - exact) < 0.05 * abs(exact)

    rows = re.findall(r"^\s+(\d+)\s+(\S+) ms\s+(\S+) us\s+(\S+)$", out, flags=re.M)
    assert [int(r[0]) for r in rows] == [500, 1000, 2000, 4000], out
    ratios = [float(r[3]) for r in rows]
    # Measured: Hessian / HVP 143 at n = 500, 10705 at n = 4000 (exponents 2.8 and 0.7).
    assert ratios[-1] > 8 * ratios[0]
    hess_exp, hvp_exp = (
        float(e) for e in re.search(r"Hessian (\S+) \(theory 2\), HVP (\S+)", out).groups()
    )
    assert hess_exp > 1.6 and hess_exp > hvp_exp + 0.8


def test_every_example_with_sizes_takes_quick():
    # The size users try first, and (for most) the size the tests run.
    examples = sorted((ROOT / "examples").glob("*.py"))
    sized = [p for p in examples if p.name != "lora_gpt3_counts.py"]  # counts only, instant
    assert sized, "no examples found"
    missing = [p.name for p in sized if '"--quick"' not in p.read_text()]
    assert not missing, f"examples without --quick: {missing}"
