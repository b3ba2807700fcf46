"""Timing and reporting shared by every benchmark.

Method (../shared/DESIGN.md): compile time measured apart; warm-up calls; every
timed call ends in ``block_until_ready``; variants are timed in interleaved
rounds (A B C, A B C, ...) so that drift of a noisy machine hits them alike; the
figure is the median over rounds; results are ratios to a named baseline.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import jax

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"


@dataclass(frozen=True)
class Timing:
    """One variant's result: seconds per call (median over rounds) and compile seconds."""

    name: str
    median_s: float
    compile_s: float
    rounds: int
    calls_per_round: int
    samples_s: tuple[float, ...]


def _block(out: Any) -> Any:
    return jax.block_until_ready(out)


def compile_jitted(fn: Callable, *args: Any, donate: bool = False) -> tuple[Callable, float]:
    """Lowers and compiles ``jax.jit(fn)`` for ``args`` (donating them if ``donate``);
    returns (compiled, seconds)."""
    start = time.perf_counter()
    donate_argnums = tuple(range(len(args))) if donate else ()
    compiled = jax.jit(fn, donate_argnums=donate_argnums).lower(*args).compile()
    return compiled, time.perf_counter() - start


def compare(
    variants: dict[str, tuple[Callable, Sequence[Any]]],
    *,
    rounds: int = 21,
    calls_per_round: int = 20,
    warmup: int = 3,
    chained: bool = False,
    donate: bool = False,
) -> dict[str, Timing]:
    """Times jitted variants side by side in interleaved rounds.

    Args:
      variants: name -> (function, arguments); each function is jitted and
        compiled once (compile time reported apart), then called.
      rounds: timed rounds (>= 5); the median over rounds is reported.
      calls_per_round: calls per variant per round, averaged within the round
        (a single step can be shorter than the timer's resolution matters).
      warmup: untimed calls per variant before the first round.
      chained: each function takes one argument and returns a value of the
        same structure (a training step's carry); within a round each call gets
        the last call's result, so calls depend on each other as in a training
        loop and cannot overlap (unchained calls on the same arguments can run
        concurrently on a multi-core CPU). Every round starts from the given
        arguments.
      donate: (chained only) each call donates its argument's buffers to its
        result, as a training loop's ``jax.jit(step, donate_argnums=0)`` does, so
        updates can be written in place; every round starts from a fresh copy of
        the given arguments, made before the clock starts.

    Returns:
      name -> :class:`Timing`.
    """
    if rounds < 5:
        raise ValueError(f"compare: rounds must be >= 5, got {rounds}")
    if chained and any(len(args) != 1 for _, args in variants.values()):
        raise ValueError("compare: chained variants take exactly one argument (the carry)")
    if donate and not chained:
        raise ValueError("compare: donate=True needs chained=True (a donated argument is gone)")

    def fresh(args):  # donated buffers are consumed: each use gets its own copy
        return tuple(jax.tree.map(lambda a: a.copy(), args)) if donate else args

    compiled = {}
    for name, (fn, args) in variants.items():
        exe, seconds = compile_jitted(fn, *args, donate=donate)
        compiled[name] = (exe, tuple(args), seconds)
        for _ in range(warmup):
            _block(exe(*fresh(args)))
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (exe, args, _) in compiled.items():
            call_args = _block(fresh(args))
            start = time.perf_counter()
            for _ in range(calls_per_round):
                out = exe(*call_args)
                if chained:
                    call_args = (out,)
            _block(out)
            samples[name].append((time.perf_counter() - start) / calls_per_round)
    return {
        name: Timing(
            name=name,
            median_s=statistics.median(samples[name]),
            compile_s=compiled[name][2],
            rounds=rounds,
            calls_per_round=calls_per_round,
            samples_s=tuple(samples[name]),
        )
        for name in variants
    }


def compare_python(
    variants: dict[str, Callable[[], Any]], *, rounds: int = 11, warmup: int = 2
) -> dict[str, float]:
    """Median seconds of Python-driven callables (already-jitted pieces, loops, eager code).

    Interleaved rounds like :func:`compare`; each call's result is blocked on.
    Used where the work is a sequence of dispatches, not one compiled function.
    """
    if rounds < 5:
        raise ValueError(f"compare_python: rounds must be >= 5, got {rounds}")
    for fn in variants.values():
        for _ in range(warmup):
            _block(fn())
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            _block(fn())
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


_RESULT_MARK = "@@child-result@@"


def affinity() -> list[int]:
    """The cores this process may run on (what a pinned child reports)."""
    return sorted(os.sched_getaffinity(0))


