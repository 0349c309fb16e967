"""Atomic checkpoints: write to a temporary dir, fsync, rename, then mark complete with checksums.

A checkpoint dir without its COMPLETE marker is never resumed from, so a crash mid-save costs at most the
checkpoint being written. The marker lists every file with its size and SHA-256, so a file truncated or
damaged after the fact is caught before it is loaded. Nothing in a checkpoint is a pickle: weights and
optimizer tensors are safetensors, everything else is JSON (see `optim_state`).

Saves happen only after an optimizer step, so a checkpoint never falls inside gradient accumulation and
the data position is one number: the global index of the next micro-batch.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sftpipe.errors import SftpipeError
from sftpipe.train.faults import failpoint
from sftpipe.train.optim_state import (
    OPTIMIZER_TENSORS,
    read_json,
    read_optimizer,
    read_scheduler,
    read_tensors,
    save_optimizer,
    save_scheduler,
)

COMPLETE = "COMPLETE"
STATE = "trainer_state.json"
RNG = "rng.json"
FINGERPRINT = "fingerprint.json"
CONFIG = "config.yaml"
_NAME = re.compile(r"^checkpoint-(\d+)$")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


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
    fingerprint: dict[str, Any] | None = None,
    config_text: str = "",
    rng_states: list[dict[str, Any]] | None = None,
    digests: bool = True,
    *,
    inference_files: Callable[[Path], None] | None = None,
) -> Path:
    """Write checkpoint-<step> atomically, then apply retention.

    Args:
        fingerprint: what a resumed run must match (see `resume.run_fingerprint`), stored as JSON.
        config_text: the resolved config (secrets redacted), stored for people reading the checkpoint.
        rng_states: `capture_rng()` of every process, by process index (default: this process only).
        digests: record each file's SHA-256 in the marker besides its size (costs a read of the checkpoint).
        inference_files: writes, into the checkpoint being written, what besides the weights `eval`, `infer`
            and `merge` need to use it on its own (tokenizer, generation config; see `saving`). Its files are
            fsynced and listed in the COMPLETE marker like the rest.

    Returns:
        The checkpoint path.

    Raises:
        SftpipeError: the disk is full or the write failed; the temporary dir is removed and every
            earlier checkpoint is left as it was.
    """
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    remove_incomplete(root)
    final = root / f"checkpoint-{state.step}"
    tmp = root / f".tmp-checkpoint-{state.step}"
    try:
        tmp.mkdir()
        failpoint("checkpoint.begin")
        model.save_pretrained(tmp, safe_serialization=True)
        if inference_files is not None:
            inference_files(tmp)
        failpoint("checkpoint.weights")
        save_optimizer(optimizer, tmp)
        save_scheduler(scheduler, tmp)
        failpoint("checkpoint.optimizer")
        (tmp / RNG).write_text(json.dumps({"processes": rng_states or [capture_rng()]}), encoding="utf-8")
        (tmp / STATE).write_text(json.dumps(asdict(state), indent=1), encoding="utf-8")
        (tmp / FINGERPRINT).write_text(json.dumps(fingerprint or {}, indent=1), encoding="utf-8")
        (tmp / CONFIG).write_text(config_text, encoding="utf-8")
        failpoint("checkpoint.state")
        _fsync_tree(tmp)
        marker = json.dumps({"step": state.step, "files": file_digests(tmp, digests)}, indent=1)
        failpoint("checkpoint.fsynced")
        if final.exists():  # same step written before (resumed from an older checkpoint): replace it
            remove_checkpoint(final)
        tmp.rename(final)
        _fsync_dir(root)
        failpoint("checkpoint.renamed")
        _write_durably(final / COMPLETE, marker)
        _fsync_dir(final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno in _DISK_FULL:
            raise SftpipeError(disk_full_message(root, state.step, exc, estimate_checkpoint_bytes(model, optimizer),
                                                 save_limit)) from None
        raise SftpipeError(f"{tmp}: cannot write checkpoint-{state.step} ({exc}); earlier checkpoints are intact"
                           ) from None
    failpoint("checkpoint.complete")
    apply_retention(root, save_limit, state.best_step, state.step)
    return final


def disk_full_message(root: Path, step: int, exc: OSError, estimate: int, save_limit: int) -> str:
    """What happened, what is intact, how much space is needed, and what to do."""
    done = complete_checkpoints(root.parent)
    need = max(estimate, dir_bytes(done[-1]) if done else 0)
    free = shutil.disk_usage(root).free
    kept = f"{done[-1].name} is intact" if done else "no earlier checkpoint exists"
    return (f"disk full while writing checkpoint-{step} in {root} ({exc.strerror or exc}). {kept}; the partial "
            f"checkpoint was removed. A checkpoint needs about {human_bytes(need)} and {human_bytes(free)} is "
            f"free there; with train.save_total_limit {save_limit} the run needs about "
            f"{human_bytes(need * (save_limit + 2))} for checkpoints. Free space or point train.output_dir at a "
            "bigger disk (or lower save_total_limit), then run the same command again to resume.")


def estimate_checkpoint_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> int:
    """Bytes of the tensors a checkpoint holds: saved weights (adapter only for LoRA) + optimizer state."""
    import peft

    if isinstance(model, peft.PeftModel):
        weights = peft.get_peft_model_state_dict(model)
    else:
        weights = {k: v for k, v in model.state_dict().items()}
    total = sum(t.numel() * t.element_size() for t in weights.values())
    if optimizer is not None:
        for param_state in optimizer.state_dict()["state"].values():
            total += sum(v.numel() * v.element_size() for v in param_state.values() if isinstance(v, torch.Tensor))
    return total


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints that carry a COMPLETE marker, oldest first (by step, numerically)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / COMPLETE).is_file()]
    return [p for _, p in sorted(found)]


def latest_complete(run_dir: Path) -> Path | None:
    """The newest checkpoint with a COMPLETE marker (not yet verified), or None."""
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


def apply_retention(root: Path, limit: int, best_step: int | None, current_step: int | None = None) -> list[Path]:
    """Delete old complete checkpoints beyond `limit`; the newest and the best are always kept.

    Checkpoints past `current_step` (left by a branch of the run that a resume went back from, e.g. after a
    corrupt newest checkpoint) are neither counted nor deleted here; the run replaces each when it gets there.
    """
    done = [p for p in complete_checkpoints(root.parent)
            if current_step is None or int(p.name.split("-")[1]) <= current_step]
    if not done:
        return []
    keep = set(done[-limit:])
    keep.add(done[-1])
    if best_step is not None:
        keep.update(p for p in done if p.name == f"checkpoint-{best_step}")
    removed = [p for p in done if p not in keep]
    for path in removed:
        remove_checkpoint(path)
    return removed


def remove_checkpoint(path: Path) -> None:
    """Unmark first, then delete: a deletion cut short leaves an incomplete dir, never a 'complete' husk."""
    marker = path / COMPLETE
    if marker.exists():
        marker.unlink()
        _fsync_dir(path)
    failpoint("checkpoint.retention")
    shutil.rmtree(path)


def remove_incomplete(root: Path) -> list[Path]:
    """Delete what interrupted saves left: .tmp-checkpoint-* dirs and checkpoint dirs without a marker."""
    stale = [p for p in root.iterdir() if p.is_dir() and (p.name.startswith(".tmp-checkpoint-")
                                                         or (_NAME.match(p.name) and not (p / COMPLETE).exists()))]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def file_digests(ckpt: Path, sha256: bool = True) -> dict[str, dict[str, Any]]:
    """Size (and SHA-256 unless `sha256` is False) of every file under `ckpt`, the marker excluded."""
    return {str(p.relative_to(ckpt)): {"bytes": p.stat().st_size, **({"sha256": _sha256(p)} if sha256 else {})}
            for p in sorted(ckpt.rglob("*")) if p.is_file() and p.name != COMPLETE}


def verify_checkpoint(ckpt: Path) -> None:
    """Check every file against the sizes (and digests, if recorded) in the COMPLETE marker.

    Raises:
        SftpipeError: naming the first file that is missing, truncated or changed.
    """
    marker = read_json(ckpt / COMPLETE)
    if not isinstance(marker, dict) or not isinstance(marker.get("files"), dict):
        raise SftpipeError(f"{ckpt / COMPLETE}: not a checkpoint marker written by sftpipe")
    for name, expected in marker["files"].items():
        path = ckpt / name
        if not path.is_file():
            raise SftpipeError(f"{path}: missing (listed in {COMPLETE})")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise SftpipeError(f"{path}: {size} bytes on disk but {expected['bytes']} were written (truncated or "
                               "overwritten)")
        if "sha256" in expected and _sha256(path) != expected["sha256"]:
            raise SftpipeError(f"{path}: content differs from what was written (SHA-256 mismatch: corrupt)")


def weight_files(ckpt: Path) -> list[Path]:
    """The model or adapter weight files of a checkpoint (its other safetensors file is optimizer state)."""
    return sorted(p for p in ckpt.glob("*.safetensors") if p.name != OPTIMIZER_TENSORS)


def restore_checkpoint(ckpt: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                       process_index: int = 0) -> TrainerState:
    """Load weights, optimizer, scheduler and RNG states of `ckpt` into the live objects.

    Call `verify_checkpoint` first. Every piece is overwritten, so restoring an older checkpoint after a
    newer one failed halfway leaves nothing of the failed one behind.

    Raises:
        SftpipeError: naming the file that is missing, corrupt or does not fit the model.
    """
    state_values = read_json(ckpt / STATE)
    try:
        state = TrainerState(**state_values)
    except TypeError as exc:
        raise SftpipeError(f"{ckpt / STATE}: not a trainer state ({exc})") from None
    rng = read_json(ckpt / RNG)
    load_weights(ckpt, model)
    try:
        optimizer.load_state_dict(read_optimizer(ckpt, optimizer))
    except (KeyError, ValueError, RuntimeError) as exc:
        raise SftpipeError(f"{ckpt / 'optimizer.json'}: does not fit this optimizer ({exc})") from None
    try:
        scheduler.load_state_dict(read_scheduler(ckpt))
    except (KeyError, TypeError, AttributeError) as exc:
        raise SftpipeError(f"{ckpt / 'scheduler.json'}: does not fit this scheduler ({exc})") from None
    try:
        states = rng["processes"]
        restore_rng(states[process_index % len(states)])  # fewer saved than now only under --resume-force
    except (KeyError, TypeError, ValueError, RuntimeError, ZeroDivisionError) as exc:
        raise SftpipeError(f"{ckpt / RNG}: not an RNG state ({exc})") from None
    return state


def load_trainer_state(ckpt: Path) -> TrainerState:
    """The trainer state (step, data position, best validation loss, token counts) of a checkpoint."""
    return TrainerState(**read_json(ckpt / STATE))


def capture_rng() -> dict[str, Any]:
    """This process's python, numpy, torch and per-CUDA-device RNG states, as JSON-able lists."""
    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state().tolist(),
        "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Set python, numpy, torch and every CUDA device's RNG to a state from `capture_rng`."""
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    np.random.set_state((state["numpy"][0], np.array(state["numpy"][1], dtype=np.uint32), *state["numpy"][2:]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def load_weights(ckpt: Path, model: torch.nn.Module) -> None:
    """Restore adapter or full weights saved by `save_checkpoint` into `model` (safetensors only)."""
    import peft

    files = weight_files(ckpt)
    if not files:
        raise SftpipeError(f"{ckpt}: no .safetensors weights in the checkpoint")
    tensors = {k: v for f in files for k, v in read_tensors(f).items()}
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


def dir_bytes(path: Path) -> int:
    """Total size of the files under `path`."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def human_bytes(n: float) -> str:
    """`1536` -> `'1.5 KiB'`."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_durably(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    _fsync_file(path)


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
