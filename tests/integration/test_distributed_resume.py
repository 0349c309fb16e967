"""Exact resume with two processes (gloo, DDP through accelerate), as a multi-GPU run uses it.

A 2-process LoRA run with dropout (LoRA and attention) checkpoints after every step; a second 2-process run
resumes from its mid-epoch checkpoint and must end bitwise equal to it, weights and every logged record.
Each process draws its own dropout masks, so the checkpoint keeps one RNG state per process and each process
must get its own back: the negative control swaps the two states in the checkpoint (re-sealed, so it looks
intact) and the resumed run must then differ.
"""

import json
import os
import shutil
from pathlib import Path

import pytest

from sftpipe.config import load_config
from sftpipe.contracts.checkpoint import COMPLETE, RNG, file_digests, load_trainer_state
from sftpipe.data import prepare
from sftpipe.train import loop
from tests.conftest import free_port, make_config, pc_records, spawn_and_wait, train_process, write_jsonl
from tests.run_compare import run_differences

WORLD = 2
RESUME_STEP = 2  # of 6: 12 train examples, 2 per micro-batch, 2 processes -> 3 steps per epoch


def launch(config_path: Path, output_dir: Path, resume: str) -> None:
    spawn_and_wait(train_process, (free_port(), WORLD, str(config_path), str(output_dir), resume), WORLD)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, dropout_model):
    tmp = tmp_path_factory.mktemp("ddp_resume")
    source = write_jsonl(tmp / "pc15.jsonl", pc_records(15))
    cfg = make_config(
        tmp, dropout_model, [{"path": str(source)}],
        data={"split": {"train": 0.8, "val": 0.2, "test": 0.0}},
        lora={"dropout": 0.1},
        train={"method": "lora", "packing": False, "tokens_per_batch": 0, "micro_batch_size": 2, "grad_accum": 1,
               "max_steps": 0, "epochs": 2, "lr": 1e-2, "warmup_ratio": 0.2, "scheduler": "cosine",
               "save_every": 1, "save_total_limit": 100, "eval_every": 2},
    )
    prepare.run(cfg)
    launch(tmp / "config.json", tmp / "reference", "never")
    return tmp


def resume_copy(tmp: Path, name: str) -> tuple[Path, Path]:
    """A run dir as a run killed after checkpoint RESUME_STEP leaves it (its log runs past the checkpoint)."""
    ref = tmp / "reference"
    run_dir = tmp / name
    ckpt = run_dir / "checkpoints" / f"checkpoint-{RESUME_STEP}"
    shutil.copytree(ref / "checkpoints" / ckpt.name, ckpt)
    (run_dir / "logs").mkdir(parents=True)
    shutil.copy(ref / "logs" / "metrics.jsonl", run_dir / "logs" / "metrics.jsonl")
    return run_dir, ckpt


def test_two_process_run_resumes_bitwise(reference):
    ref = reference / "reference"
    assert load_trainer_state(ref / "checkpoints" / "checkpoint-6").step == 6
    state = load_trainer_state(ref / "checkpoints" / f"checkpoint-{RESUME_STEP}")
    # micro-batch indices count each process's micro-batches: 3 per epoch here, so step 2 is mid-epoch
    assert state.micro_batch == RESUME_STEP and state.micro_batch % 3 != 0
    run_dir, _ = resume_copy(reference, "resumed")
    launch(reference / "config.json", run_dir, "auto")
    diffs = run_differences(ref, run_dir)
    assert not diffs, "\n".join(diffs[:10])


def test_two_process_resume_with_the_ranks_rng_states_swapped_differs(reference):
    run_dir, ckpt = resume_copy(reference, "swapped")
    rng = json.loads((ckpt / RNG).read_text())
    assert len(rng["processes"]) == WORLD
    assert rng["processes"][0]["torch"] != rng["processes"][1]["torch"], "ranks drew the same numbers: no control"
    (ckpt / RNG).write_text(json.dumps({"processes": rng["processes"][::-1]}))
    marker = json.loads((ckpt / COMPLETE).read_text())
    (ckpt / COMPLETE).write_text(json.dumps({**marker, "files": file_digests(ckpt)}))  # re-sealed: looks intact
    launch(reference / "config.json", run_dir, "auto")
    diffs = run_differences(reference / "reference", run_dir)
    assert any(d.startswith("weights:") for d in diffs), "swapped per-process RNG states went unnoticed"


def test_cli_under_torchrun_trains_on_two_processes_and_prints_one_summary(reference):
    """The launch a multi-GPU user makes (torchrun / accelerate launch), here on CPU with gloo."""
    import subprocess
    import sys

    out = reference / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD), "--master_port",
         str(free_port()), "-m", "sftpipe.cli", "train", str(reference / "config.json"), "--preset", "fast_test",
         "--set", f"train.output_dir={out}", "--set", "train.max_steps=2", "--set", "train.epochs=1"],
        capture_output=True, text=True, timeout=600, env=env, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained 2 steps") == 1, proc.stdout
    assert json.loads((out / "run_manifest.json").read_text())["world_size"] == WORLD


@pytest.mark.parametrize("kind", ["FSDP", "DEEPSPEED", "MEGATRON_LM"])
def test_accelerate_sharding_plugins_are_refused_with_what_to_do(kind):
    """sftpipe shards itself: an Accelerator that built its own sharding plugin is refused, pointing to FSDP."""
    from sftpipe.errors import SftpipeError

    with pytest.raises(SftpipeError, match=f"{kind}.*configs/accelerate/fsdp.yaml"):
        loop.check_distribution(kind)


@pytest.mark.parametrize("kind", ["NO", "MULTI_CPU", "MULTI_GPU"])
def test_unsharded_launches_are_accepted(kind):
    loop.check_distribution(kind)  # raises if refused


@pytest.mark.parametrize(("variable", "name"), [("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"),
                                                ("ACCELERATE_USE_MEGATRON_LM", "Megatron-LM")])
def test_deepspeed_and_megatron_launches_are_refused_before_accelerate_fails(tmp_path, tiny_dir, chat_sources,
                                                                             monkeypatch, capsys, variable, name):
    """What `accelerate launch --use_deepspeed` (or --use_megatron_lm) sets: on this machine building the
    Accelerator itself raises (neither is installed), so the refusal must come from the environment, before it
    is built, and point to FSDP."""
    from sftpipe.cli import main
    from sftpipe.train.sharding import sharding_from_launch

    make_config(tmp_path, tiny_dir, chat_sources)
    monkeypatch.setenv(variable, "true")
    assert main(["train", str(tmp_path / "config.json"), "--preset", "fast_test"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: accelerate is set up for {name} ({variable}=true in the environment)"), err
    assert "configs/accelerate/fsdp.yaml" in err and not (tmp_path / "run").exists()
    assert "Traceback" not in err
    monkeypatch.setenv(variable, "false")  # control: accelerate's own "not set" value is not such a launch
    sharding_from_launch(load_config(tmp_path / "config.json", preset="fast_test"), dict(os.environ))
