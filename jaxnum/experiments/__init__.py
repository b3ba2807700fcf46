"""Experiments that measure the claims made about training numerics.

Each module is a pure function of a config and a key returning a
:class:`ClaimResult` row (and a figure where a picture says more); the tour
(``python -m jaxnum tour``) runs them all. Nothing in the library
imports this package.
"""

from jaxnum.experiments._result import VERDICTS, ClaimResult

__all__ = ["VERDICTS", "ClaimResult"]
