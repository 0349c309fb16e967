"""What a study leaves beside its storage: the leaderboard (trials.csv and the terminal), best.yaml, report.html.

All of it is derived from the storage, so any worker may (re)write it at any time; each file is written to a
temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import csv
import html
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sftpipe.config.loader import dump_config
from sftpipe.config.schema import Config
from sftpipe.contracts.study_dir import StudyDir
from sftpipe.hpo.trial import (
    FAIL_REASON_ATTR,
    RESUMED_FROM_ATTR,
    RUN_DIR_ATTR,
    WORKER_ATTR,
    trial_config,
)

INTERRUPTED = "interrupted: its worker stopped mid-trial (killed, crashed or lost its machine)"


@dataclass(frozen=True)
class TrialRow:
    """One trial as the leaderboard shows it."""

    number: int
    state: str  # the name of its optuna TrialState: complete, pruned, fail, running or waiting
    value: float | None  # the objective (COMPLETE) or the last reported figure (PRUNED)
    step: int | None  # the last step that reported a figure
    params: dict[str, Any]
    run_dir: str | None
    worker: str | None  # host/pid
    duration_s: float | None
    note: str  # why it failed, where it was pruned, which trial it resumed


@dataclass(kw_only=True)
class HpoResult:
    study_dir: Path
    study_name: str
    storage: str  # password hidden
    objective: str
    direction: str
    rows: list[TrialRow]  # best first
    counts: dict[str, int]  # state -> trials
    best: TrialRow | None
    files: list[Path] = field(default_factory=list)  # what was written
    wall_s: float = 0.0
    trials_run: int = 0  # by this worker, this time
    retrained: Any = None  # the TrainResult of --retrain-best


def trial_row(trial: FrozenTrial) -> TrialRow:
    last_step = max(trial.intermediate_values) if trial.intermediate_values else None
    value = trial.value if trial.state == TrialState.COMPLETE else \
        trial.intermediate_values[last_step] if last_step is not None else None
    note = ""
    if trial.state == TrialState.FAIL:
        note = str(trial.user_attrs.get(FAIL_REASON_ATTR, INTERRUPTED))
    elif trial.state == TrialState.PRUNED:
        note = f"pruned at step {last_step}"
    if RESUMED_FROM_ATTR in trial.user_attrs:
        note = f"resumed trial {trial.user_attrs[RESUMED_FROM_ATTR]}" + (f"; {note}" if note else "")
    duration = trial.duration.total_seconds() if trial.duration is not None else None
    return TrialRow(number=trial.number, state=trial.state.name, value=value, step=last_step, params=trial.params,
                    run_dir=trial.user_attrs.get(RUN_DIR_ATTR), worker=trial.user_attrs.get(WORKER_ATTR),
                    duration_s=duration, note=note)


_STATE_ORDER = {state.name: i for i, state in enumerate(
    (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING, TrialState.FAIL))}


def leaderboard(study: optuna.Study) -> list[TrialRow]:
    """Every trial, best first: complete ones by objective, then pruned ones by their last figure, then the rest."""
    sign = 1 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1
    rows = [trial_row(t) for t in study.get_trials(deepcopy=False)]
    return sorted(rows, key=lambda r: (_STATE_ORDER.get(r.state, 5),
                                       sign * r.value if r.value is not None and math.isfinite(r.value) else math.inf,
                                       r.number))


def summarize(cfg: Config, study: optuna.Study, storage: str) -> HpoResult:
    rows = leaderboard(study)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    best = rows[0] if rows and rows[0].state == TrialState.COMPLETE.name else None
    return HpoResult(study_dir=Path(cfg.hpo.output_dir), study_name=study.study_name, storage=storage,
                     objective=cfg.hpo.objective, direction=cfg.hpo.direction, rows=rows, counts=counts, best=best)


def write_results(cfg: Config, study: optuna.Study, result: HpoResult) -> list[Path]:
    """trials.csv, best.yaml (when a trial completed) and report.html in the study dir; returns their paths."""
    study_dir = StudyDir(Path(cfg.hpo.output_dir))
    written = [_write(study_dir.trials_csv, trials_csv(result.rows))]
    if result.best is not None:
        written.append(_write(study_dir.best_config, best_config_text(cfg, result)))
    written.append(_write(study_dir.report, report_html(study, result)))
    return written


def trials_csv(rows: list[TrialRow]) -> str:
    params = sorted({key for row in rows for key in row.params})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["number", "state", "value", "last_step", *params, "duration_s", "run_dir", "worker", "note"])
    for row in sorted(rows, key=lambda r: r.number):
        writer.writerow([row.number, row.state, "" if row.value is None else repr(row.value),
                         "" if row.step is None else row.step, *(row.params.get(p, "") for p in params),
                         "" if row.duration_s is None else f"{row.duration_s:.1f}", row.run_dir or "",
                         row.worker or "", row.note])
    return out.getvalue()


def best_config(cfg: Config, result: HpoResult) -> Config:
    """The base config with the best trial's values, training into the study dir's best/."""
    assert result.best is not None
    return trial_config(cfg, result.best.params, StudyDir(Path(cfg.hpo.output_dir)).best_run)


def best_config_text(cfg: Config, result: HpoResult) -> str:
    assert result.best is not None
    best = result.best
    header = (f"# Best trial {best.number} of study '{result.study_name}' ({result.storage}): "
              f"{result.objective} {best.value!r}\n# trained in {best.run_dir}\n"
              f"# values: {best.params}\n# Train it with: sftpipe train <this file> (or sftpipe hpo CONFIG "
              "--retrain-best)\n")
    return header + dump_config(best_config(cfg, result))


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def report_html(study: optuna.Study, result: HpoResult) -> str:
    """Optuna's plotly figures on one page with plotly.js inlined: opens from disk with no server or network."""
    import plotly.offline
    from optuna import visualization as vis
    from optuna.importance import PedAnovaImportanceEvaluator

    plots = [
        ("Optimisation history", lambda: vis.plot_optimization_history(study)),
        ("Validation figure per step (pruned trials stop early)", lambda: vis.plot_intermediate_values(study)),
        ("Parameter importances (PED-ANOVA)",
         lambda: vis.plot_param_importances(study, evaluator=PedAnovaImportanceEvaluator())),
        ("Parallel coordinates", lambda: vis.plot_parallel_coordinate(study)),
    ]
    sections = []
    for title, plot in plots:
        try:
            body = plot().to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})
        except Exception as exc:  # noqa: BLE001 (e.g. importances need two complete trials)
            body = f"<p class=note>not shown: {html.escape(str(exc))}</p>"
        sections.append(f"<h2>{html.escape(title)}</h2>\n{body}")
    counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(result.counts.items())) or "no trials"
    best = result.best
    best_line = (f"best: trial {best.number}, {html.escape(result.objective)} = {best.value!r}, "
                 f"{html.escape(str(best.params))}" if best else "no complete trial yet")
    rows = "\n".join(
        f"<tr><td>{r.number}</td><td>{r.state}</td><td>{'' if r.value is None else f'{r.value:.6g}'}</td>"
        f"<td>{html.escape(str(r.params))}</td><td>{html.escape(r.note)}</td></tr>" for r in result.rows)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>sftpipe hpo: {html.escape(result.study_name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}} td,th{{padding:2px 8px;text-align:left}}
.note{{color:#666}}</style>
<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script></head><body>
<h1>Study {html.escape(result.study_name)}</h1>
<p>{html.escape(result.direction)} {html.escape(result.objective)}; storage {html.escape(result.storage)}</p>
<p>trials: {counts}</p><p>{best_line}</p>
{''.join(sections)}
<h2>Trials</h2><table><tr><th>#</th><th>state</th><th>value</th><th>values</th><th>note</th></tr>
{rows}</table></body></html>
"""
