"""``python -m benchmarks NAME [--quick]``: run one benchmark and update BENCHMARKS.md."""

from __future__ import annotations

import argparse
import importlib
import sys

BENCHMARKS = {
    "hvp": "benchmarks.hvp",
    "kfac": "benchmarks.kfac",
    "kron": "benchmarks.kron",
    "lbfgs": "benchmarks.lbfgs",
    "newton": "benchmarks.newton",
    "loss_scaling": "benchmarks.loss_scaling",
    "rsvd": "benchmarks.rsvd",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("name", choices=sorted(BENCHMARKS))
    parser.add_argument("--quick", action="store_true", help="few rounds; do not write")
    args = parser.parse_args(argv)
    module = importlib.import_module(BENCHMARKS[args.name])
    module.run(quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
