"""sftpipe hpo in-process: the search space is checked like the config, sampled values reach the trials' run
dirs, the pruner stops a clearly worse trial (and without it the trial runs to the end), failures are recorded
and the study goes on, best.yaml retrains to the best trial's val loss bitwise, the report needs no network."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import optuna
import pytest

from sftpipe import hpo
from sftpipe.config import ConfigError, dump_config, load_config
from sftpipe.config.hpo_section import HpoConfig
from sftpipe.config.search_space import with_values
from sftpipe.contracts.run_dir import RunDir
from sftpipe.contracts.study_dir import StudyDir
from sftpipe.errors import SftpipeError
from sftpipe.hpo.study import grid_values, open_study
from sftpipe.hpo.trial import FAIL_REASON_ATTR, ObjectiveReporter, TrialFailed
from tests.conftest import EXAMPLES, make_config

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = {"train.lr": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
         "lora.r": {"type": "categorical", "choices": [2, 4, 8]}}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_dir):
    """A prepared data dir of the shipped prompt/completion sample (with a val split), shared by the studies."""
    from sftpipe.data import prepare

    tmp = tmp_path_factory.mktemp("hpo_data")
    cfg = make_config(tmp, tiny_dir, [{"path": str(EXAMPLES / "prompt_completion" / "pc_sample.jsonl")}])
    prepare.run(cfg)
    return tmp, cfg.data.output_dir


def study_config(tmp: Path, tiny_dir: Path, data_dir: str, eval_section: dict | None = None, **hpo_fields):
    """A fast_test config with 4 optimizer steps validated every 2, and an hpo section writing under `tmp`."""
    hpo_section = {"output_dir": str(tmp / "study"), "search_space": SPACE, **hpo_fields}
    return make_config(tmp, tiny_dir, [{"path": str(EXAMPLES / "prompt_completion" / "pc_sample.jsonl")}],
                       data={"output_dir": data_dir}, train={"max_steps": 4, "eval_every": 2},
                       eval=eval_section or {}, hpo=hpo_section)


def test_search_space_typo_is_a_config_error_naming_the_nearest_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("hpo:\n  search_space:\n    lora.rr: {type: categorical, choices: [8, 16]}\n"
                    "    train.lr: {type: float, lo: 1.0e-5, high: 1.0e-3}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    problems = err.value.problems  # both at once
    assert f"{path}: hpo.search_space.lora.rr: not a config field; did you mean 'lora.r'?" in problems
    assert any("hpo.search_space.train.lr.float.lo: unknown key (did you mean 'low'?)" in p for p in problems)
    # a bound the schema refuses is an error before any trial runs
    with pytest.raises(ConfigError, match=r"hpo.search_space.lora.dropout: the value 1.5 is refused by the config: "
                                          r"lora.dropout: Input should be less than 1"):
        load_config(overrides=["hpo.search_space={lora.dropout: {type: float, low: 0.0, high: 1.5}}"])
    # control: the same space spelled right loads
    path.write_text("hpo:\n  search_space:\n    lora.r: {type: categorical, choices: [8, 16]}\n"
                    "    train.lr: {type: float, low: 1.0e-5, high: 1.0e-3}\n"
                    "    lora.dropout: {type: float, low: 0.0, high: 0.5}\n")
    assert set(load_config(path).hpo.search_space) == {"lora.r", "train.lr", "lora.dropout"}


def test_search_space_refuses_keys_outside_the_training_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("hpo:\n  search_space:\n    hpo.seed: {type: int, low: 0, high: 3}\n")
    with pytest.raises(ConfigError, match="hpo.search_space.hpo.seed: not a config field"):
        load_config(path)
    with pytest.raises(ConfigError, match="log: true needs low > 0"):
        load_config(overrides=["hpo.search_space={train.lr: {type: float, low: 0, high: 1, log: true}}"])


def test_saved_configs_never_hold_the_storage_password():
    cfg = load_config(overrides=["hpo.storage=postgresql+psycopg://alice:s3cr@t@db-host:5432/studies"])
    assert cfg.hpo.storage == "postgresql+psycopg://alice:s3cr@t@db-host:5432/studies"  # what Optuna connects with
    saved = dump_config(cfg)  # run dirs' config.yaml, best.yaml, show-config
    assert "s3cr" not in saved and "storage: postgresql+psycopg://alice:***@db-host:5432/studies" in saved
    assert "s3cr" not in with_values(cfg, {"train.lr": 1e-3}).hpo.storage  # trial configs are built this way
    journal = load_config(overrides=["hpo.storage=journal:/shared/a@b.journal"])
    assert "storage: journal:/shared/a@b.journal" in dump_config(journal)  # no password there: left alone


def test_hpo_refuses_a_multi_process_launch(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SftpipeError, match="start N workers as separate `sftpipe hpo` processes"):
        hpo.run(load_config(overrides=[f"hpo.output_dir={tmp_path}"]))
    assert not any(tmp_path.iterdir())  # refused before a storage was made


def test_grid_sampler_needs_a_finite_list_of_values():
    space = {"lora.r": {"type": "categorical", "choices": [4, 8]}, "train.max_steps": {"type": "int", "low": 2,
                                                                                         "high": 6, "step": 2},
             "lora.dropout": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.1}}
    grid = grid_values(HpoConfig(search_space=space))
    assert grid["lora.r"] == [4, 8] and grid["train.max_steps"] == [2, 4, 6]
    assert grid["lora.dropout"] == pytest.approx([0.0, 0.1, 0.2])
    with pytest.raises(SftpipeError, match="hpo.search_space.train.lr: the grid sampler needs"):
        grid_values(HpoConfig(search_space={"train.lr": {"type": "float", "low": 1e-4, "high": 1e-3}}))


class _FakeTrial:
    def __init__(self, prune: bool):
        self.reported: list[tuple[float, int]] = []
        self.prune = prune

    def report(self, value: float, step: int) -> None:
        self.reported.append((value, step))

    def should_prune(self) -> bool:
        return self.prune


def test_reporter_fails_a_diverged_trial_and_never_prunes_the_last_step():
    reporter = ObjectiveReporter(_FakeTrial(prune=False), "val_loss")
    reporter(2, {"val_loss": 3.0, "val_tokens": 10}, False)
    reporter(3, {"gen_length_mean": 5.0}, False)  # no objective figure at this step: nothing reported
    assert reporter.trial.reported == [(3.0, 2)]
    with pytest.raises(TrialFailed, match="val_loss is nan at step 4: the run diverged"):
        reporter(4, {"val_loss": math.nan}, False)
    pruning = ObjectiveReporter(_FakeTrial(prune=True), "val_loss")
    pruning(6, {"val_loss": 2.0}, True)  # the last step: the trial is done, its value counts
    with pytest.raises(optuna.TrialPruned):
        pruning(2, {"val_loss": 2.0}, False)
    gen = ObjectiveReporter(_FakeTrial(prune=False), "gen_pass@1")
    gen(6, {"val_loss": 2.0}, True)
    with pytest.raises(TrialFailed, match="gen_pass@1 was not logged at step 6 .*; figures logged: val_loss"):
        gen.value_at(6)


def test_sampled_values_land_in_trial_configs_and_best_yaml_retrains_bitwise(tmp_path, tiny_dir, prepared):
    """2 random trials, no pruner; then --retrain-best trains best.yaml and gets the best trial's val loss."""
    cfg = study_config(tmp_path, tiny_dir, prepared[1], n_trials=2, sampler="random", pruner="none", seed=3)
    result = hpo.run(cfg, retrain_best=True)
    study_dir = StudyDir(tmp_path / "study")
    assert result.counts == {"COMPLETE": 2} and result.trials_run == 2
    seen = set()
    for row in result.rows:
        run_dir = study_dir.trial(row.number)
        assert row.run_dir == str(run_dir.resolve()) and RunDir.is_run_dir(run_dir)
        trained = load_config(RunDir(run_dir).config)
        assert trained.train.lr == row.params["train.lr"] and trained.lora.r == row.params["lora.r"]
        assert trained.train.output_dir == str(run_dir)
        seen.add((row.params["train.lr"], row.params["lora.r"]))
    assert len(seen) == 2  # the sampler's values differ from trial to trial, and each reached its run

    rows = list(csv.DictReader(study_dir.trials_csv.open()))
    assert [int(r["number"]) for r in rows] == [0, 1]
    assert all(float(r["value"]) == next(x.value for x in result.rows if x.number == int(r["number"])) for r in rows)
    best = result.best
    assert best is not None and best.value == min(r.value for r in result.rows)
    best_cfg = load_config(study_dir.best_config)
    assert best_cfg.train.lr == best.params["train.lr"] and best_cfg.lora.r == best.params["lora.r"]
    assert best_cfg.train.output_dir == str(study_dir.best_run)
    # best.yaml, trained again in this process after other trials, gives the best trial's val loss bitwise
    assert result.retrained.run_dir == study_dir.best_run
    assert result.retrained.val.loss == best.value, (result.retrained.val.loss, best.value)

    report = study_dir.report.read_text()
    assert "Optimisation history" in report and "Parallel coordinates" in report
    assert "<p class=note>not shown" not in report  # every plot was drawn
    # self-contained: no script, stylesheet or image loaded from anywhere
    assert not re.search(r"<script[^>]*\bsrc=|<link\b|<img[^>]*src=\"?https?:", report)


