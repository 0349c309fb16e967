"""A `train.data` mix trained by two processes (gloo, DDP through accelerate): the per-dir train tokens, counted
from the plan of every process, add up to the tokens the processes really trained on (reduced over them)."""

import json
from pathlib import Path

import pytest

from sftpipe.contracts.run_dir import RunDir
from sftpipe.data import prepare
from tests.conftest import free_port, make_config, pc_records, spawn_and_wait, train_process, write_jsonl

WORLD = 2


@pytest.mark.heavy  # two spawned processes: about a minute on 2 busy cores
def test_two_processes_count_every_dirs_tokens_once(tmp_path, tiny_dir):
    records = pc_records(30)
    dirs = []
    for name, part, template in (("a", records[:15], "chatml"), ("b", records[15:], "instruct")):
        source = write_jsonl(tmp_path / name / f"{name}.jsonl", part)
        cfg = make_config(tmp_path / name, tiny_dir, [{"path": str(source)}],
                          data={"template": template, "split": {"train": 0.8, "val": 0.2, "test": 0.0}})
        prepare.run(cfg)
        dirs.append(cfg.data.output_dir)
    cfg = make_config(tmp_path, tiny_dir, [], train={
        "data": [{"dir": dirs[0], "weight": 3, "name": "a"}, {"dir": dirs[1], "weight": 1, "name": "b"}],
        "mix_unit": "tokens", "packing": True, "pack_length": 256, "micro_batch_size": 1, "grad_accum": 1,
        "max_steps": 5, "eval_every": 2})
    spawn_and_wait(train_process, (free_port(), WORLD, str(tmp_path / "config.json")), WORLD)
    records = [json.loads(x) for x in RunDir(Path(cfg.train.output_dir)).metrics.read_text().splitlines()]
    steps = {r["step"]: r for r in records if "loss" in r}
    counted = {r["step"]: r for r in records if "train_tokens/a" in r}
    assert sorted(counted) == [2, 4, 5]
    for step, r in counted.items():
        assert r["train_tokens/a"] > r["train_tokens/b"] > 0  # weight 3 : 1 in tokens
        assert r["train_tokens/a"] + r["train_tokens/b"] == steps[step]["tokens"]
    validations = [r for r in records if "val_loss" in r]
    assert all("val_loss/a" in r and "val_loss/b" in r for r in validations) and len(validations) == 4
