"""train.report_to: one real run logs to TensorBoard, W&B (offline) and MLflow (SQLite), and each is read back
with the library's own reader: per-step metrics equal logs/metrics.jsonl, the config (redacted), data summary
and run manifest are there once, the final figures are the run's summary. report_to: none makes no tracker files.
"""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import pytest

from sftpipe import stages
from sftpipe.config.schema import TrainConfig
from sftpipe.contracts.run_dir import RunDir
from sftpipe.errors import SftpipeError
from sftpipe.train.resume import run_fingerprint
from sftpipe.train.trackers import MLFLOW_ARTIFACTS, check_tracker_libraries
from sftpipe.train.tracking import read_metrics
from tests.conftest import make_config

STEPS = 3


def wandb_records(run_file: Path) -> list:
    """The records of a W&B run file (`run-*.wandb`), parsed with wandb's own protobuf `Record`.

    The file is a LevelDB-style log: a 7-byte header (':W&B', magic, version), then 32 KiB blocks of chunks,
    each with a 7-byte header (CRC32C, length, type: 1 full, 2 first, 3 middle, 4 last).
    """
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B", f"{run_file} is not a W&B run file"
    block, pos, pieces, payloads = 32768, 7, [], []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:  # zero padding to the end of the block
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            payloads.append(chunk)
        elif kind == 2:
            pieces = [chunk]
        elif kind == 3:
            pieces.append(chunk)
        elif kind == 4:
            payloads.append(b"".join(pieces + [chunk]))
    records = []
    for payload in payloads:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def record_items(items) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, tiny_dir, chat_sources):
    """A 3-step LoRA run logging to all three trackers, W&B offline and MLflow into a SQLite file."""
    tmp = tmp_path_factory.mktemp("trackers")
    mp = pytest.MonkeyPatch()
    mp.chdir(tmp)  # MLflow puts a SQLite store's artifacts under ./mlruns
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
    cfg = make_config(tmp, tiny_dir, chat_sources,
                      train={"report_to": ["tensorboard", "wandb", "mlflow"], "max_steps": STEPS, "eval_every": 1,
                             "run_name": "tracked", "project": "sftpipe-test", "tags": ["unit", "tiny"]})
    from sftpipe.data import prepare

    prepare.run(cfg)
    try:
        result = stages.train(cfg, resume="never")
    finally:
        mp.undo()
    return tmp, cfg, result


