"""`train.micro_batch_size: auto`: the largest micro-batch the estimate fits in the device's memory, grad_accum
keeping tokens_per_step, the choice recorded in run_manifest.json and reused on resume (even where more memory
would choose otherwise). The CUDA probe is in tests/gpu."""

from __future__ import annotations

import math

import pytest
import torch

from sftpipe import stages
from sftpipe.config import ConfigError
from sftpipe.contracts.run_dir import RunDir
from sftpipe.data import prepare
from sftpipe.models.memory_plan import estimate_config
from sftpipe.train import auto_batch
from sftpipe.train.tracking import read_metrics
from tests.conftest import make_config, pc_records, write_jsonl

BUDGET = 24 * 2**20  # bytes: the tiny model fits a few rows of its longest examples, not all of a step's


def _config(tmp, tiny_dir, **train):
    source = write_jsonl(tmp / "pc.jsonl", pc_records(12))
    return make_config(tmp, tiny_dir, [{"path": str(source)}],
                       data={"split": {"train": 0.8, "val": 0.2, "test": 0.0}},
                       train={"micro_batch_size": "auto", "tokens_per_step": 4096, "max_steps": 4, "save_every": 2, "save_total_limit": 5,
                              "device": "cpu", **train})


def test_auto_chooses_the_largest_fitting_micro_batch_and_resume_reuses_it(tmp_path, tiny_dir, monkeypatch):
    cfg = _config(tmp_path, tiny_dir)
    prepare.run(cfg)
    monkeypatch.setattr(auto_batch, "device_memory", lambda device: BUDGET)
    result = stages.train(cfg, resume="never")

    chosen = RunDir(result.run_dir).manifest.batch
    assert chosen is not None and chosen.budget_bytes == BUDGET and not chosen.probed
    resolved = cfg.model_copy(update={"train": cfg.train.model_copy(update={"tokens_per_step": 0})})

    def estimate_of(rows):
        tc = resolved.train.model_copy(update={"micro_batch_size": rows, "grad_accum": 1})
        return estimate_config(resolved.model_copy(update={"train": tc}), gpu_memory=BUDGET, cuda=False).planned

    row_length = chosen.tokens_per_batch // chosen.micro_batch_size
    rows_per_step = math.ceil(4096 / row_length)
    assert chosen.grad_accum > 1 and chosen.micro_batch_size * chosen.grad_accum >= rows_per_step
    assert estimate_of(chosen.micro_batch_size).reserved <= BUDGET
    # the fewest micro-batches per step: one fewer would need more rows than fit
    assert estimate_of(math.ceil(rows_per_step / (chosen.grad_accum - 1))).reserved > BUDGET
    speed = next(r for r in read_metrics(result.run_dir / "logs" / "metrics.jsonl") if "speed" in r)["speed"]
    assert speed["auto_batch"]["micro_batch_size"] == chosen.micro_batch_size

    # resumed with more memory: the recorded choice is kept (the fingerprint would refuse another one)
    import shutil

    shutil.rmtree(result.run_dir / "final")
    for ckpt in (result.run_dir / "checkpoints").glob("checkpoint-4"):
        shutil.rmtree(ckpt)
    monkeypatch.setattr(auto_batch, "device_memory", lambda device: 64 * BUDGET)
    resumed = stages.train(cfg, resume="auto")
    assert resumed.resumed_from is not None and resumed.resumed_from.name == "checkpoint-2"
    assert RunDir(result.run_dir).manifest.batch == chosen


def test_auto_needs_tokens_per_step_and_one_auto_field(tmp_path, tiny_dir):
    with pytest.raises(ConfigError, match="tokens_per_step"):
        _config(tmp_path / "a", tiny_dir, tokens_per_step=0)
    with pytest.raises(ConfigError, match="both auto"):
        _config(tmp_path / "c", tiny_dir, tokens_per_batch="auto")


def test_the_cuda_probe_halves_the_rows_on_out_of_memory():
    import torch

    tried = []

    def probe(rows):
        tried.append(rows)
        if rows > 5:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    assert auto_batch.probe_rows(probe, 24) == 3 and tried == [24, 12, 6, 3]


def _probe_process(rank: int, port: int, found: dict) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        # process 1's GPU ran out of memory at 8 rows and settled on 4; both must train with 4
        found[rank] = auto_batch.fewest_over_processes(8 if rank == 0 else 4, torch.device("cpu"))
    finally:
        dist.destroy_process_group()


def test_processes_agree_on_the_fewest_probed_rows():
    import torch.multiprocessing as mp

    from tests.conftest import free_port, spawn_and_wait

    with mp.Manager() as manager:
        found = manager.dict()
        spawn_and_wait(_probe_process, (free_port(), found), 2, timeout=120)
        assert dict(found) == {0: 4, 1: 4}
    assert auto_batch.fewest_over_processes(8, torch.device("cpu")) == 8  # no process group: its own
