"""The public contract: every exported name resolves and is documented."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import jaxnum
import jaxnum.autodiff
import jaxnum.kfac
import jaxnum.kfac.nnx
import jaxnum.linalg
import jaxnum.lora
import jaxnum.optim
import jaxnum.precision
import jaxnum.serialization
import jaxnum.tour


@pytest.mark.parametrize(
    "module",
    [
        jaxnum,
        jaxnum.precision,
        jaxnum.autodiff,
        jaxnum.linalg,
        jaxnum.lora,
        jaxnum.optim,
        jaxnum.tour,
        jaxnum.kfac,
        jaxnum.kfac.nnx,
        jaxnum.serialization,
    ],
    ids=lambda m: m.__name__,
)
def test_every_exported_name_resolves_and_has_a_docstring(module):
    assert module.__all__, "empty __all__"
    for name in module.__all__:
        obj = getattr(module, name)
        assert obj.__doc__ and obj.__doc__.strip(), f"{module.__name__}.{name} has no docstring"


def test_top_level_reexports_are_the_subpackage_objects():
    for name in jaxnum.__all__:
        for sub in (jaxnum.precision, jaxnum.optim):
            if name in sub.__all__:
                assert getattr(jaxnum, name) is getattr(sub, name)


def test_solvers_share_one_status_and_keep_internal_steps_private():
    """One Status enum (issue 22): the same object at the top level, in optim and in
    linalg; test oracles and internal steps are not exported."""
    assert jaxnum.Status is jaxnum.optim.Status is jaxnum.linalg.Status
    assert all(isinstance(s.message, str) and s.message for s in jaxnum.Status)
    for name in ("two_loop", "more_thuente_step", "inverse_hessian_product", "truncated_cg",
                 "TruncatedCGResult"):  # fmt: skip
        assert name not in jaxnum.optim.__all__ and not hasattr(jaxnum.optim, name), name


def test_the_formats_table_is_the_cli_s_not_the_api():
    """format_table is an internal formatting helper (issue 22): python -m jaxnum formats
    prints it; the API gives the rows (float_formats)."""
    for module in (jaxnum, jaxnum.precision):
        assert "format_table" not in module.__all__ and not hasattr(module, "format_table")
    assert "float_formats" in jaxnum.__all__


def test_simulated_devices_are_available():
    assert jax.device_count() == 4


@pytest.mark.slow
def test_cli_formats_prints_every_format_with_finfo_values():
    out = subprocess.run(
        [sys.executable, "-m", "jaxnum", "formats"], capture_output=True, text=True, check=True
    ).stdout
    lines = out.strip().splitlines()
    assert len(lines) == 2 + 5
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    for name in ("float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"):
        info = jnp.finfo(jnp.dtype(name))
        cells = rows[name]
        assert int(cells[1]) == info.bits
        assert float(cells[4]) == pytest.approx(float(info.max), rel=1e-5)
        assert float(cells[7]) == pytest.approx(float(info.eps), rel=1e-5)
