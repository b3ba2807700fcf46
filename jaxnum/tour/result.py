"""The row every experiment returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

VERDICTS = ("holds", "holds partly", "does not hold here")


@dataclass(frozen=True)
class ClaimResult:
    """One claim beside its measurement on this machine.

    Attributes:
      claim: the claim in a sentence.
      stated: the figure the claim states (or "qualitative").
      measured: what was measured here, with numbers from the run.
      verdict: one of :data:`VERDICTS`.
      why: one line explaining the verdict.
      data: the raw measurements (curves, counts) for reports and figures.
    """

    claim: str
    stated: str
    measured: str
    verdict: str
    why: str
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(
                f"ClaimResult: verdict must be one of {VERDICTS}, got {self.verdict!r}"
            )