def test_pruner_stops_a_clearly_worse_trial_and_without_it_the_trial_runs_to_the_end(tmp_path, tiny_dir, prepared):
    """Trial 0 learns (lr 3e-2), trial 1 cannot (lr 1e-9): the median pruner stops trial 1 at its first
    validation, leaving no final/; with pruner none (the control) the same trial trains all 4 steps."""
    for pruner in ("median", "none"):
        cfg = study_config(tmp_path / pruner, tiny_dir, prepared[1], n_trials=2, pruner=pruner,
                           pruner_startup_trials=1, search_space={"train.lr": SPACE["train.lr"] | {"low": 1e-9}})
        study = open_study(cfg)
        study.enqueue_trial({"train.lr": 3e-2})
        study.enqueue_trial({"train.lr": 1e-9})
        result = hpo.run(cfg)
        states = {row.number: row.state for row in result.rows}
        worse = RunDir(StudyDir(tmp_path / pruner / "study").trial(1))
        steps = [line for line in worse.metrics.read_text().splitlines() if '"loss"' in line]
        if pruner == "median":
            assert states == {0: "COMPLETE", 1: "PRUNED"}
            assert not worse.final.exists() and len(steps) == 2  # stopped at the validation of step 2
            assert next(r for r in result.rows if r.number == 1).note == "pruned at step 2"
        else:
            assert states == {0: "COMPLETE", 1: "COMPLETE"}
            assert worse.final.is_dir() and len(steps) == 4
            assert result.best.number == 0  # clearly worse indeed


