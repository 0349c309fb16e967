"""One trial: sampled values -> a config -> a normal training run in OUT/trials/trial-NNNN/ -> the objective.

The run is `sftpipe.stages.train`, the same loop and run dir as `sftpipe train`; the trial only adds a callback
that reports the objective to Optuna at every validation and stops the run when the pruner says so. A pruned
run dir is left as a kill would leave it: complete checkpoints up to the last save, no final/.

Failures (an exception, a NaN objective, a sampled combination the config refuses, out of memory) end the
trial as FAIL with `fail_reason` among its user attributes; the study goes on.
"""

from __future__ import annotations

import gc
import math
import os
import shutil
import socket
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.storages import RetryHeartbeatStaleTrialCallback
from pydantic import ValidationError

from sftpipe.config.hpo_section import CategoricalParam, FloatParam, ParamSpec
from sftpipe.config.schema import Config
from sftpipe.config.search_space import with_values
from sftpipe.contracts.run_dir import RunDir
from sftpipe.contracts.study_dir import StudyDir
from sftpipe.errors import SftpipeError
from sftpipe.stages import train

# Trial user attributes (what trials.csv and the leaderboard show beside Optuna's own columns)
RUN_DIR_ATTR = "run_dir"
WORKER_ATTR = "worker"  # host/pid of the process that ran it
FAIL_REASON_ATTR = "fail_reason"
RESUMED_FROM_ATTR = "resumed_from_trial"


class TrialFailed(SftpipeError):
    """The trial cannot give an objective value (diverged, figure never logged, invalid sampled config)."""


def suggest(trial: optuna.Trial, space: dict[str, ParamSpec]) -> dict[str, Any]:
    """Draw every parameter of the search space for `trial`; dotted config key -> value."""
    values: dict[str, Any] = {}
    for key, spec in space.items():
        if isinstance(spec, CategoricalParam):
            values[key] = trial.suggest_categorical(key, spec.choices)
        elif isinstance(spec, FloatParam):
            values[key] = trial.suggest_float(key, spec.low, spec.high, log=spec.log, step=spec.step)
        else:
            values[key] = trial.suggest_int(key, spec.low, spec.high, step=spec.step, log=spec.log)
    return values


def trial_config(cfg: Config, values: dict[str, Any], run_dir: Path) -> Config:
    """The base config with the sampled values, training into `run_dir`.

    Raises:
        TrialFailed: the combination is refused by the config schema.
    """
    try:
        return with_values(cfg, {**values, "train.output_dir": str(run_dir)})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise TrialFailed(f"the sampled values {values} give an invalid config: {problems}") from None


class ObjectiveReporter:
    """`Evaluators.on_figures` for a trial: reports the objective to Optuna and prunes (raises TrialPruned)."""

    def __init__(self, trial: optuna.Trial, metric: str):
        self.trial, self.metric = trial, metric
        self.values: dict[int, float] = {}  # step -> objective figure
        self.logged: set[str] = set()  # every figure name seen, for the error when the objective is not one

    def __call__(self, step: int, figures: dict[str, float], last: bool) -> None:
        self.logged.update(figures)
        if self.metric not in figures:  # e.g. generation figures at a step without validation
            return
        value = float(figures[self.metric])
        if not math.isfinite(value):
            raise TrialFailed(f"{self.metric} is {value} at step {step}: the run diverged")
        self.values[step] = value
        self.trial.report(value, step)
        if not last and self.trial.should_prune():
            raise optuna.TrialPruned(f"{self.metric} {value:.6g} at step {step}")

    def value_at(self, step: int) -> float:
        if step not in self.values:
            raise TrialFailed(f"hpo.objective: {self.metric} was not logged at step {step} (the step final/ holds); "
                              f"figures logged: {', '.join(sorted(self.logged)) or 'none'}. Use val_loss (needs a val "
                              "split) or a gen_* figure with eval.during_training.every dividing the last step")
        return self.values[step]


def objective(cfg: Config, study: optuna.Study) -> Callable[[optuna.Trial], float]:
    """Optuna's objective: train one trial, return its objective figure at the step final/ holds."""
    study_dir = StudyDir(Path(cfg.hpo.output_dir))

    def run_trial(trial: optuna.Trial) -> float:
        run_dir = study_dir.trial(trial.number)
        trial.set_user_attr(RUN_DIR_ATTR, str(run_dir.resolve()))
        trial.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}/{os.getpid()}")
        try:
            values = suggest(trial, cfg.hpo.search_space)
            if run_dir.exists():  # trial numbers are unique in a study: another study left it
                raise TrialFailed(f"{run_dir} exists already, left by another study in hpo.output_dir "
                                  f"{cfg.hpo.output_dir}; give each study its own hpo.output_dir")
            resume_interrupted(study, trial, study_dir, run_dir)
            trial_cfg = trial_config(cfg, values, run_dir)
            reporter = ObjectiveReporter(trial, cfg.hpo.objective)
            result = train(trial_cfg, resume="auto", on_figures=reporter)
            if result.final.selected_by == cfg.hpo.objective and result.final.value is not None:
                return result.final.value  # train.select_best's checkpoint, perhaps from before a resume
            return reporter.value_at(result.final.step)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            trial.set_user_attr(FAIL_REASON_ATTR, f"{type(exc).__name__}: {exc}"[:2000])
            raise
        finally:  # a trial that ran out of memory must not leave the next one short of it
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    return run_trial


def resume_interrupted(study: optuna.Study, trial: optuna.Trial, study_dir: StudyDir, run_dir: Path) -> None:
    """A retry of an interrupted trial starts from the interrupted run's files, so it resumes from its newest
    complete checkpoint (the fingerprint leaves the output dir out). Checkpoint files are hard-linked where the
    file system allows (written once, never changed in place); logs are copied, as resuming trims them."""
    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        history = RetryHeartbeatStaleTrialCallback.retry_history(frozen)
    if not history:
        return
    interrupted = study_dir.trial(history[-1])
    if not interrupted.is_dir():  # it ran on another machine, whose disk this one does not see
        return
    checkpoints = RunDir(interrupted).checkpoints

    def link_or_copy(src: str, dst: str) -> Any:
        if Path(src).is_relative_to(checkpoints):
            try:
                return os.link(src, dst)
            except OSError:
                pass
        return shutil.copy2(src, dst)

    shutil.copytree(interrupted, run_dir, copy_function=link_or_copy)
    trial.set_user_attr(RESUMED_FROM_ATTR, history[-1])
