"""The hpo stage: an Optuna search over config values in which each trial is a normal training run.

`run(cfg)` joins (or creates) the study in hpo.storage, runs trials until the study holds hpo.n_trials finished
ones (complete or pruned, counted over every worker and restart) or hpo.timeout_s passes, then writes the
leaderboard, best.yaml and report.html. Running it again after a kill continues the same study: finished trials
are never run again, and the interrupted one is failed and retried from its checkpoint (see `study.py`).

Modules: `study` (storage, sampler, pruner), `trial` (one trial as a training run), `results` (what is written).
"""

from __future__ import annotations

import os
import time

import optuna
from optuna.trial import TrialState

from sftpipe.config.schema import Config
from sftpipe.contracts.study_dir import StudyDir
from sftpipe.errors import SftpipeError
from sftpipe.hpo.results import HpoResult, best_config, summarize, write_results
from sftpipe.hpo.study import open_study, storage_url
from sftpipe.hpo.trial import objective
from sftpipe.redact import redact_url
from sftpipe.stages import train

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what hpo.n_trials counts
MAX_FAILURES_IN_A_ROW = 3  # a worker whose trials keep failing stops: the cause is rarely the sampled values


class _WorkerTally:
    """Counts this worker's trials; stops it after MAX_FAILURES_IN_A_ROW failures in a row."""

    def __init__(self):
        self.ran = self.in_a_row = 0
        self.last_reason = ""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.ran += 1
        self.in_a_row = self.in_a_row + 1 if trial.state == TrialState.FAIL else 0
        self.last_reason = str(trial.user_attrs.get("fail_reason", ""))
        if self.in_a_row >= MAX_FAILURES_IN_A_ROW:
            study.stop()


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def run(cfg: Config, retrain_best: bool = False) -> HpoResult:
    """Run this worker's share of the study, write the results; with `retrain_best`, then train best.yaml.

    Raises:
        SftpipeError: launched as several processes (torchrun), the storage cannot be opened, the study belongs to another config, trials keep failing,
            or --retrain-best has no complete trial to train.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SftpipeError("sftpipe hpo runs each trial in one process, and was started as one of "
                           f"{os.environ['WORLD_SIZE']} (torchrun or accelerate launch): start N workers as separate "
                           "`sftpipe hpo` processes sharing hpo.storage instead")
    started = time.perf_counter()
    hpo = cfg.hpo
    study = open_study(cfg)
    storage = redact_url(storage_url(cfg))
    callbacks: list = []
    if hpo.n_trials is not None:
        callbacks.append(optuna.study.MaxTrialsCallback(hpo.n_trials, states=FINISHED))
    failures = _WorkerTally()
    callbacks.append(failures)
    if hpo.n_trials is None or finished_trials(study) < hpo.n_trials:
        study.optimize(objective(cfg, study), timeout=hpo.timeout_s, callbacks=callbacks, catch=(Exception,),
                       gc_after_trial=True)
    result = summarize(cfg, study, storage)
    result.trials_run = failures.ran
    result.files = write_results(cfg, study, result)
    if failures.in_a_row >= MAX_FAILURES_IN_A_ROW:
        raise SftpipeError(f"{MAX_FAILURES_IN_A_ROW} trials in a row failed, so this worker stopped; the last: "
                           f"{failures.last_reason or 'no reason recorded'}. All trials: "
                           f"{StudyDir(result.study_dir).trials_csv}")
    if retrain_best:
        if result.best is None:
            raise SftpipeError(f"--retrain-best: study '{result.study_name}' has no complete trial yet")
        result.retrained = train(best_config(cfg, result), resume="auto")
    result.wall_s = time.perf_counter() - started
    return result


__all__ = ["HpoResult", "run"]
