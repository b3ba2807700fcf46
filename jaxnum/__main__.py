"""Command line: ``python -m jaxnum formats``."""

from __future__ import annotations

import argparse
import sys


def _formats(args: argparse.Namespace) -> int:
    from jaxnum.precision.formats import format_table

    print(format_table())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m jaxnum``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m jaxnum", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    formats = commands.add_parser(
        "formats", help="print the table of float formats (float32 ... float8)"
    )
    formats.set_defaults(run=_formats)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
