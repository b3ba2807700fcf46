"""The tour: run every claim's experiment and write a report beside the measurements.

``python -m jaxnum tour [--quick] [--only NAMES] [--out DIR] [--seed N]`` runs
the experiments of :mod:`jaxnum.tour` one after another (a progress line
each), prints the table of rows, and writes to DIR (default ``report/``):
``report.md`` (the table, then one section per claim with its figure),
``results.json`` (every row with its raw data, the machine and versions) and
one PNG per figure (figures need matplotlib; without it the report says so).
An experiment that raises is reported as an error and makes the exit status 1;
"does not hold here" is an honest verdict, not an error.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxnum.tour.result import ClaimResult

# Wall time of `python -m jaxnum tour [--quick]` on a fresh clone, 2 quiet CPU cores
# (measured 2026-12-07). README.md, docs/guides/tour.md and --help quote these; a test
# checks they agree. Re-measure and update all three when an experiment's sizes change.
MEASURED_SECONDS = {"full": 221, "quick": 107}

# Seconds each experiment took (full, quick) in the run that measured MEASURED_SECONDS:
# relative weights for the time-left estimate, which scales them by this run's pace.
TYPICAL_SECONDS = {
    "float_range": (0.7, 0.7),
    "fp16_loss_scaling": (6.0, 5.8),
    "softmax_overflow": (1.9, 1.6),
    "clipping_overflow": (1.1, 1.0),
    "lbfgs_scaling": (18.4, 11.5),
    "lbfgs_minibatch": (9.2, 6.4),
    "kfac_claims": (20.2, 12.9),
    "kron_steps": (35.7, 8.4),
    "randomized_svd": (25.2, 8.7),
    "lora_counts": (5.7, 4.1),
    "finite_differences": (4.1, 3.2),
    "reverse_mode_cost": (7.0, 3.8),
    "hvp_cost": (14.6, 5.8),
    "checkpointing": (12.6, 5.3),
    "newton_convergence": (4.6, 4.1),
    "linear_lm": (37.4, 9.9),
    "krylov": (7.5, 6.1),
}

# name -> module under jaxnum.tour, in the order of the report (issue 8's list).
EXPERIMENTS = {
    "float_range": "float_range",
    "fp16_loss_scaling": "fp16_loss_scaling",
    "softmax_overflow": "softmax_overflow",
    "clipping_overflow": "clipping_overflow",
    "lbfgs_scaling": "lbfgs_scaling",
    "lbfgs_minibatch": "lbfgs_minibatch",
    "kfac_claims": "kfac_claims",
    "kron_steps": "kron_steps",
    "randomized_svd": "randomized_svd",
    "lora_counts": "lora_counts",
    "finite_differences": "finite_differences",
    "reverse_mode_cost": "reverse_mode_cost",
    "hvp_cost": "hvp_cost",
    "checkpointing": "checkpointing",
    "newton_convergence": "newton_convergence",
    "linear_lm": "linear_lm",
    "krylov": "krylov",
}


@dataclasses.dataclass
class Outcome:
    """One experiment's run: its row (None on error), figure file, seconds, error text."""

    name: str
    result: ClaimResult | None
    figure: str | None
    seconds: float
    error: str | None = None


def available() -> list[str]:
    """The experiment names whose modules exist in this checkout, in report order."""
    names = []
    for name, module in EXPERIMENTS.items():
        if importlib.util.find_spec(f"jaxnum.tour.{module}") is not None:
            names.append(name)
    return names


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray | jax.Array):
        return _jsonable(np.asarray(value).tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)  # JSON has no inf/nan
    return value


