"""The tour: experiments that measure the claims made about training numerics.

Each experiment module is a pure function of a config and a key returning a
:class:`ClaimResult` row (and a figure where a picture says more);
:func:`run_tour` (``python -m jaxnum tour``) runs them all and writes the
report. Nothing in the library imports this package.
"""

from jaxnum.tour.result import VERDICTS, ClaimResult
from jaxnum.tour.runner import Outcome, available, run_experiment, run_tour, table, write_report

__all__ = [
    "VERDICTS",
    "ClaimResult",
    "Outcome",
    "available",
    "run_experiment",
    "run_tour",
    "table",
    "write_report",
]
