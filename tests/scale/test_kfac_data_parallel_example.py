"""examples/kfac_data_parallel.py: the data-parallel step equals the one-device step."""

import os
import pathlib
import re
import subprocess
import sys

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "kfac_data_parallel.py"


def test_data_parallel_kfac_example_matches_the_single_device_run():
    # 2 simulated devices as a user gets them (the tests' 4 on 2 cores once aborted
    # in an all-reduce waiting for a starved device); one OpenBLAS thread.
    flags = re.sub(
        r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", "")
    )
    env = {**os.environ, "XLA_FLAGS": flags.strip(), "OPENBLAS_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        capture_output=True,
        text=True,
        check=True,
        timeout=240,
        env=env,
    ).stdout
    assert re.search(r"^2 devices \(cpu\)", out, flags=re.M), out

    gaps = {
        dtype: tuple(map(float, values))
        for dtype, *values in re.findall(
            r"^\s+(float32|float64): loss (\S+), parameters (\S+), K-FAC factors (\S+)$",
            out,
            flags=re.M,
        )
    }
    assert set(gaps) == {"float32", "float64"}, out
    loss64, params64, factors64 = gaps["float64"]
    assert loss64 < 1e-13 and factors64 < 1e-13 and params64 < 1e-11
    loss32, params32, factors32 = gaps["float32"]
    # measured: 1e-7, 2e-5 (rounding amplified by the damped inverse), 5e-7
    assert loss32 < 1e-5 and factors32 < 1e-5 and params32 < 1e-3

    losses = re.findall(r"^step\s+(\d+)\s+loss one device (\S+)\s+data-parallel (\S+)$", out, re.M)
    assert [int(step) for step, _, _ in losses] == [1, 21, 41, 61, 81, 100], out
    for _, single, parallel in losses:
        assert abs(float(single) - float(parallel)) <= 1e-3 * (1 + float(single)), out
    assert float(losses[-1][1]) < 0.2 * float(losses[0][1])  # it trained

    single_acc, parallel_acc = map(
        float,
        re.search(r"held-out accuracy: one device (\S+), data-parallel (\S+)$", out, re.M).groups(),
    )
    assert single_acc > 0.9 and abs(single_acc - parallel_acc) <= 0.02
