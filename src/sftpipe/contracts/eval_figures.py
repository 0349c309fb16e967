"""The headline figures of an eval dir (`eval` writes metrics.json and report.html there), as other stages
show them: the run report and the model card.

metrics.json is `EvalResult.as_dict()`; the keys read here are the only ones read outside `evaluate`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from sftpipe.contracts.files import read_json
from sftpipe.errors import SftpipeError

EVAL_METRICS = "metrics.json"
EVAL_REPORT = "report.html"


class EvalFigures(BaseModel):
    """Loss figures on the evaluated split and, when answers were executed, pass@k."""

    model_config = ConfigDict(frozen=True)

    model: str
    split: str
    loss: float | None = None
    perplexity: float | None = None
    token_accuracy: float | None = None
    pass_at_k: dict[str, float] = {}
    problems: int = 0  # problems with tests whose answers were executed
    samples: int = 0
    code_skipped: str | None = None  # why answers were not executed, when they were not


def eval_report(eval_dir: Path) -> Path:
    """The eval dir's report.html."""
    return eval_dir / EVAL_REPORT


def read_eval_figures(eval_dir: Path) -> EvalFigures | None:
    """The figures of `eval_dir`'s metrics.json; None when there is none (eval has not run).

    Raises:
        SftpipeError: metrics.json is unreadable or not what `eval` writes for one model.
    """
    path = eval_dir / EVAL_METRICS
    if not path.is_file():
        return None
    values = read_json(path)
    if not isinstance(values, dict) or "model" not in values or "split" not in values:
        raise SftpipeError(f"{path}: not the metrics.json of `sftpipe eval` for one model (no model/split); "
                           "run `sftpipe eval` again")
    code = values.get("code") or {}
    return EvalFigures(model=str(values["model"]), split=str(values["split"]), loss=values.get("loss"),
                       perplexity=values.get("perplexity"), token_accuracy=values.get("token_accuracy"),
                       pass_at_k=code.get("pass_at_k") or {}, problems=code.get("problems", 0),
                       samples=code.get("samples", 0), code_skipped=code.get("skipped"))