def test_a_failed_trial_is_recorded_with_its_reason_and_the_study_goes_on(tmp_path, tiny_dir, prepared):
    """A sampled combination the schema refuses (select_best val_loss with a checkpoint every 3 steps but a
    validation every 2) fails its trial only; each value alone is valid, so the config loads."""
    space = {"train.save_every": {"type": "categorical", "choices": [3, 4]},
             "train.select_best": {"type": "categorical", "choices": ["none", "val_loss"]}}
    cfg = study_config(tmp_path, tiny_dir, prepared[1], n_trials=1, pruner="none", search_space=space)
    study = open_study(cfg)
    study.enqueue_trial({"train.save_every": 3, "train.select_best": "val_loss"})
    study.enqueue_trial({"train.save_every": 4, "train.select_best": "val_loss"})
    result = hpo.run(cfg)
    assert {row.number: row.state for row in result.rows} == {0: "FAIL", 1: "COMPLETE"}
    failed = study.trials[0]
    assert "TrialFailed" in failed.user_attrs[FAIL_REASON_ATTR] and "eval_every" in failed.user_attrs[FAIL_REASON_ATTR]
    assert result.best.number == 1
    rows = {int(r["number"]): r for r in csv.DictReader(StudyDir(tmp_path / "study").trials_csv.open())}
    assert rows[0]["state"] == "FAIL" and "invalid config" in rows[0]["note"]


def test_a_worker_whose_trials_keep_failing_stops_and_says_why(tmp_path, tiny_dir, prepared):
    """Run dirs left by another study in the same output dir fail each trial before it trains; after 3 failures
    in a row the worker stops with the reason instead of failing trials forever."""
    cfg = study_config(tmp_path, tiny_dir, prepared[1], n_trials=5)
    for number in range(3):
        StudyDir(tmp_path / "study").trial(number).mkdir(parents=True)
    with pytest.raises(SftpipeError, match=r"3 trials in a row failed, so this worker stopped; the last: TrialFailed: "
                                           r".*trial-0002 exists already, left by another study"):
        hpo.run(cfg)
    study = open_study(cfg)
    assert [t.state.name for t in study.trials] == ["FAIL"] * 3
    assert not any(StudyDir(tmp_path / "study").trial(n).joinpath("logs").exists() for n in range(3))  # untouched


def test_an_in_training_eval_figure_as_objective_in_a_journal_storage(tmp_path, tiny_dir, prepared):
    """hpo.objective may be any figure the run logs at validation: here gen_distinct_2 of the in-training eval
    (maximised), with the study in Optuna's journal file instead of a database."""
    journal = tmp_path / "shared" / "study.journal"
    cfg = study_config(tmp_path, tiny_dir, prepared[1], n_trials=1, pruner="none", objective="gen_distinct_2",
                       direction="maximize", storage=f"journal:{journal}",
                       eval_section={"during_training": {"every": 2, "max_prompts": 2, "max_new_tokens": 8}})
    result = hpo.run(cfg)
    assert journal.is_file() and not (tmp_path / "study" / "study.db").exists()
    assert result.counts == {"COMPLETE": 1} and result.direction == "maximize"
    logged = [json.loads(line) for line in RunDir(StudyDir(tmp_path / "study").trial(0)).metrics.read_text()
              .splitlines()]
    last_gen = [m["gen_distinct_2"] for m in logged if "gen_distinct_2" in m][-1]
    assert result.best.value == last_gen  # the figure of the last step, as the run logged it
