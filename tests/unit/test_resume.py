"""Exact resume: a run resumed from any checkpoint ends bitwise equal to the uninterrupted run.

CPU, fp32, dropout on (LoRA dropout and attention dropout in the base model), shuffled order, gradient
accumulation > 1, resume mid-epoch and at an epoch boundary, full and LoRA. The resumed run starts from a
copy of the reference run's checkpoint and of its whole metrics.jsonl (as a killed run leaves it, with lines
past the checkpoint), and must reproduce the final weights and every logged record. Sabotaged resumes
(RNG not restored, data position off by one, optimizer state dropped) are the negative controls: the same
comparison must then find differences.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace

import pytest

from sftpipe import stages
from sftpipe.contracts.checkpoint import complete_checkpoints, load_trainer_state
from sftpipe.data import prepare
from sftpipe.train import checkpoint
from tests.conftest import make_config, pc_records, write_jsonl
from tests.run_compare import run_differences

MICRO_PER_EPOCH = 6  # 12 train examples / micro-batch 2


@dataclass(frozen=True)
class Setting:
    method: str
    grad_accum: int


SETTINGS = {
    # 18 micro-batches in 9 steps: step 3 ends exactly at the first epoch boundary
    "lora": Setting("lora", grad_accum=2),
    # 18 micro-batches in 5 steps (the last one short): step 2 straddles an epoch boundary, step 3 ends on one
    "full": Setting("full", grad_accum=4),
}

# (setting, checkpoint step to resume from, position in the epoch, sabotage, should the runs match?)
CASES = [
    ("lora", 3, "epoch boundary", None, True),
    ("lora", 4, "mid-epoch", None, True),
    ("lora", 8, "mid-epoch", None, True),
    ("full", 2, "mid-epoch", None, True),
    ("full", 3, "epoch boundary", None, True),
    ("lora", 4, "mid-epoch", "skip_rng", False),
    ("lora", 4, "mid-epoch", "shift_data_position", False),
    ("full", 2, "mid-epoch", "skip_rng", False),
    ("full", 3, "epoch boundary", "reset_optimizer", False),
]


def _config(tmp, model, data_dir, setting: Setting, run_name: str):
    source = write_jsonl(tmp / "pc15.jsonl", pc_records(15))
    return make_config(
        tmp / run_name, model, [{"path": str(source)}],
        data={"output_dir": str(data_dir), "split": {"train": 0.8, "val": 0.2, "test": 0.0}},
        lora={"dropout": 0.1},
        train={"method": setting.method, "grad_accum": setting.grad_accum, "micro_batch_size": 2, "max_steps": 0,
               "epochs": 3, "lr": 1e-2, "warmup_ratio": 0.2, "scheduler": "cosine", "save_every": 1,
               "save_total_limit": 100, "eval_every": 3, "output_dir": str(tmp / run_name / "run")},
    )


@pytest.fixture(scope="module")
def references(tmp_path_factory, dropout_model):
    """One uninterrupted run per setting, checkpointed after every step."""
    tmp = tmp_path_factory.mktemp("resume")
    data_dir = tmp / "data"
    runs = {}
    for name, setting in SETTINGS.items():
        cfg = _config(tmp, dropout_model, data_dir, setting, f"{name}-reference")
        if not data_dir.exists():
            prepare.run(cfg)
        stages.train(cfg, resume="never")
        runs[name] = cfg
    return tmp, data_dir, runs


def _sabotage(monkeypatch, kind):
    """Break one part of resuming, the way a bug would."""
    if kind == "skip_rng":
        monkeypatch.setattr(checkpoint, "restore_rng", lambda state: None)
    elif kind == "shift_data_position":
        real = checkpoint.restore_checkpoint

        def shifted(*args, **kwargs):
            state = real(*args, **kwargs)
            return replace(state, micro_batch=state.micro_batch + 1)

        monkeypatch.setattr("sftpipe.train.resume.restore_checkpoint", shifted)
    elif kind == "reset_optimizer":
        monkeypatch.setattr(checkpoint, "read_optimizer", lambda ckpt, reference: reference.state_dict())


@pytest.mark.parametrize(("setting", "step", "where", "sabotage", "should_match"), CASES,
                         ids=[f"{c[0]}-step{c[1]}-{c[3] or 'exact'}" for c in CASES])
def test_resumed_run_is_bitwise_identical(references, dropout_model, monkeypatch, setting, step, where, sabotage,
                                          should_match):
    tmp, data_dir, runs = references
    ref_dir = tmp / f"{setting}-reference" / "run"
    ckpt = ref_dir / "checkpoints" / f"checkpoint-{step}"
    state = load_trainer_state(ckpt)
    at_boundary = state.micro_batch % MICRO_PER_EPOCH == 0
    assert at_boundary == (where == "epoch boundary"), f"checkpoint-{step} is at micro-batch {state.micro_batch}"

    name = f"{setting}-{step}-{sabotage}"
    cfg = _config(tmp, dropout_model, data_dir, SETTINGS[setting], name)
    run_dir = tmp / name / "run"
    shutil.copytree(ckpt, run_dir / "checkpoints" / ckpt.name)
    (run_dir / "logs").mkdir(parents=True)
    shutil.copy(ref_dir / "logs" / "metrics.jsonl", run_dir / "logs" / "metrics.jsonl")  # has lines past `step`
    _sabotage(monkeypatch, sabotage)

    result = stages.train(cfg, resume="auto")

    assert result.resumed_from is not None and result.resumed_from.name == ckpt.name
    assert result.steps == load_trainer_state(complete_checkpoints(ref_dir)[-1]).step
    diffs = run_differences(ref_dir, run_dir)
    if should_match:
        assert not diffs, "\n".join(diffs[:10])
    else:
        assert any(d.startswith("weights:") for d in diffs), f"sabotage {sabotage} went unnoticed"


def test_a_setting_added_after_the_checkpoint_matches_only_at_its_default():
    """A checkpoint written before a setting existed ran with that setting's default: resuming at the default
    is the same run; resuming with another value is not."""
    from sftpipe.train.resume import fingerprint_differences, setting_defaults

    defaults = setting_defaults()
    assert defaults["train.warmup_steps"] is None
    common = {"data_sha256": "d", "tokenizer_sha256": "t", "model_sha256": "m", "world_size": 1}
    current = {"config": {"train.lr": 1e-3, "train.warmup_steps": None}, **common}
    old = {"config": {"train.lr": 1e-3}, **common}  # written before train.warmup_steps existed
    assert fingerprint_differences(old, current) == []
    changed = {**current, "config": {"train.lr": 1e-3, "train.warmup_steps": 5}}
    assert fingerprint_differences(old, changed) == ["train.warmup_steps: None in the checkpoint, 5 now"]
    unknown = {**current, "config": {**current["config"], "train.not_a_field": 1}}
    assert fingerprint_differences(old, unknown) == ["train.not_a_field: '<not set>' in the checkpoint, 1 now"]
