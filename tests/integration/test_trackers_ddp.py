"""Under a 2-process DDP launch (gloo) only the main process logs: one W&B run, one MLflow run, one TensorBoard
event file, with each step logged once."""


import pytest

from sftpipe.contracts.run_dir import RunDir
from sftpipe.data import prepare
from sftpipe.train.tracking import read_metrics
from tests.conftest import free_port, make_config, spawn_and_wait, train_process
from tests.unit.test_trackers import record_items, wandb_records

pytestmark = [pytest.mark.integration, pytest.mark.heavy]
WORLD = 2


def test_only_the_main_process_logs_to_the_trackers(tmp_path, tiny_dir, chat_sources, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = make_config(tmp_path, tiny_dir, chat_sources,
                      train={"report_to": ["tensorboard", "wandb", "mlflow"], "max_steps": 3, "project": "ddp"})
    prepare.run(cfg)
    spawn_and_wait(train_process, (free_port(), WORLD, str(tmp_path / "config.json")), WORLD)

    run = RunDir(cfg.train.output_dir)
    steps = [m["step"] for m in read_metrics(run.metrics) if "loss" in m]
    assert steps == [1, 2, 3] and run.report.is_file()
    wandb_runs = list((run.logs / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(wandb_runs) == 1, wandb_runs
    history = [r for r in wandb_records(wandb_runs[0]) if r.WhichOneof("record_type") == "history"]
    assert sum("loss" in record_items(r.history.item) for r in history) == 3
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert len(runs) == 1 and len(client.get_metric_history(runs[0].info.run_id, "loss")) == 3
    assert len(list((run.logs / "tensorboard").glob("events.out.tfevents.*"))) == 1
