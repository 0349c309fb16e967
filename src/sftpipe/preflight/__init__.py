"""Preflight: `validate` checks a config and everything it points at without training; `doctor` checks
the environment. Both gather every finding into a list of `Check`s and report them all at once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Status = Literal["ok", "warn", "fail", "skip"]


@dataclass
class Check:
    """One finding: what was checked, how it went, and (for warn/fail) what to do about it."""

    name: str
    status: Status
    detail: str

    def line(self) -> str:
        """One aligned report line: status, name, detail."""
        return f"  {self.status:<4}  {self.name:<12} {self.detail}"


def summary(checks: list[Check]) -> str:
    """'10 checks: 9 ok, 1 warnings, 0 failed'."""
    counts = {s: sum(c.status == s for c in checks) for s in ("ok", "warn", "fail", "skip")}
    return (f"{len(checks)} checks: {counts['ok']} ok, {counts['warn']} warnings, {counts['fail']} failed"
            + (f", {counts['skip']} skipped" if counts["skip"] else ""))
