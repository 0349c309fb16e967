"""Atomic checkpoints: write to a temporary dir, fsync, rename, then mark complete.

A checkpoint dir without its COMPLETE marker is never resumed from, so a crash mid-save costs at most
the checkpoint being written. Weights are safetensors; optimizer and scheduler state are loaded with
`torch.load(weights_only=True)`, which cannot run code; RNG and trainer state are JSON.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sftpipe.errors import SftpipeError

COMPLETE = "COMPLETE"
STATE = "trainer_state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TrainerState:
    """Everything besides tensors that a resumed run needs to continue exactly."""

    step: int = 0  # optimizer steps done
    micro_batch: int = 0  # global micro-batch index of the next micro-batch: the data position
    tokens_seen: int = 0
    trained_tokens_seen: int = 0
    best_val_loss: float | None = None
    best_step: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def save_checkpoint(
    run_dir: Path,
    state: TrainerState,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    save_limit: int,
) -> Path:
    """Write checkpoint-<step> atomically and apply retention. Returns the checkpoint path."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"checkpoint-{state.step}"
    tmp = root / f".tmp-checkpoint-{state.step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model.save_pretrained(tmp, safe_serialization=True)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    (tmp / "rng.json").write_text(json.dumps(capture_rng()), encoding="utf-8")
    (tmp / STATE).write_text(json.dumps(asdict(state), indent=1), encoding="utf-8")
    _fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    _fsync_dir(root)
    marker = final / COMPLETE
    marker.write_text("ok\n", encoding="utf-8")
    _fsync_file(marker)
    _fsync_dir(final)
    apply_retention(root, save_limit, state.best_step)
    return final


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / COMPLETE).is_file()]
    return [p for _, p in sorted(found)]


def latest_complete(run_dir: Path) -> Path | None:
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


def apply_retention(root: Path, limit: int, best_step: int | None) -> list[Path]:
    """Delete old complete checkpoints beyond `limit`; the newest and the best are always kept."""
    done = complete_checkpoints(root.parent)
    keep = set(done[-limit:])
    keep.add(done[-1])
    if best_step is not None:
        keep.update(p for p in done if p.name == f"checkpoint-{best_step}")
    removed = [p for p in done if p not in keep]
    for path in removed:
        shutil.rmtree(path)
    return removed


def load_trainer_state(ckpt: Path) -> TrainerState:
    return TrainerState(**json.loads((ckpt / STATE).read_text(encoding="utf-8")))


def load_optimizer_and_scheduler(ckpt: Path, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    for name, target in (("optimizer.pt", optimizer), ("scheduler.pt", scheduler)):
        try:
            target.load_state_dict(torch.load(ckpt / name, weights_only=True, map_location="cpu"))
        except Exception as exc:  # corrupt files raise many types; all mean "unusable checkpoint"
            raise SftpipeError(f"{ckpt / name}: cannot load ({type(exc).__name__}: {exc})") from None


def capture_rng() -> dict[str, Any]:
    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state().tolist(),
        "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }


def restore_rng(ckpt: Path) -> None:
    state = json.loads((ckpt / "rng.json").read_text(encoding="utf-8"))
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    np.random.set_state((state["numpy"][0], np.array(state["numpy"][1], dtype=np.uint32), *state["numpy"][2:]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    _fsync_file(path)


def _fsync_tree(path: Path) -> None:
    for sub in path.rglob("*"):
        if sub.is_file():
            _fsync_file(sub)
    _fsync_dir(path)


def load_weights(ckpt: Path, model: torch.nn.Module) -> None:
    """Restore adapter or full weights saved by `save_checkpoint` into `model` (safetensors only)."""
    import peft
    from safetensors.torch import load_file

    files = sorted(ckpt.glob("*.safetensors"))
    if not files:
        raise SftpipeError(f"{ckpt}: no .safetensors weights in the checkpoint")
    try:
        tensors = {k: v for f in files for k, v in load_file(f).items()}
    except Exception as exc:  # safetensors raises SafetensorError/OSError on truncated files
        raise SftpipeError(f"{files[0].parent}: weights file is corrupt or truncated ({exc})") from None
    if isinstance(model, peft.PeftModel):
        result = peft.set_peft_model_state_dict(model, tensors)
        unexpected = result.unexpected_keys
        missing = [k for k in result.missing_keys if "lora_" in k]
    else:
        result = model.load_state_dict(tensors, strict=False)
        unexpected = result.unexpected_keys
        tied = set(getattr(model, "_tied_weights_keys", None) or [])
        missing = [k for k in result.missing_keys if k not in tied]
    if missing or unexpected:
        raise SftpipeError(f"{ckpt}: weights do not match the model (missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}); was it saved from a different model or method?")