def test_wandb_offline_run_file_holds_metrics_config_and_summary(tracked_run):
    tmp, cfg, result = tracked_run
    run_files = list((RunDir(result.run_dir).logs / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 1, run_files
    records = wandb_records(run_files[0])
    by_kind: dict[str, list] = {}
    for r in records:
        by_kind.setdefault(r.WhichOneof("record_type"), []).append(r)
    run = by_kind["run"][0].run
    assert (run.project, run.display_name, list(run.tags)) == ("sftpipe-test", "tracked", ["unit", "tiny"])

    config = {}
    for r in by_kind["config"]:
        config.update(record_items(r.config.update))
    assert config["config"]["train"]["lr"] == cfg.train.lr
    assert config["config"]["train"]["report_to"] == ["tensorboard", "wandb", "mlflow"]
    assert config["run"]["seed"] == cfg.train.seed and config["run"]["method"] == "lora"
    assert config["data"]["splits"]["train"]["examples"] > 0 and config["data"]["data_manifest_sha256"]

    logged = {m["step"]: m for m in read_metrics(RunDir(result.run_dir).metrics) if "loss" in m}
    history = {}
    for r in by_kind["history"]:
        row = record_items(r.history.item)
        history.setdefault(row["_step"], {}).update(row)
    assert sorted(s for s, row in history.items() if "loss" in row) == list(range(1, STEPS + 1))
    for step, m in logged.items():
        assert history[step]["loss"] == pytest.approx(m["loss"], rel=1e-12)
        assert history[step]["peak_memory_mb"] == pytest.approx(m["peak_memory_mb"])
    assert "val_loss" in history[STEPS]

    summary = {}
    for r in by_kind["summary"]:
        summary.update(record_items(r.summary.update))
    assert summary["final/step"] == STEPS and summary["final/selected_by"] == "last"
    assert summary["final/last_val_loss"] == pytest.approx(result.val.loss)


def test_mlflow_store_holds_metrics_params_and_documents(tracked_run):
    from mlflow.tracking import MlflowClient

    tmp, cfg, result = tracked_run
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sftpipe-test")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "tracked" and {"unit", "tiny"} <= set(run.data.tags)
    assert run.data.params["train.lr"] == str(cfg.train.lr)
    assert run.data.params["train.max_steps"] == str(STEPS)

    logged = [m for m in read_metrics(RunDir(result.run_dir).metrics) if "loss" in m]
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(h.step, h.value) for h in sorted(history, key=lambda h: h.step)] == \
        [(m["step"], pytest.approx(m["loss"], rel=1e-12)) for m in logged]
    assert run.data.metrics["final_step"] == STEPS

    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    config = json.loads((artifacts / MLFLOW_ARTIFACTS["config"]).read_text())
    assert config["train"]["run_name"] == "tracked" and config["model"]["name_or_path"] == cfg.model.name_or_path
    assert json.loads((artifacts / MLFLOW_ARTIFACTS["run"]).read_text())["seed"] == cfg.train.seed
    assert json.loads((artifacts / MLFLOW_ARTIFACTS["data"]).read_text())["records_read"] > 0


def test_tensorboard_events_hold_metrics_and_config(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, cfg, result = tracked_run
    events = EventAccumulator(str(RunDir(result.run_dir).logs / "tensorboard"),
                              size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    losses = [(e.step, e.value) for e in events.Scalars("loss")]
    logged = [(m["step"], m["loss"]) for m in read_metrics(RunDir(result.run_dir).metrics) if "loss" in m]
    assert [s for s, _ in losses] == [s for s, _ in logged]
    assert [v for _, v in losses] == pytest.approx([v for _, v in logged], rel=1e-6)  # TensorBoard stores float32
    config_text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert f"lr: {cfg.train.lr}" in config_text


def test_report_to_none_writes_no_tracker_files(tmp_path, tiny_dir, chat_sources, tracked_run):
    _, prepared_cfg, _ = tracked_run
    cfg = make_config(tmp_path, tiny_dir, chat_sources, data={"output_dir": prepared_cfg.data.output_dir},
                      train={"report_to": "none", "max_steps": 1})
    result = stages.train(cfg, resume="never")
    logs = RunDir(result.run_dir).logs
    assert sorted(p.name for p in logs.iterdir()) == ["metrics.jsonl"]
    # control: the tracked run of the same data has each tracker's files
    tracked_logs = RunDir(tracked_run[2].run_dir).logs
    assert {"metrics.jsonl", "tensorboard", "wandb"} <= {p.name for p in tracked_logs.iterdir()}


def test_a_missing_tracker_library_names_the_extra(monkeypatch):
    check_tracker_libraries(["tensorboard", "wandb", "mlflow"])  # control: installed here
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("wandb", "mlflow")
                        else real(name, *a))
    with pytest.raises(SftpipeError) as err:
        check_tracker_libraries(["tensorboard", "wandb", "mlflow"])
    assert "pip install 'sftpipe[wandb]' 'sftpipe[mlflow]'" in str(err.value)
    check_tracker_libraries(["tensorboard"])


@pytest.mark.parametrize("value,expected", [("none", []), (["none"], []), ([], []), ("wandb", ["wandb"]),
                                            (["mlflow", "tensorboard"], ["mlflow", "tensorboard"]),
                                            (["wandb", "tensorboard", "wandb"], ["wandb", "tensorboard"])])
def test_report_to_accepts_none_and_single_names(value, expected):
    assert TrainConfig(report_to=value).report_to == expected


def test_report_to_rejects_an_unknown_tracker():
    with pytest.raises(ValueError, match="report_to"):
        TrainConfig(report_to=["tensorbord"])


def test_tracker_settings_are_not_part_of_the_resume_fingerprint(tracked_run):
    _, cfg, _ = tracked_run
    data = Path(cfg.data.output_dir)

    def fingerprint(**train):
        changed = cfg.model_copy(update={"train": cfg.train.model_copy(update=train)})
        return run_fingerprint(changed, data, "tok", 1)

    base = fingerprint()
    assert fingerprint(report_to=[], run_name="other", project="p", tags=["x"]) == base
    assert fingerprint(lr=cfg.train.lr * 2) != base  # control: a trajectory setting is


def test_a_tracker_that_cannot_start_is_an_error_that_says_why(tmp_path, tiny_dir, chat_sources, tracked_run,
                                                                 monkeypatch):
    _, prepared_cfg, _ = tracked_run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://nowhere")
    cfg = make_config(tmp_path, tiny_dir, chat_sources, data={"output_dir": prepared_cfg.data.output_dir},
                      train={"report_to": ["mlflow"], "max_steps": 1})
    with pytest.raises(SftpipeError) as err:
        stages.train(cfg, resume="never")
    assert "train.report_to ['mlflow']: a tracker could not start" in str(err.value)
    assert "MLFLOW_TRACKING_URI" in str(err.value)


def test_eval_of_the_run_adds_its_figures_to_the_trackers(tracked_run, monkeypatch):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tmp, cfg, result = tracked_run
    monkeypatch.chdir(tmp)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
    run = RunDir(result.run_dir)
    ids = run.manifest.trackers
    assert set(ids) == {"wandb", "wandb_project", "mlflow"} and ids["wandb_project"] == "sftpipe-test"
    eval_cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={
        "generation": cfg.eval.generation.model_copy(update={"enabled": False})})})
    evaluated = stages.evaluate(eval_cfg, str(run.path))
    loss = evaluated.metrics.loss

    history = MlflowClient().get_metric_history(ids["mlflow"], "eval/loss")
    assert [(h.step, h.value) for h in history] == [(STEPS, pytest.approx(loss))]
    resumed = [f for f in (run.logs / "wandb").glob(f"offline-run-*-{ids['wandb']}/run-*.wandb")]
    assert len(resumed) == 2, resumed  # the training's and the eval's, one W&B run id
    summary = {}
    for r in wandb_records(sorted(resumed)[-1]):
        if r.WhichOneof("record_type") == "summary":
            summary.update(record_items(r.summary.update))
    assert summary["eval/loss"] == pytest.approx(loss)
    events = EventAccumulator(str(run.logs / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("eval/loss")] == [(STEPS, pytest.approx(loss, rel=1e-6))]
