"""FSDP2 through the real CLI: `torchrun --nproc_per_node 2` and `accelerate launch --config_file
configs/accelerate/fsdp.yaml`, on CPU with gloo, the code path a 4-GPU run takes.

- a 2-rank sharded LoRA run (dropout on: every rank draws its own masks) writes sharded checkpoints, and final/
  loads with plain peft;
- a 2-rank run resumed from its mid-run checkpoint ends bitwise equal to the uninterrupted one (weights and
  every logged record), after falling back past a newer checkpoint whose rank-1 shard is truncated and one
  whose rank-0 shard is missing (each named); the negative control swaps the two ranks' RNG states in the
  checkpoint (re-sealed, so it looks intact) and the resumed run must then differ;
- `accelerate launch` with the shipped fsdp.yaml trains as torchrun does (bitwise), with in-training generation on
  a gathered copy of the model that leaves the training as it was;
- resuming a 2-rank checkpoint with 1 process and a 1-process one with 2 (--resume-force: resharding) trains on,
  the loss continuing where it was.
Each launch costs 20-60 s of process start-up on a shared 2-core machine: the module is `heavy`; the fast
sibling is tests/unit/test_fsdp.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sftpipe.contracts.checkpoint import COMPLETE, RNG, file_digests
from sftpipe.data import prepare
from sftpipe.train.tracking import read_metrics
from tests.conftest import free_port, make_config, pc_records, write_jsonl
from tests.run_compare import final_weights, run_differences

pytestmark = [pytest.mark.integration, pytest.mark.heavy]

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
RESUME_STEP = 2  # of 6: 12 train examples, 2 per micro-batch, 2 processes -> 3 steps per epoch


def train(config: Path, out: Path, *settings: str, processes: int = 2, resume: str = "auto", force: bool = False,
          launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """`sftpipe train` under torchrun (or `launcher`), `processes` processes; returns the finished process."""
    if launcher is None:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                    "--master_port", str(free_port())]
    argv = [*launcher, "-m", "sftpipe.cli", "train", str(config), "--preset", "fast_test", "--set",
            f"train.output_dir={out}", "--resume", resume, *(["--resume-force"] if force else [])]
    for setting in settings:
        argv += ["--set", setting]
    return subprocess.run(argv, capture_output=True, text=True, timeout=900, env=ENV, cwd=REPO)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def reference(tmp_path_factory, dropout_model):
    tmp = tmp_path_factory.mktemp("fsdp_cli")
    source = write_jsonl(tmp / "pc15.jsonl", pc_records(15))
    cfg = make_config(
        tmp, dropout_model, [{"path": str(source)}],
        data={"split": {"train": 0.8, "val": 0.2, "test": 0.0}},
        lora={"dropout": 0.1},
        train={"method": "lora", "sharding": "fsdp", "packing": False, "tokens_per_batch": 0, "micro_batch_size": 2,
               "grad_accum": 1, "max_steps": 0, "epochs": 2, "lr": 1e-2, "warmup_ratio": 0.2, "scheduler": "cosine",
               "save_every": 1, "save_total_limit": 100, "eval_every": 2},
    )
    prepare.run(cfg)
    proc = ok(train(tmp / "config.json", tmp / "reference", resume="never"))
    assert proc.stdout.count("trained 6 steps") == 1, proc.stdout  # one summary, from rank 0
    return tmp


def test_torchrun_fsdp_run_writes_sharded_checkpoints_and_a_plain_final(reference, dropout_model):
    import peft
    from transformers import AutoModelForCausalLM

    ref = reference / "reference"
    assert json.loads((ref / "run_manifest.json").read_text())["world_size"] == 2
    ckpt = ref / "checkpoints" / "checkpoint-6"
    assert sorted(p.name for p in (ckpt / "sharded").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    marker = json.loads((ckpt / COMPLETE).read_text())["files"]
    assert {"sharded/__0_0.distcp", "sharded/__1_0.distcp", "sharded/.metadata"} <= set(marker)
    fingerprint = json.loads((ckpt / "fingerprint.json").read_text())
    assert fingerprint["world_size"] == 2 and fingerprint["config"]["train.sharding"] == "fsdp"
    model = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(dropout_model), ref / "final")
    trained = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert trained and all(p.abs().sum() > 0 for p in trained)  # lora_B starts at zero: it was trained


def resume_copy(reference: Path, name: str, steps: tuple[int, ...]) -> Path:
    """A run dir as a run killed after its last checkpoint in `steps` leaves it (its log runs past them)."""
    ref = reference / "reference"
    run_dir = reference / name
    for step in steps:
        shutil.copytree(ref / "checkpoints" / f"checkpoint-{step}", run_dir / "checkpoints" / f"checkpoint-{step}")
    (run_dir / "logs").mkdir(parents=True)
    shutil.copy(ref / "logs" / "metrics.jsonl", run_dir / "logs" / "metrics.jsonl")
    return run_dir


def test_resume_is_bitwise_after_falling_back_past_damaged_shards(reference):
    run_dir = resume_copy(reference, "resumed", (RESUME_STEP, 3, 4))
    truncated = run_dir / "checkpoints" / "checkpoint-3" / "sharded" / "__1_0.distcp"
    truncated.write_bytes(truncated.read_bytes()[:-100])
    missing = run_dir / "checkpoints" / "checkpoint-4" / "sharded" / "__0_0.distcp"
    missing.unlink()
    proc = ok(train(reference / "config.json", run_dir))
    assert f"{missing}: missing" in proc.stderr, proc.stderr[-3000:]
    assert f"{truncated}: " in proc.stderr and "truncated" in proc.stderr, proc.stderr[-3000:]
    diffs = run_differences(reference / "reference", run_dir)
    assert not diffs, "\n".join(diffs[:10])


def test_swapped_rank_rng_states_are_caught(reference):
    """Negative control: each rank must get its own RNG state back, and the comparison above sees it if not."""
    run_dir = resume_copy(reference, "swapped", (RESUME_STEP,))
    ckpt = run_dir / "checkpoints" / f"checkpoint-{RESUME_STEP}"
    rng = json.loads((ckpt / RNG).read_text())
    rng["processes"].reverse()
    (ckpt / RNG).write_text(json.dumps(rng))
    marker = json.loads((ckpt / COMPLETE).read_text())
    (ckpt / COMPLETE).write_text(json.dumps({**marker, "files": file_digests(ckpt)}))  # re-sealed: looks intact
    ok(train(reference / "config.json", run_dir))
    assert any(d.startswith("weights:") for d in run_differences(reference / "reference", run_dir))


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "logs" / "metrics.jsonl") if "loss" in r}


# Resharding changes which examples each process trains on after the resume, so the loss cannot match the
# uninterrupted run's exactly; the first step after the resume must stay within this of it (relative), while a
# run started from scratch is further off (the control).
RESHARD_TOLERANCE = 0.02


@pytest.mark.parametrize(("saved", "resumed"), [(2, 1), (1, 2)])
def test_resume_with_another_process_count_trains_on(reference, saved, resumed):
    base = reference / f"reshard-{saved}to{resumed}"
    full = ("train.method=full", "train.lr=2e-2", "train.max_steps=6", "train.save_every=3")
    ok(train(reference / "config.json", base / "saved", *full, processes=saved, resume="never"))
    run_dir = base / "resumed"
    shutil.copytree(base / "saved" / "checkpoints" / "checkpoint-3", run_dir / "checkpoints" / "checkpoint-3")
    refused = train(reference / "config.json", run_dir, *full, processes=resumed)
    assert refused.returncode != 0 and f"processes: {saved} in the checkpoint, {resumed} now" in refused.stderr
    proc = ok(train(reference / "config.json", run_dir, *full, processes=resumed, force=True))
    assert "--resume-force" in proc.stderr
    saved_loss, resumed_loss = losses(base / "saved"), losses(run_dir)
    assert sorted(resumed_loss) == [4, 5, 6] and (run_dir / "final" / "model.safetensors").is_file()
    assert abs(resumed_loss[4] - saved_loss[4]) <= RESHARD_TOLERANCE * saved_loss[4], (resumed_loss, saved_loss)
    assert abs(saved_loss[1] - saved_loss[4]) > RESHARD_TOLERANCE * saved_loss[4], saved_loss  # training moved it


def test_accelerate_launch_with_the_shipped_fsdp_config(reference):
    """`accelerate launch --config_file configs/accelerate/fsdp.yaml` means train.sharding: fsdp, on CPU; with
    in-training generation on a gathered copy after each step, which leaves the training as it was."""
    out = reference / "accelerate"
    launcher = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
                str(REPO / "configs" / "accelerate" / "fsdp.yaml"), "--main_process_port", str(free_port())]
    proc = ok(train(reference / "config.json", out, "train.sharding=none", "train.max_steps=2",
                    "train.epochs=1", "eval.during_training.every=1", "eval.during_training.max_prompts=2",
                    "eval.during_training.max_new_tokens=8", launcher=launcher, resume="never"))
    assert proc.stdout.count("trained 2 steps") == 1, proc.stdout
    assert json.loads((out / "run_manifest.json").read_text())["world_size"] == 2
    assert "sharding: fsdp" in (out / "config.yaml").read_text()
    assert (out / "checkpoints" / "checkpoint-2" / "sharded" / "__1_0.distcp").is_file()
    generated = [r["step"] for r in read_metrics(out / "logs" / "metrics.jsonl") if "gen_length_mean" in r]
    assert generated == [1, 2], generated
    # the same run under torchrun with train.sharding: fsdp (and no generation) makes the same weights
    twin = reference / "torchrun-twin"
    ok(train(reference / "config.json", twin, "train.max_steps=2", "train.epochs=1", resume="never"))
    wa, wb = final_weights(out), final_weights(twin)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
