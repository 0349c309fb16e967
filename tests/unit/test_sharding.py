"""How a run is told to shard: train.sharding, or an FSDP `accelerate launch` that means the same."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sftpipe.config import Config, load_config
from sftpipe.errors import SftpipeError
from sftpipe.train.resume import fingerprint_differences, run_fingerprint
from sftpipe.train.sharding import ACCELERATE_FSDP, sharding_from_launch

REPO = Path(__file__).resolve().parents[2]


def test_an_fsdp_launch_means_train_sharding_fsdp_and_accelerate_is_switched_to_plain_data_parallel():
    environ = {ACCELERATE_FSDP: "true", "FSDP_ACTIVATION_CHECKPOINTING": "true", "FSDP_OFFLOAD_PARAMS": "false",
               "FSDP_RESHARD_AFTER_FORWARD": "false"}
    cfg = sharding_from_launch(Config(), environ)
    assert cfg.train.sharding == "fsdp"
    assert cfg.model.gradient_checkpointing is True
    assert cfg.train.fsdp.cpu_offload is False and cfg.train.fsdp.reshard_after_forward is False
    assert environ[ACCELERATE_FSDP] == "false"  # Accelerator(...) must not build its own FSDP plugin
    # control: without the launch variable nothing changes, whatever else is set
    untouched = {"FSDP_ACTIVATION_CHECKPOINTING": "true"}
    assert sharding_from_launch(Config(), untouched) == Config()
    assert sharding_from_launch(Config(), {ACCELERATE_FSDP: "false"}) == Config()


def test_the_shipped_accelerate_configs():
    """The three names other docs refer to; FSDP ones say FSDP (version 2), the 4xA40 one bf16 with checkpointing."""
    configs = {p.name: yaml.safe_load(p.read_text()) for p in sorted((REPO / "configs" / "accelerate").glob("*.yaml"))}
    assert sorted(configs) == ["ddp.yaml", "fsdp.yaml", "fsdp_4xa40.yaml"]
    assert configs["ddp.yaml"]["distributed_type"] == "MULTI_GPU"
    for name in ("fsdp.yaml", "fsdp_4xa40.yaml"):
        assert configs[name]["distributed_type"] == "FSDP" and configs[name]["fsdp_config"]["fsdp_version"] == 2
    a40 = configs["fsdp_4xa40.yaml"]
    assert a40["num_processes"] == 4 and a40["mixed_precision"] == "bf16"
    assert a40["fsdp_config"]["fsdp_activation_checkpointing"] is True


def test_sharding_is_part_of_the_resume_fingerprint(tmp_path, monkeypatch):
    from sftpipe.train import resume

    monkeypatch.setattr(resume, "data_fingerprint", lambda path: "d")
    monkeypatch.setattr(resume, "model_fingerprint", lambda name, revision=None: "m")
    plain = run_fingerprint(Config(), tmp_path, "t", 2)
    sharded_cfg = load_config(overrides=["train.sharding=fsdp"])
    sharded = run_fingerprint(sharded_cfg, tmp_path, "t", 2)
    assert fingerprint_differences(plain, sharded) == ["train.sharding: 'none' in the checkpoint, 'fsdp' now"]
    assert fingerprint_differences(sharded, run_fingerprint(sharded_cfg, tmp_path, "t", 4)) == [
        "processes: 2 in the checkpoint, 4 now"]
    assert fingerprint_differences(sharded, sharded) == []


def test_validate_shows_the_sharding_plan_and_the_state_per_process():
    from sftpipe.preflight.sharding import sharding_checks

    assert sharding_checks(Config(), 1000, 1000, 4) == []  # not sharded: nothing to show
    (check,) = sharding_checks(load_config(overrides=["train.sharding=fsdp", "train.method=full"]), 2**20, 2**20, 2)
    assert check.status == "ok" and "one unit per decoder layer" in check.detail
    # 1 Mi params in bf16: weights 2 MiB + gradients 2 MiB + AdamW 4 MiB = 8 MiB, over 2 / 4 / 8 processes
    assert "2 processes 4.0 MiB, 4 processes 2.0 MiB, 8 processes 1.0 MiB" in check.detail, check.detail
    _, note = sharding_checks(load_config(overrides=["train.sharding=fsdp", "eval.during_training.every=1"]),
                              10, 10, 4)
    assert note.status == "warn" and "whole copy of the model" in note.detail


def test_an_fsdp_launch_keeps_every_other_setting():
    base = load_config(overrides=["train.lr=0.5", "data.max_length=77", "lora.r=3"])
    out = sharding_from_launch(base, {ACCELERATE_FSDP: "true"})
    expected = base.model_copy(update={"train": base.train.model_copy(update={"sharding": "fsdp"})})
    assert out.model_dump() == expected.model_dump()


def test_a_sharded_checkpoint_is_not_restored_into_an_unsharded_run(tmp_path):
    from sftpipe.contracts.checkpoint import SHARDED
    from sftpipe.train.checkpoint import restore_checkpoint

    (tmp_path / SHARDED).mkdir()
    with pytest.raises(SftpipeError, match="written by a sharded run.*train.sharding: fsdp"):
        restore_checkpoint(tmp_path, None, None, None)