def one_core() -> int | None:
    """The core a pinned run uses (the lowest this process may run on), or None where
    there is no second core to leave or no affinity API (only Linux has one)."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cores = affinity()
    return cores[0] if len(cores) > 1 else None


# glibc's malloc told to keep freed memory rather than return it to the OS, for
# run_in_child(env=...): fresh multi-MB results then reuse pages instead of
# faulting new ones in (other allocators ignore these variables).
KEEP_FREED_MEMORY = {
    "MALLOC_MMAP_THRESHOLD_": "2000000000",
    "MALLOC_TRIM_THRESHOLD_": "4000000000",
    "MALLOC_TOP_PAD_": "200000000",
}


def run_in_child(
    target: str, *args: Any, pin_one_core: bool = False, env: dict[str, str] | None = None
) -> Any:
    """``module:function(*args)`` in a fresh Python process; its JSON result.

    Arguments and the result travel as JSON. A fresh process is a fresh draw of
    whatever a process fixes once (thread placement, buffer addresses): on these
    2-core machines the same compiled step ran up to 2x slower in some processes
    than in others, so benchmarks that must not hang on one draw take the median
    over several children. With ``pin_one_core`` the child pins itself to
    :func:`one_core` before it imports anything, so every thread it starts (XLA's
    pools, OpenBLAS's) inherits the single core: XLA:CPU spreads a loop of small
    operations over both cores, the second spinning while it waits, and pinned
    such loops ran faster in every process. ``env`` adds environment variables
    to the child's (this process's environment otherwise).
    """
    pin = ""
    if pin_one_core:
        core = one_core()
        if core is None:
            raise RuntimeError("run_in_child: pinning needs os.sched_setaffinity and 2+ cores")
        pin = f"import os; os.sched_setaffinity(0, {{{core}}})\n"
    module, function = target.split(":")
    code = (
        pin + "import importlib, json, sys\n"
        f"fn = getattr(importlib.import_module({module!r}), {function!r})\n"
        f"result = json.dumps(fn(*json.loads(sys.argv[1])))\n"
        f"print('\\n' + {_RESULT_MARK!r} + result)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(list(args))],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        text=True,
        check=True,
        timeout=3 * 3600,  # a hung child must not stall the benchmark for ever
    )
    results = [line for line in done.stdout.splitlines() if line.startswith(_RESULT_MARK)]
    return json.loads(results[-1][len(_RESULT_MARK) :])


def timings_to_json(timings: dict[str, Timing]) -> dict[str, dict]:
    """``compare``'s result as plain data (for :func:`run_in_child`)."""
    return {name: dataclasses.asdict(t) for name, t in timings.items()}