def _save_figure(figure, path: Path) -> str | None:
    if figure is None:
        return None
    figure.savefig(path, dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return path.name


def run_experiment(name: str, *, quick: bool, key, out: Path) -> Outcome:
    """Runs one experiment (its quick or full config) and saves its figure under ``out``."""
    start = time.perf_counter()
    try:
        module = importlib.import_module(f"jaxnum.tour.{EXPERIMENTS[name]}")
        config = module.Config.quick() if quick else module.Config()
        result, figure = module.run(config, key)
        seconds = time.perf_counter() - start
        return Outcome(name, result, _save_figure(figure, out / f"{name}.png"), seconds)
    except Exception:  # one failing claim must not hide the others
        return Outcome(name, None, None, time.perf_counter() - start, traceback.format_exc())


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for package in ("jax", "jaxlib", "optax", "flax", "numpy", "matplotlib"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    out["OPENBLAS_NUM_THREADS"] = os.environ.get("OPENBLAS_NUM_THREADS", "unset")
    return out


def _machine() -> str:
    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    return (
        f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores, "
        f"{len(devices)} x {', '.join(kinds)} device"
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(outcomes: Sequence[Outcome]) -> str:
    """The markdown table: one line per claim with verdict and seconds."""
    lines = ["| experiment | claim | verdict | why | s |", "|---|---|---|---|---:|"]
    for o in outcomes:
        if o.result is None:
            lines.append(f"| {o.name} | (failed) | **error** | see below | {o.seconds:.1f} |")
            continue
        r = o.result
        lines.append(
            f"| {o.name} | {_cell(r.claim)} | {r.verdict} | {_cell(r.why)} | {o.seconds:.1f} |"
        )
    return "\n".join(lines)


def write_report(outcomes: Sequence[Outcome], out: Path, *, quick: bool, seed: int) -> None:
    """Writes report.md and results.json under ``out``."""
    versions = _versions()
    header = [
        "# jaxnum tour",
        "",
        f"Machine: {_machine()}; "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + f"; {time.strftime('%Y-%m-%d')}; {'quick' if quick else 'full'} run, seed {seed}.",
        "",
        "Each claim about the numerics of ML training beside what was measured on this "
        "machine in this run. Verdicts: holds / holds partly / does not hold here.",
        "",
        table(outcomes),
        "",
    ]
    if versions["matplotlib"] == "not installed":
        header += ["Figures were skipped: install matplotlib (`pip install -e '.[tour]'`).", ""]
    sections = []
    for o in outcomes:
        sections.append(f"## {o.name}")
        sections.append("")
        if o.result is None:
            sections += ["The experiment raised:", "", "```", (o.error or "").strip(), "```", ""]
            continue
        r = o.result
        sections += [
            f"**Claim.** {r.claim}",
            "",
            f"**Stated.** {r.stated}",
            "",
            f"**Measured.** {r.measured}",
            "",
            f"**Verdict: {r.verdict}.** {r.why}",
            "",
        ]
        if o.figure:
            sections += [f"![{o.name}]({o.figure})", ""]
    (out / "report.md").write_text("\n".join(header + sections))
    payload = {
        "machine": _machine(),
        "versions": versions,
        "quick": quick,
        "seed": seed,
        "date": time.strftime("%Y-%m-%d"),
        "results": [
            {
                "name": o.name,
                "seconds": o.seconds,
                "figure": o.figure,
                "error": o.error,
                **(_jsonable(dataclasses.asdict(o.result)) if o.result else {}),
            }
            for o in outcomes
        ],
    }
    (out / "results.json").write_text(json.dumps(payload, indent=1, allow_nan=False))


def _time_left(elapsed: float, done: list[str], left: list[str], quick: bool) -> str:
    """``"; about N s left"``: the typical seconds of those left, at this run's pace so far."""
    if not left:
        return f"; {elapsed:.0f} s in all"
    typical = {name: TYPICAL_SECONDS.get(name, (10.0, 10.0))[quick] for name in done + left}
    pace = elapsed / max(sum(typical[n] for n in done), 1e-9)
    remaining = pace * sum(typical[n] for n in left)
    return (
        f"; about {remaining:.0f} s left"
        if remaining < 120
        else f"; about {remaining / 60:.0f} min left"
    )


def run_tour(
    names: Sequence[str] | None = None,
    *,
    quick: bool = False,
    out: str | Path = "report",
    seed: int = 0,
    stream=None,
) -> list[Outcome]:
    """Runs the named experiments (default: all available) and writes the report.

    Progress and the final table go to ``stream`` (default: sys.stdout).
    """
    stream = sys.stdout if stream is None else stream
    known = available()
    names = list(known if names is None else names)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"tour: unknown experiments {unknown}; available: {known}")
    if not names:
        raise ValueError("tour: no experiment selected")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    key = jax.random.key(seed)
    outcomes = []
    start = time.perf_counter()
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {name} ...", end=" ", file=stream, flush=True)
        # Each experiment's key depends on its name only, so --only reproduces the full run.
        name_key = jax.random.fold_in(key, list(EXPERIMENTS).index(name))
        outcome = run_experiment(name, quick=quick, key=name_key, out=out)
        status = outcome.result.verdict if outcome.result else "ERROR"
        estimate = _time_left(time.perf_counter() - start, names[:i], names[i:], quick)
        print(f"{status} ({outcome.seconds:.1f} s){estimate}", file=stream, flush=True)
        outcomes.append(outcome)
    write_report(outcomes, out, quick=quick, seed=seed)
    print("\n" + table(outcomes), file=stream)
    print(f"\nReport: {out / 'report.md'}", file=stream)
    return outcomes
