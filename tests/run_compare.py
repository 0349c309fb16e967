"""Compare two run dirs bitwise: final weights and every logged metric (less wall-clock fields)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from sftpipe.train.tracking import read_metrics

# what depends on the machine and the moment, not on the trajectory
CLOCK_FIELDS = ("time", "tokens_per_s", "trained_tokens_per_s", "peak_memory_mb")


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    files = sorted((run_dir / "final").glob("*.safetensors"))
    assert files, f"{run_dir}/final has no weights"
    return {k: v for f in files for k, v in load_file(f).items()}


def logged(run_dir: Path) -> list[dict]:
    """metrics.jsonl records without the fields that measure wall-clock time."""
    return [{k: v for k, v in r.items() if k not in CLOCK_FIELDS}
            for r in read_metrics(run_dir / "logs" / "metrics.jsonl")]


def run_differences(a: Path, b: Path) -> list[str]:
    """Every way run b differs from run a: weight tensors not bitwise equal, metrics records not equal."""
    wa, wb = final_weights(a), final_weights(b)
    diffs = [f"weights: keys {sorted(set(wa) ^ set(wb))[:3]} in only one run"] if set(wa) != set(wb) else []
    diffs += [f"weights: {k} differs (max |diff| {(wa[k] - wb[k]).abs().max().item():.3e})"
              for k in sorted(set(wa) & set(wb)) if not torch.equal(wa[k], wb[k])]
    la, lb = logged(a), logged(b)
    if len(la) != len(lb):
        diffs.append(f"metrics: {len(la)} records vs {len(lb)}")
    diffs += [f"metrics: {ra} != {rb}" for ra, rb in zip(la, lb) if ra != rb]
    return diffs


def resume_after_simulated_crash(tmp: Path, tiny_dir: Path, sources: list[dict], train: dict):
    """Run a (4 steps, checkpoints at 2 and 4) and b, whose checkpoint-4 lost its COMPLETE marker and whose
    final/ is gone, as a crash after step 2 leaves it; resume b. b must end bitwise like a.

    Returns:
        (a's TrainResult, b's resumed TrainResult, a's metrics records).
    """
    from sftpipe import stages
    from sftpipe.data import prepare
    from tests.conftest import make_config

    full = make_config(tmp / "a", tiny_dir, sources, train=train, lora={"dropout": 0.1})
    prepare.run(full)
    result_a = stages.train(full, resume="never")
    crashed = make_config(tmp / "b", tiny_dir, sources, train=train, lora={"dropout": 0.1})
    shutil.copytree(tmp / "a" / "data", tmp / "b" / "data")
    stages.train(crashed, resume="never")
    (tmp / "b" / "run" / "checkpoints" / "checkpoint-4" / "COMPLETE").unlink()
    shutil.rmtree(tmp / "b" / "run" / "final")
    result = stages.train(crashed, resume="auto")
    assert result.resumed_from.name == "checkpoint-2"
    a = load_file(tmp / "a" / "run" / "final" / "adapter_model.safetensors")
    b = load_file(tmp / "b" / "run" / "final" / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    metrics_a = read_metrics(tmp / "a" / "run" / "logs" / "metrics.jsonl")
    losses_a = [m["loss"] for m in metrics_a if "loss" in m]
    losses_b = [m["loss"] for m in read_metrics(tmp / "b" / "run" / "logs" / "metrics.jsonl") if "loss" in m]
    assert losses_b[-2:] == losses_a[-2:]
    return result_a, result, metrics_a
