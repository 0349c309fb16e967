"""What `eval` returns for a model (its metrics.json is `EvalResult.as_dict()`), and for two side by side.

Below run.py, which makes these, and report_html.py, which renders them: neither imports the other for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sftpipe.evaluate.metrics import LossMetrics
from sftpipe.evaluate.suite import SuiteResult


@dataclass
class EvalResult:
    model: str
    split: str
    metrics: LossMetrics | None
    output_dir: Path
    suite: SuiteResult | None = None
    settings: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """The content of metrics.json."""
        payload: dict = {"model": self.model, "split": self.split, **self.settings}
        if self.metrics is not None:
            payload.update(self.metrics.as_dict())
        if self.suite is not None and self.suite.generation is not None:
            payload["generation"] = {**self.suite.generation.as_dict(), "seconds": round(self.suite.generate_s, 2)}
        if self.suite is not None and self.suite.code is not None:
            payload["code"] = self.suite.code.as_dict()
        return payload


@dataclass
class CompareResult:
    base: EvalResult
    run: EvalResult
    output_dir: Path
