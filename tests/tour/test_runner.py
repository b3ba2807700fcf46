"""``python -m jaxnum tour --quick``: the command runs and writes every artifact.

The end-to-end run takes the two fastest experiments (``--only``): each experiment's
own quick run is tested in its ``tests/test_experiments_*.py`` (figure
included), so running all 16 again here cost 100 s of the suite's 15 minutes
for the CLI plumbing alone. ``test_every_experiment_has_its_own_tests`` keeps
that division honest.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jaxnum.__main__ import main
from jaxnum.tour import VERDICTS
from jaxnum.tour import runner as tour

FAST = ("float_range", "clipping_overflow")  # the two quickest (0.8 s, 1.0 s in --quick)


def test_every_experiment_has_its_own_tests():
    sources = [p.read_text() for p in Path(__file__).parent.glob("test_*.py")]
    for name in tour.available():
        imports = (f"from jaxnum.tour import {name} ", f"jaxnum.tour.{name}")
        assert any(i in s for s in sources for i in imports), f"no test imports {name}"


def test_quick_tour_writes_report_json_and_figures(tmp_path):
    out = tmp_path / "report"
    names = [n for n in tour.available() if n in FAST]
    assert len(names) == len(FAST)
    command = [sys.executable, "-m", "jaxnum", "tour", "--quick", "--only", ",".join(names)]
    proc = subprocess.run(
        [*command, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    payload = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in payload["results"]] == names
    report = (out / "report.md").read_text()
    for row in payload["results"]:
        assert row["error"] is None
        assert row["verdict"] in VERDICTS
        assert row["measured"] and row["why"] and row["claim"]
        assert f"## {row['name']}" in report and row["verdict"] in report
        if row["figure"]:
            assert (out / row["figure"]).stat().st_size > 1000
            assert f"]({row['figure']})" in report
    assert "[1/" in proc.stdout and "Report:" in proc.stdout


def test_a_failing_experiment_is_reported_and_fails_the_command(tmp_path, monkeypatch, capsys):
    # A module without Config/run stands in for a broken experiment.
    monkeypatch.setitem(tour.EXPERIMENTS, "broken", "result")
    status = main(["tour", "--quick", "--only", "broken", "--out", str(tmp_path)])
    assert status == 1
    report = (tmp_path / "report.md").read_text()
    assert "**error**" in report and "AttributeError" in report
    row = json.loads((tmp_path / "results.json").read_text())["results"][0]
    assert row["error"] and "Config" in row["error"]
    assert "ERROR" in capsys.readouterr().out


def test_unknown_experiment_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown experiments"):
        tour.run_tour(["no_such_claim"], quick=True, out=tmp_path)


def test_an_unknown_only_name_is_an_argparse_error_naming_the_known(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["tour", "--quick", "--only", "float_range,nosuch"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown experiment(s) nosuch" in err and "float_range" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv", [["--help"], ["tour", "--help"], ["formats", "--help"]])
def test_help_is_plain_text(argv, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    out = capsys.readouterr().out
    assert "usage:" in out
    assert not re.search(r"``|:(func|class|mod|meth):", out), out


@pytest.mark.parametrize("value", ["", ",", " , "])
def test_an_empty_only_says_no_experiment_was_named(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["tour", "--only", value])
    assert exit_info.value.code == 2
    assert "no experiment named" in capsys.readouterr().err


def test_a_repeated_only_name_runs_once():
    from jaxnum.__main__ import _experiment_names

    assert _experiment_names("float_range, float_range,clipping_overflow") == [
        "float_range",
        "clipping_overflow",
    ]


def test_the_stated_tour_times_agree_everywhere(capsys):
    """README, the tour guide and --help quote the one measured figure per mode."""
    from jaxnum.tour.runner import MEASURED_SECONDS

    root = Path(__file__).resolve().parents[2]
    full, quick = MEASURED_SECONDS["full"], MEASURED_SECONDS["quick"]
    readme = " ".join((root / "README.md").read_text().split())
    assert f"the full tour took {full} s on 2 CPU cores" in readme
    assert f"small sizes, took {quick} s" in readme
    guide = (root / "docs/guides/tour.md").read_text()
    assert f"full sizes: {full} s on 2 CPU cores" in guide
    assert f"small sizes: {quick} s on 2 CPU cores" in guide
    with pytest.raises(SystemExit):
        main(["tour", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"({quick} s on 2 CPU cores; the full tour {full} s)" in help_text
    assert quick <= 120 and full <= 12 * 60  # the budgets of issue 23


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--out", "{file}"], "cannot create directory"),
        (["--out", "{file}/sub"], "cannot create directory"),
        (["--seed", str(2**63)], "must fit in 64 bits"),
        (["--seed", "x"], "not an integer"),
    ],
)
def test_a_bad_out_or_seed_is_an_argparse_error(argv, message, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    argv = [a.replace("{file}", str(blocker)) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(["tour", "--only", "float_range", *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_the_time_left_is_the_typical_seconds_left_at_this_runs_pace():
    assert set(tour.TYPICAL_SECONDS) == set(tour.EXPERIMENTS)
    full_float, full_krylov = (
        tour.TYPICAL_SECONDS["float_range"][0],
        tour.TYPICAL_SECONDS["krylov"][0],
    )
    # Twice as slow as typical so far: the rest is expected twice as slow too.
    text = tour._time_left(2 * full_float, ["float_range"], ["krylov"], quick=False)
    assert text == f"; about {2 * full_krylov:.0f} s left"
    assert tour._time_left(5.0, ["float_range"], [], quick=True) == "; 5 s in all"
