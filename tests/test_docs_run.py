"""The README example, the examples and the notebooks run as written."""

import json
import pathlib
import re
import subprocess
import sys

import nbclient
import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_readme_example_runs():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    namespace: dict = {}
    exec(compile("\n".join(blocks), "README.md", "exec"), namespace)
    state, loss_fn, params = namespace["state"], namespace["loss_fn"], namespace["params"]
    assert float(loss_fn(params)) < 0.01  # the float16 model fitted its target
    assert float(state.scale) * 2 ** int(state.total_skipped) == 2.0**15


NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 4


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code, f"{notebook.name} has no code"
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(notebook, tmp_path):
    """Runs every cell in a Jupyter kernel, as a reader would; an error or failed assert fails."""
    nb = nbformat.read(notebook, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError with the cell and traceback


def run_example(name: str, *args: str, timeout: float = 120) -> str:
    """Runs examples/<name> as a user would and returns what it printed."""
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=timeout,
    ).stdout


def test_mixed_precision_example_shows_what_it_claims():
    out = run_example("mixed_precision_training.py")
    losses = dict(re.findall(r"^(float.*?)\s+final loss (\S+)", out, flags=re.M))
    fp32 = float(losses["float32"])
    assert float(losses["float16, no loss scaling"]) > 100 * fp32
    assert float(losses["float16 + jn.loss_scaling"]) < 10 * fp32
    assert "skipped steps 1" in out
    assert "dot_general" in out


def test_lora_example_counts_gpt3_shapes():
    out = run_example("lora_gpt3_counts.py")
    total = int(re.search(r"parameters:\s+([\d,]+)", out).group(1).replace(",", ""))
    trainable = int(re.search(r"([\d,]+) trainable", out).group(1).replace(",", ""))
    # 12 d^2 per layer plus embeddings: 174.6e9; adapters 96 * 2 * (2 * 4 * 12288)
    assert total == 96 * (12 * 12288**2 + 13 * 12288) + 50257 * 12288 + 2048 * 12288 + 2 * 12288
    assert trainable == 96 * 2 * 2 * 4 * 12288
    assert 9000 < total / trainable < 10000


def test_pinn_example_lbfgs_refines_what_adam_found():
    out = run_example("pinn_lbfgs.py")
    errors = {
        phase: float(err)
        for phase, err in re.findall(r"^(adam|lbfgs)\s.*rel L2 error (\S+)", out, flags=re.M)
    }
    # Measured: Adam 2.6e-4, L-BFGS 4.9e-6 (53x lower).
    assert errors["lbfgs"] < errors["adam"] / 10
    assert errors["lbfgs"] < 1e-4
    assert "converged" in out


def test_kfac_autoencoder_example_reaches_adams_loss_in_fewer_steps(tmp_path):
    out = run_example("kfac_digits_autoencoder.py", "--quick", "--plot", str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 10_000, out  # the convergence plot
    adaptive, fixed = (int(n) for n in re.findall(r"step-300 loss in (\d+) steps", out))
    # At the quick size (Adam 300 steps) measured: adaptive 26 steps for Adam's step-300
    # loss, fixed learning rate 51. The full size (Adam 1000 steps: 49 and 84) is in
    # BENCHMARKS.md's kfac section.
    assert adaptive <= 300 / 8
    assert fixed < 300 / 4
