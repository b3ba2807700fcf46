"""Command line: python -m jaxnum tour | formats."""

from __future__ import annotations

import argparse
import os
import sys


def _formats(args: argparse.Namespace) -> int:
    from jaxnum.precision.formats import _format_table

    print(_format_table())
    return 0


def _tour(args: argparse.Namespace) -> int:
    from jaxnum.tour.runner import run_tour

    outcomes = run_tour(args.only, quick=args.quick, out=args.out, seed=args.seed)
    return 1 if any(o.result is None for o in outcomes) else 0


def _out_directory(text: str) -> str:
    """An argparse type: ``--out`` must be a directory this process can create and write."""
    from pathlib import Path

    path = Path(text)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file in the way, a read-only or missing mount, no permission
        raise argparse.ArgumentTypeError(f"cannot create directory {text!r}: {e.strerror}") from e
    if not os.access(path, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write in directory {text!r}")
    return text


def _seed(text: str) -> int:
    """An argparse type: an integer that fits jax.random.key (int64)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not -(2**63) <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must fit in 64 bits (|seed| < 2^63), got {text}")
    return value


def _available() -> list[str]:
    from jaxnum.tour.runner import available

    return available()


def _experiment_names(text: str) -> list[str]:
    """``--only``'s value: known experiment names, or an argparse error naming the known."""
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))  # deduped
    if not names:
        raise argparse.ArgumentTypeError(
            f"no experiment named; choose from {', '.join(_available())}"
        )
    unknown = [n for n in names if n not in _available()]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown experiment(s) {', '.join(unknown)}; choose from {', '.join(_available())}"
        )
    return names


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m jaxnum``; returns the exit status."""
    from jaxnum.tour.runner import MEASURED_SECONDS

    parser = argparse.ArgumentParser(prog="python -m jaxnum", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    formats = commands.add_parser(
        "formats", help="print the table of float formats (float32 ... float8)"
    )
    formats.set_defaults(run=_formats)
    tour = commands.add_parser(
        "tour",
        help="measure every claim about training numerics and write a report",
        description="Measures each claim about training numerics on this machine and writes "
        "report.md, results.json and one figure per claim (figures need matplotlib: "
        'pip install -e ".[tour]").',
        epilog="experiments: " + ", ".join(_available()),
    )
    tour.add_argument(
        "--quick",
        action="store_true",
        help=f"small sizes ({MEASURED_SECONDS['quick']} s on 2 CPU cores; the full tour "
        f"{MEASURED_SECONDS['full']} s)",
    )
    tour.add_argument(
        "--only",
        type=_experiment_names,
        metavar="NAME,...",
        help="comma-separated experiment names (default: all, listed below)",
    )
    tour.add_argument(
        "--out", type=_out_directory, default="report", help="report directory (default: report/)"
    )
    tour.add_argument("--seed", type=_seed, default=0, help="the key every experiment folds from")
    tour.set_defaults(run=_tour)
    args = parser.parse_args(argv)
    return args.run(args)


def _reexec_with_one_blas_thread() -> None:
    """Restarts ``python -m jaxnum tour`` with OPENBLAS_NUM_THREADS=1 unless the user set it.

    jaxlib's CPU decompositions (SVD, QR, Cholesky) run in the process's
    OpenBLAS, whose spinning worker threads fight XLA's own thread pool: the
    randomized-SVD experiment took 89 s instead of 6 s on 2 cores, and its
    timings were 10x off. The variable is read when OpenBLAS loads, which
    ``import jaxnum`` has done by now, hence the restart (the CLI only).
    """
    if os.environ.get("OPENBLAS_NUM_THREADS") is None:
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
        os.execve(sys.executable, [sys.executable, "-m", "jaxnum", *sys.argv[1:]], env)


if __name__ == "__main__":
    if sys.argv[1:2] == ["tour"]:
        _reexec_with_one_blas_thread()
    sys.exit(main())
