"""What a diagnosis returns."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from gradsight._text import few
from gradsight.display import display_name


class Severity(str, enum.Enum):
    """How bad a finding is, ordered ``INFO < WARNING < ERROR``.

    A ``str``: it equals, prints and serializes as its lowercase word (``"error"``),
    and compares with ``<``/``>=`` by badness, also against those words.
    """

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        """0 for ``info``, 1 for ``warning``, 2 for ``error``."""
        return _RANK[self]

    def __str__(self) -> str:
        return self.value

    def __lt__(self, other: object) -> bool:
        return self.rank < Severity(other).rank

    def __le__(self, other: object) -> bool:
        return self.rank <= Severity(other).rank

    def __gt__(self, other: object) -> bool:
        return self.rank > Severity(other).rank

    def __ge__(self, other: object) -> bool:
        return self.rank >= Severity(other).rank


_RANK = {sev: i for i, sev in enumerate(Severity)}


@dataclass
class Finding:
    """One diagnosed problem (or notable fact) about a run.

    Attributes:
        code: stable identifier, e.g. ``vanishing_gradients``.
        severity: a :class:`Severity` (given as one or as its word: ``"warning"``).
        message: one plain-language sentence: what was measured, what it means and
            what to try.
        layers: the layers, modules or blocks concerned (qualified names).
        steps: the recorded steps concerned.
        measured: the numbers behind the verdict.
    """

    code: str
    severity: Severity
    message: str
    layers: list[str] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    measured: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            self.severity = Severity(self.severity)
        except ValueError:
            raise ValueError(f"severity must be one of {[str(s) for s in Severity]}, got {self.severity!r}") from None

    def __str__(self) -> str:
        where = ""
        if self.layers:
            where = f" [{few([display_name(n) for n in self.layers], 4)}]"
        return f"{str(self.severity).upper():7} {self.code}: {self.message}{where}"

    def to_dict(self) -> dict:
        return {"code": self.code, "severity": str(self.severity), "message": self.message, "layers": self.layers,
                "steps": self.steps, "measured": self.measured}


def format_findings(findings: list[Finding]) -> str:
    """Findings as text, worst first; a line saying so when there are none."""
    if not findings:
        return "no problems found"
    return "\n".join(str(f) for f in sorted(findings, key=lambda f: f.severity, reverse=True))