def median_timings(runs: Sequence[dict[str, dict]]) -> dict[str, Timing]:
    """Per variant, the median over several processes' :func:`timings_to_json` results:
    median of their medians and compile times, every round's sample kept."""
    out = {}
    for name in runs[0]:
        ts = [Timing(**{**run[name], "samples_s": tuple(run[name]["samples_s"])}) for run in runs]
        out[name] = Timing(
            name=name,
            median_s=statistics.median(t.median_s for t in ts),
            compile_s=statistics.median(t.compile_s for t in ts),
            rounds=sum(t.rounds for t in ts),
            calls_per_round=ts[0].calls_per_round,
            samples_s=tuple(x for t in ts for x in t.samples_s),
        )
    return out


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_summary(packages: Sequence[str] = ("jax", "jaxlib", "optax", "flax")) -> str:
    """One markdown paragraph: CPU, cores, Python, package versions, date, BLAS setup."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = ", ".join(f"{p} {_version(p)}" for p in packages)
    devices = ", ".join(sorted({d.platform for d in jax.devices()}))
    return (
        f"Machine: {cpu}, {os.cpu_count()} cores, {devices}; Python {platform.python_version()}; "
        f"{versions}; {datetime.date.today().isoformat()}. {blas_setup()}"
    )


def blas_setup() -> str:
    """One sentence on numpy's BLAS as this run found it: OPENBLAS_* variables and kernel.

    Some machines set OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE (older OpenBLAS builds
    needed them); they slow a current numpy, so a benchmark against numpy, scipy
    or scikit-learn is run with both unset, for that command alone:
    ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks NAME``.
    """
    import numpy as np  # noqa: F401  (loads numpy's BLAS for threadpoolctl)

    variables = sorted(k for k in os.environ if k.startswith("OPENBLAS_"))
    setting = (
        "OPENBLAS_* variables set: " + ", ".join(f"{k}={os.environ[k]}" for k in variables)
        if variables
        else "no OPENBLAS_* variable set"
    )
    try:
        from threadpoolctl import threadpool_info

        kernels = sorted(
            {
                f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')} kernel)"
                for i in threadpool_info()
                if i.get("user_api") == "blas"
            }
        )
        found = "; BLAS: " + ", ".join(kernels) if kernels else ""
    except ImportError:
        found = "; threadpoolctl not installed, BLAS kernel unknown"
    return f"{setting}{found}."


def compiled_costs(fn: Callable, *args: Any, donate: bool = False) -> dict[str, float]:
    """What XLA's compiled ``jax.jit(fn)`` costs on any backend, from its own analyses:
    bytes accessed and flops (``cost_analysis()``), the bytes that ``copy``
    instructions of the optimised HLO write, and temporary memory (``memory_analysis()``)."""
    compiled, _ = compile_jitted(fn, *args, donate=donate)
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # one dict per device on older jax
        analysis = analysis[0]
    memory = compiled.memory_analysis()
    hlo = compiled.as_text()
    return {
        "bytes accessed": float(analysis.get("bytes accessed", float("nan"))),
        "flops": float(analysis.get("flops", float("nan"))),
        "bytes copied": float(_bytes_copied(hlo)),
        "temp bytes": float(getattr(memory, "temp_size_in_bytes", float("nan"))),
    }


_ITEM_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2}


def _bytes_copied(hlo: str) -> int:
    """Total size of the results of ``copy`` instructions in optimised HLO text."""
    total = 0
    for dtype, dims in re.findall(r"= (\w+)\[([\d,]*)\](?:\{[^}]*\})? copy\(", hlo):
        size = 1
        for d in filter(None, dims.split(",")):
            size *= int(d)
        bits = re.search(r"\d+", dtype)
        item = _ITEM_BYTES.get(dtype, int(bits.group()) // 8 if bits else 4)
        total += size * item
    return total


def cost_table(costs: dict[str, dict[str, float]], baseline: str) -> str:
    """A markdown table of :func:`compiled_costs` per variant, bytes also as a ratio."""
    base = costs[baseline]["bytes accessed"]
    lines = [
        f"| variant | bytes accessed (MB) | ratio to {baseline} | GFLOP | copied (MB) "
        "| temp (MB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, c in costs.items():
        lines.append(
            f"| {name} | {c['bytes accessed'] / 1e6:.1f} | {c['bytes accessed'] / base:.3f} "
            f"| {c['flops'] / 1e9:.3f} | {c['bytes copied'] / 1e6:.2f} "
            f"| {c['temp bytes'] / 1e6:.1f} |"
        )
    return "\n".join(lines)


def ratio_table(timings: dict[str, Timing], baseline: str) -> str:
    """A markdown table of each variant's time, compile time and ratio to ``baseline``."""
    base = timings[baseline].median_s
    lines = [
        f"| variant | median per call (ms) | compile (s) | ratio to {baseline} |",
        "|---|---:|---:|---:|",
    ]
    for t in timings.values():
        lines.append(
            f"| {t.name} | {t.median_s * 1e3:.3f} | {t.compile_s:.2f} | {t.median_s / base:.3f} |"
        )
    return "\n".join(lines)


def write_section(name: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replaces (or appends) the section ``name`` of BENCHMARKS.md, leaving the others."""
    begin, end = f"<!-- benchmark:{name} -->", f"<!-- /benchmark:{name} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    text = (
        path.read_text()
        if path.exists()
        else (
            "# Benchmarks\n\nWritten by `python -m benchmarks NAME`; each section is one "
            "benchmark's last run. Ratios are jaxnum / peer (below 1 is faster).\n"
        )
    )
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), flags=re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def interleaved(
    calls: dict[str, Callable], rounds: int, pause_s: float = 0.3
) -> dict[str, tuple[float, object]]:
    """Median seconds per call over interleaved rounds, and the last result of each.

    The order rotates every round and each call waits ``pause_s`` first: OpenBLAS's
    worker threads busy-wait for about 0.1 s after a call, and on 2 cores they
    made whichever solver ran right after scipy (2 BLAS threads) twice slower.
    Each timed call follows an untimed one of the same solver (steady state).
    """
    results = {name: jax.block_until_ready(call()) for name, call in calls.items()}  # compiles
    samples = {name: [] for name in calls}
    names = list(calls)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order
            time.sleep(pause_s)
            jax.block_until_ready(calls[name]())  # untimed: wakes the CPU and thread pools
            start = time.perf_counter()
            results[name] = jax.block_until_ready(calls[name]())
            samples[name].append(time.perf_counter() - start)
    return {name: (statistics.median(samples[name]), results[name]) for name in calls}
