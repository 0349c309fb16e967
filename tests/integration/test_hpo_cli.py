"""`sftpipe hpo` as a process: SIGKILL mid-trial and run the same command again; two workers on one PostgreSQL
study at once."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path

import optuna
import pytest
from sqlalchemy.engine import make_url

from sftpipe.config import load_config
from sftpipe.contracts.run_dir import RunDir
from sftpipe.contracts.study_dir import StudyDir
from sftpipe.data import prepare
from sftpipe.hpo.results import INTERRUPTED, leaderboard
from sftpipe.hpo.trial import RESUMED_FROM_ATTR, WORKER_ATTR
from sftpipe.train.faults import ENV
from tests.cli_forkserver import start_cli
from tests.conftest import EXAMPLES, REPO, make_config

pytestmark = pytest.mark.integration

THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
POSTGRES_URL = os.environ.get("SFTPIPE_TEST_POSTGRES_URL",
                              "postgresql+psycopg://sftpipe:sftpipe@localhost:5432/sftpipe_test")


def _study_config(tmp: Path, tiny_dir: Path, **hpo_fields) -> Path:
    """A prepared data dir and a config file: trials of 4 steps, validated and checkpointed every 2."""
    cfg = make_config(tmp, tiny_dir, [{"path": str(EXAMPLES / "prompt_completion" / "pc_sample.jsonl")}],
                      train={"max_steps": 4, "eval_every": 2, "save_every": 2},
                      hpo={"output_dir": str(tmp / "study"), "sampler": "random", "pruner": "none",
                           "search_space": {"train.lr": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
                                            "lora.r": {"type": "categorical", "choices": [2, 4, 8]}},
                           **hpo_fields})
    prepare.run(cfg)
    return tmp / "config.json"


def _hpo(config: Path, log: Path, *args: str, env: dict[str, str] | None = None):
    return start_cli(["hpo", config, *args], cwd=config.parent, log=log, env={**THREADS, **(env or {})})


def _study(tmp: Path, storage: str | None = None, name: str = "sftpipe") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage or StudyDir(tmp / "study").default_storage)


@pytest.mark.heavy  # about a minute: 3 processes, 5 trainings
def test_kill_9_mid_trial_then_the_same_command_completes_the_study(tmp_path, tiny_dir):
    """Killed in trial 1 after its checkpoint of step 2; the rerun marks trial 1 failed (no heartbeat), retries
    its values from that checkpoint, never runs trial 0 again, and stops once 3 trials have finished."""
    config = _study_config(tmp_path, tiny_dir, n_trials=3, heartbeat_s=1)
    log = tmp_path / "hpo.log"
    # the 7th optimizer step of the process: trial 0 takes steps 1-4, trial 1 is killed at the top of its step 3
    first = _hpo(config, log, env={ENV: "train.step@7"})
    first.join(timeout=600)
    assert first.exitcode == -signal.SIGKILL, log.read_text()[-3000:]
    study_dir = StudyDir(tmp_path / "study")
    done = RunDir(study_dir.trial(0))
    done_metrics = done.metrics.read_bytes()
    assert RunDir.is_run_dir(done.path) and not RunDir(study_dir.trial(1)).final.exists()

    time.sleep(2.5)  # past the grace period (2 x heartbeat_s) of the killed trial's last heartbeat
    second = _hpo(config, log)
    second.join(timeout=600)
    assert second.exitcode == 0, log.read_text()[-3000:]
    trials = {t.number: t for t in _study(tmp_path).trials}
    states = {n: t.state.name for n, t in trials.items()}
    assert states == {0: "COMPLETE", 1: "FAIL", 2: "COMPLETE", 3: "COMPLETE"}, states
    assert trials[2].params == trials[1].params and trials[2].user_attrs[RESUMED_FROM_ATTR] == 1
    assert done.metrics.read_bytes() == done_metrics  # trial 0 was not run again
    # the retry resumed from trial 1's checkpoint of step 2: its log has every step once
    steps = [json.loads(line)["step"] for line in RunDir(study_dir.trial(2)).metrics.read_text().splitlines()
             if '"loss"' in line]
    assert steps == [1, 2, 3, 4]
    rows = {r.number: r for r in leaderboard(_study(tmp_path))}
    assert rows[1].note == INTERRUPTED and rows[2].note == "resumed trial 1"
    assert "3 complete, 1 fail; this worker ran 2 trial(s)" in log.read_text()  # the retry of 1, and 3

    third = _hpo(config, log)  # n_trials counts what is done: nothing left to run
    third.join(timeout=600)
    assert third.exitcode == 0 and len(_study(tmp_path).trials) == 4
    ran = [line for line in log.read_text().splitlines() if "this worker ran" in line]
    assert len(ran) == 2 and "this worker ran 0 trial(s)" in ran[-1]


@pytest.mark.heavy  # a couple of minutes on 2 busy cores
def test_the_shipped_haskell_study_runs_6_trials_with_pruning(tmp_path, tiny_dir):
    """configs/haskell_hpo.yaml as the README runs it (on the micro tiny model): 6 finished trials, the median
    pruner stops some, best.yaml is a config `sftpipe train` accepts."""
    (tmp_path / "examples").symlink_to(EXAMPLES)  # the config's relative data path, from a scratch dir
    config = REPO / "configs" / "haskell_hpo.yaml"
    sets = ["--set", f"model.name_or_path={tiny_dir}"]
    log = tmp_path / "hpo.log"
    for argv in (["prepare", config, *sets], ["hpo", config, *sets]):
        process = start_cli(argv, cwd=tmp_path, log=log, env=THREADS)
        process.join(timeout=900)
        assert process.exitcode == 0, log.read_text()[-3000:]
    study = optuna.load_study(study_name="sftpipe", storage=StudyDir(tmp_path / "runs/haskell-hpo").default_storage)
    states = [t.state.name for t in study.trials]
    assert len(states) == 6 and states.count("PRUNED") >= 1 and "FAIL" not in states, states
    best = load_config(tmp_path / "runs/haskell-hpo/best.yaml")
    assert best.train.lr == study.best_trial.params["train.lr"] and best.lora.r == study.best_trial.params["lora.r"]


@pytest.fixture
def fresh_postgres():
    """The URL of a new, empty database on the test server (dropped afterwards), or skip when none answers."""
    try:
        import psycopg
        from sqlalchemy.engine import make_url

        url = make_url(POSTGRES_URL)
        admin = psycopg.connect(host=url.host, port=url.port or 5432, user=url.username, password=url.password,
                                dbname=url.database, connect_timeout=3, autocommit=True)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no PostgreSQL answers at {POSTGRES_URL.split('@')[-1]} ({type(exc).__name__}): run "
                    "scripts/postgres.sh or set SFTPIPE_TEST_POSTGRES_URL")
    name = f"sftpipe_hpo_{uuid.uuid4().hex[:12]}"
    admin.execute(f"CREATE DATABASE {name}")
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        admin.close()


@pytest.mark.postgres
@pytest.mark.heavy  # about a minute: 2 processes, 4 trainings
def test_two_workers_on_one_postgres_study_run_disjoint_trials(tmp_path, tiny_dir, fresh_postgres):
    """Two `sftpipe hpo` processes started together on an empty database (both create Optuna's tables) share
    one study of 4 trials: each runs some, none runs the same trial, every trial is recorded with its run dir."""
    config = _study_config(tmp_path, tiny_dir, n_trials=4, storage=fresh_postgres)
    workers = [_hpo(config, tmp_path / f"worker{i}.log") for i in range(2)]
    for worker in workers:
        worker.join(timeout=600)
    for i, worker in enumerate(workers):
        assert worker.exitcode == 0, (tmp_path / f"worker{i}.log").read_text()[-3000:]
    trials = _study(tmp_path, fresh_postgres).trials
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert 4 <= len(trials) <= 5  # a worker that started its last trial before the 4th finished runs it out
    by_worker: dict[str, set[int]] = {}
    for t in trials:
        by_worker.setdefault(t.user_attrs[WORKER_ATTR], set()).add(t.number)
        assert RunDir.is_run_dir(StudyDir(tmp_path / "study").trial(t.number))
    assert len(by_worker) == 2, by_worker  # both workers ran trials...
    first, second = by_worker.values()
    assert not first & second and first | second == {t.number for t in trials}  # ...disjoint, all recorded
    assert len({t.user_attrs["run_dir"] for t in trials}) == len(trials)
    password = make_url(fresh_postgres).password
    for path in [*(tmp_path / "study").rglob("*.yaml"), *(tmp_path / "study").glob("*.csv"), *tmp_path.glob("*.log")]:
        assert f":{password}@" not in path.read_text(), path  # configs, best.yaml, trials.csv, what was printed
