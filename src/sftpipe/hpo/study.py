"""The Optuna study of a config's `hpo` section: storage, sampler and pruner, all chosen by Optuna's own classes.

Scale-out is Optuna's: every `sftpipe hpo` process pointed at the same storage and study name asks the storage
for its next trial, so N processes on N machines cooperate on one study with no scheduler of ours.

Interrupted trials (a worker killed mid-trial) are found by Optuna's heartbeat on database storages (SQLite,
PostgreSQL, ...): a trial whose heartbeat stops for 2 x hpo.heartbeat_s is marked FAIL by the next worker that
starts a trial, and `RetryHeartbeatStaleTrialCallback` queues it again with the same values; the retry resumes
from the interrupted run's newest complete checkpoint (see `trial.py`). Optuna's journal storage has no
heartbeat: there an interrupted trial stays RUNNING and is not retried.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import (
    BaseStorage,
    JournalStorage,
    RDBStorage,
    RetryHeartbeatStaleTrialCallback,
)
from optuna.storages.journal import JournalFileBackend

from sftpipe.config.hpo_section import (
    CategoricalParam,
    FloatParam,
    HpoConfig,
    IntParam,
)
from sftpipe.config.schema import Config
from sftpipe.config.search_space import with_values
from sftpipe.contracts.study_dir import StudyDir
from sftpipe.errors import SftpipeError
from sftpipe.redact import redact_url

JOURNAL_PREFIX = "journal:"
STORAGE_ATTEMPTS = 3
BASE_CONFIG_ATTR = "sftpipe_base_config_sha256"  # study user attribute: what every worker must train


def storage_url(cfg: Config) -> str:
    """hpo.storage, or the SQLite file in the study dir when it is null."""
    return cfg.hpo.storage or StudyDir(Path(cfg.hpo.output_dir)).default_storage


def open_storage(cfg: Config) -> BaseStorage:
    """The study's storage: a journal file, or a database with heartbeats and retries of interrupted trials."""
    hpo = cfg.hpo
    url = storage_url(cfg)
    Path(hpo.output_dir).mkdir(parents=True, exist_ok=True)
    if url.startswith(JOURNAL_PREFIX):
        path = Path(url.removeprefix(JOURNAL_PREFIX))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    # SQLite waits for a lock held by another worker on this machine instead of failing at once
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    for attempt in range(STORAGE_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                retry = RetryHeartbeatStaleTrialCallback(hpo.retry_interrupted) if hpo.retry_interrupted else None
                return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=hpo.heartbeat_s,
                                  grace_period=2 * hpo.heartbeat_s, heartbeat_stale_trial_callback=retry)
        except Exception as exc:  # noqa: BLE001 (SQLAlchemy/driver errors: no host, bad login, missing driver)
            # Workers started together on an empty database race to create Optuna's tables, and the loser's
            # CREATE fails (seen with PostgreSQL: duplicate type studydirection); once created, opening works.
            if attempt + 1 < STORAGE_ATTEMPTS and not isinstance(exc, (ImportError, ValueError)):
                time.sleep(1 + attempt)
                continue
            raise SftpipeError(f"hpo.storage {redact_url(url)}: cannot open the study storage: {type(exc).__name__}: "
                               f"{exc}. Check the URL (e.g. postgresql+psycopg://user:pass@host/db, with `pip "
                               "install 'sftpipe[postgres]'` for the driver), that the server is reachable, or "
                               "leave hpo.storage null for a SQLite file in hpo.output_dir") from None
    raise AssertionError("unreachable")


def make_pruner(cfg: Config) -> optuna.pruners.BasePruner:
    hpo = cfg.hpo
    min_resource = max(1, cfg.train.eval_every)  # figures come every eval_every optimizer steps
    if hpo.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=hpo.pruner_startup_trials,
                                           n_warmup_steps=hpo.pruner_warmup_steps)
    if hpo.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=min_resource, max_resource="auto")
    if hpo.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_resource)
    return optuna.pruners.NopPruner()


def make_sampler(hpo: HpoConfig, seed: int) -> optuna.samplers.BaseSampler:
    if hpo.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if hpo.sampler == "grid":
        return optuna.samplers.GridSampler(grid_values(hpo), seed=seed)
    # constant_liar: a worker treats the trials running elsewhere as bad, so parallel workers spread out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def grid_values(hpo: HpoConfig) -> dict[str, list[Any]]:
    """Every value of each parameter, for the grid sampler."""
    grid: dict[str, list[Any]] = {}
    for key, spec in hpo.search_space.items():
        if isinstance(spec, CategoricalParam):
            grid[key] = list(spec.choices)
        elif isinstance(spec, IntParam) and not spec.log:
            grid[key] = list(range(spec.low, spec.high + 1, spec.step))
        elif isinstance(spec, FloatParam) and spec.step is not None:
            count = int(round((spec.high - spec.low) / spec.step)) + 1
            grid[key] = [spec.low + i * spec.step for i in range(count)]
        else:
            raise SftpipeError(f"hpo.search_space.{key}: the grid sampler needs a finite list of values; give it "
                               "choices (type: categorical), a step (float), or drop log (int); or use sampler: tpe")
    return grid


def base_config_sha256(cfg: Config) -> str:
    """What decides the trials apart from the sampled values: every section but hpo, and no output dir."""
    values = with_values(cfg, {"train.output_dir": "-"}).model_dump(mode="json", exclude={"hpo"})
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def open_study(cfg: Config) -> optuna.Study:
    """Create the study, or join it when the storage has one of that name (another worker, an earlier run).

    The sampler's seed is hpo.seed plus the trials already in the study: a fresh study is reproducible, and a
    worker that joins or restarts one does not draw the values the first worker drew.

    Raises:
        SftpipeError: the study exists with another base config (workers of one study must train the same one).
    """
    hpo = cfg.hpo
    study = optuna.create_study(storage=open_storage(cfg), study_name=hpo.study_name, direction=hpo.direction,
                                pruner=make_pruner(cfg), sampler=make_sampler(hpo, hpo.seed), load_if_exists=True)
    if study.direction.name.lower() != hpo.direction:
        raise SftpipeError(f"hpo.direction: {hpo.direction}, but study '{hpo.study_name}' in "
                           f"{redact_url(storage_url(cfg))} was created to {study.direction.name.lower()}; use "
                           "another hpo.study_name for a new study")
    mine = base_config_sha256(cfg)
    theirs = study.user_attrs.get(BASE_CONFIG_ATTR)
    if theirs is None:
        study.set_user_attr(BASE_CONFIG_ATTR, mine)
    elif theirs != mine:
        raise SftpipeError(f"study '{hpo.study_name}' in {redact_url(storage_url(cfg))} was started with another "
                           "base config (model, data, lora, train or eval differ beyond the output dir): its trials "
                           "would not be comparable. Use the same config as the study's other workers, or another "
                           "hpo.study_name")
    study.sampler = make_sampler(hpo, hpo.seed + len(study.get_trials(deepcopy=False)))
    return study
