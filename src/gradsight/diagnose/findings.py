"""What a diagnosis returns."""

from __future__ import annotations

from dataclasses import dataclass, field

SEVERITIES = ("info", "warning", "error")


@dataclass
class Finding:
    """One diagnosed problem (or notable fact) about a run.

    Attributes:
        code: stable identifier, e.g. ``vanishing_gradients``.
        severity: ``info``, ``warning`` or ``error``.
        message: one plain-language sentence: what was measured, what it means and
            what to try.
        layers: the layers, modules or blocks concerned (qualified names).
        steps: the recorded steps concerned.
        measured: the numbers behind the verdict.
    """

    code: str
    severity: str
    message: str
    layers: list[str] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    measured: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")

    def __str__(self) -> str:
        where = ""
        if self.layers:
            shown = ", ".join(n or "(root)" for n in self.layers[:4])
            more = f" and {len(self.layers) - 4} more" if len(self.layers) > 4 else ""
            where = f" [{shown}{more}]"
        return f"{self.severity.upper():7} {self.code}: {self.message}{where}"

    def to_dict(self) -> dict:
        return {"code": self.code, "severity": self.severity, "message": self.message, "layers": self.layers,
                "steps": self.steps, "measured": self.measured}


def worst(findings: list[Finding]) -> str | None:
    """The highest severity among findings (None when there are none)."""
    if not findings:
        return None
    return max((f.severity for f in findings), key=SEVERITIES.index)


def format_findings(findings: list[Finding]) -> str:
    """Findings as text, worst first; a line saying so when there are none."""
    if not findings:
        return "no problems found"
    order = sorted(findings, key=lambda f: -SEVERITIES.index(f.severity))
    return "\n".join(str(f) for f in order)
