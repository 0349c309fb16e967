"""Compare two run dirs bitwise: final weights and every logged metric (less wall-clock fields)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from sftpipe.train.tracking import read_metrics

CLOCK_FIELDS = ("time", "tokens_per_s", "trained_tokens_per_s")


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
