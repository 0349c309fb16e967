"""A checkpoint dir: what it holds, how it is sealed and verified, which ones count, which ones are kept.

A checkpoint is written to a temporary dir, fsynced, renamed to checkpoint-<step>, then marked complete.
A checkpoint dir without its COMPLETE marker is never resumed from, so a crash mid-save costs at most the
checkpoint being written. The marker lists every file with its size and SHA-256, so a file truncated or
damaged after the fact is caught before it is loaded. Nothing in a checkpoint is a pickle: weights and
optimizer tensors are safetensors, everything else is JSON.

What goes into the files (weights, optimizer, scheduler and RNG states) is `sftpipe.train.checkpoint`'s; this
module owns their names, the trainer state's and the marker's shape, and the order of the crash-safe steps.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, model_serializer
from pydantic.dataclasses import dataclass

from sftpipe.contracts.files import FORMAT_VERSION, Record, read_json, read_record, to_json
from sftpipe.contracts.run_dir import RunDir
from sftpipe.errors import SftpipeError

COMPLETE = "COMPLETE"  # the marker: written last, its presence is what makes a checkpoint count
STATE = "trainer_state.json"
RNG = "rng.json"  # {"processes": [one RNG state per process, by process index]}
FINGERPRINT = "fingerprint.json"  # what a resumed run must match (see `train.resume.run_fingerprint`)
CONFIG = "config.yaml"  # the resolved config, for people reading the checkpoint
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
SCHEDULER_JSON = "scheduler.json"
# A sharded (FSDP) checkpoint: model and optimizer state as torch.distributed.checkpoint wrote them, one file per
# process plus its `.metadata`; the gathered weights beside it are for eval/infer/merge, not for resuming.
SHARDED = "sharded"
_NAME = re.compile(r"^checkpoint-(\d+)$")
_TMP_PREFIX = ".tmp-checkpoint-"


@dataclass(config=ConfigDict(extra="forbid"))
class TrainerState:
    """Everything besides tensors that a resumed run needs to continue exactly (trainer_state.json).

    A pydantic dataclass, not a frozen record: the loop advances it in place, step by step.
    """

    format_version: int = FORMAT_VERSION
    step: int = 0  # optimizer steps done
    micro_batch: int = 0  # global micro-batch index of the next micro-batch: the data position
    tokens_seen: int = 0
    trained_tokens_seen: int = 0
    best_val_loss: float | None = None
    best_step: int | None = None
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)


class FileEntry(Record):
    bytes: int
    sha256: str | None = None  # absent when train.checkpoint_digests is off

    @model_serializer(mode="wrap")
    def _leave_out_absent(self, handler: Any) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class CompleteMarker(Record):
    """The COMPLETE marker: every file of the checkpoint (the marker aside), by path relative to it."""

    format_version: int = FORMAT_VERSION
    step: int
    files: dict[str, FileEntry]


# Named moments of a save (checkpoint.fsynced, .renamed, .retention) reported to the caller: train passes its
# failpoints (see train/faults.py), so that tests can kill a process exactly there.
Hook = Callable[[str], None]


def no_hook(name: str) -> None:
    """The default hook: nothing happens at the named moments."""


def checkpoint_step(path: Path) -> int | None:
    """The step of a checkpoint-<step> dir name; None for any other name."""
    match = _NAME.match(path.name)
    return int(match.group(1)) if match else None


def is_complete(ckpt: Path) -> bool:
    """Whether `ckpt` carries its COMPLETE marker (not yet verified)."""
    return (ckpt / COMPLETE).is_file()


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints that carry a COMPLETE marker, oldest first (by step, numerically)."""
    root = RunDir(run_dir).checkpoints
    if not root.is_dir():
        return []
    found = [(step, p) for p in root.iterdir() if (step := checkpoint_step(p)) is not None and is_complete(p)]
    return [p for _, p in sorted(found)]


def latest_complete(run_dir: Path) -> Path | None:
    """The newest checkpoint with a COMPLETE marker (not yet verified), or None."""
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


def apply_retention(root: Path, limit: int, best_step: int | None, current_step: int | None = None,
                    hook: Hook = no_hook) -> list[Path]:
    """Delete old complete checkpoints of the checkpoints dir `root` beyond `limit`; the newest and the best are
    always kept.

    Checkpoints past `current_step` (left by a branch of the run that a resume went back from, e.g. after a
    corrupt newest checkpoint) are neither counted nor deleted here; the run replaces each when it gets there.
    """
    done = [p for p in complete_checkpoints(root.parent)
            if current_step is None or checkpoint_step(p) <= current_step]
    if not done:
        return []
    keep = set(done[-limit:])
    keep.add(done[-1])
    if best_step is not None:
        keep.update(p for p in done if checkpoint_step(p) == best_step)
    removed = [p for p in done if p not in keep]
    for path in removed:
        remove_checkpoint(path, hook)
    return removed


def remove_checkpoint(path: Path, hook: Hook = no_hook) -> None:
    """Unmark first, then delete: a deletion cut short leaves an incomplete dir, never a 'complete' husk."""
    marker = path / COMPLETE
    if marker.exists():
        marker.unlink()
        _fsync_dir(path)
    hook("checkpoint.retention")
    shutil.rmtree(path)


def remove_incomplete(root: Path) -> list[Path]:
    """Delete what interrupted saves left: .tmp-checkpoint-* dirs and checkpoint dirs without a marker."""
    stale = [p for p in root.iterdir() if p.is_dir() and (p.name.startswith(_TMP_PREFIX)
                                                         or (checkpoint_step(p) is not None and not is_complete(p)))]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def file_digests(ckpt: Path, sha256: bool = True) -> dict[str, dict[str, Any]]:
    """Size (and SHA-256 unless `sha256` is False) of every file under `ckpt`, the marker excluded, as the marker
    lists them."""
    return {str(p.relative_to(ckpt)): {"bytes": p.stat().st_size, **({"sha256": _sha256(p)} if sha256 else {})}
            for p in sorted(ckpt.rglob("*")) if p.is_file() and p.name != COMPLETE}


def verify_checkpoint(ckpt: Path) -> None:
    """Check every file against the sizes (and digests, if recorded) in the COMPLETE marker.

    Raises:
        SftpipeError: naming the marker when it is unreadable, or the first file that is missing, truncated or
            changed.
    """
    marker = read_record(ckpt / COMPLETE, CompleteMarker, "a checkpoint marker", "this checkpoint cannot be verified")
    for name, expected in marker.files.items():
        path = ckpt / name
        if not path.is_file():
            raise SftpipeError(f"{path}: missing (listed in {COMPLETE})")
        size = path.stat().st_size
        if size != expected.bytes:
            raise SftpipeError(f"{path}: {size} bytes on disk but {expected.bytes} were written (truncated or "
                               "overwritten)")
        if expected.sha256 is not None and _sha256(path) != expected.sha256:
            raise SftpipeError(f"{path}: content differs from what was written (SHA-256 mismatch: corrupt)")


def weight_files(ckpt: Path) -> list[Path]:
    """The model or adapter weight files of a checkpoint (its other safetensors file is optimizer state)."""
    return sorted(p for p in ckpt.glob("*.safetensors") if p.name != OPTIMIZER_TENSORS)


def is_sharded_checkpoint(ckpt: Path) -> bool:
    """Whether `ckpt` was written by a sharded (FSDP) run: its training state is in SHARDED."""
    return (ckpt / SHARDED).is_dir()


def load_trainer_state(ckpt: Path) -> TrainerState:
    """The trainer state (step, data position, best validation loss, token counts) of a checkpoint.

    Raises:
        SftpipeError: naming the file, when it is missing, corrupt or not a trainer state.
    """
    return read_record(ckpt / STATE, TrainerState, "a trainer state", "resume from another checkpoint")


def read_rng_states(ckpt: Path) -> Any:
    """The RNG states saved by each process (a list by process index, as `CheckpointWriter` was given them)."""
    rng = read_json(ckpt / RNG)
    if not isinstance(rng, dict) or "processes" not in rng:
        raise SftpipeError(f"{ckpt / RNG}: not an RNG state (no 'processes' list)")
    return rng["processes"]


def read_fingerprint(ckpt: Path) -> dict[str, Any]:
    """The run fingerprint the checkpoint was saved with."""
    fingerprint = read_json(ckpt / FINGERPRINT)
    if not isinstance(fingerprint, dict):
        raise SftpipeError(f"{ckpt / FINGERPRINT}: not a run fingerprint (a JSON object was expected)")
    return fingerprint


class CheckpointWriter:
    """Writes checkpoint-<step> of the checkpoints dir `root` the crash-safe way.

    `begin`, then `make_tmp` and write the files into it, `write_state`, then `seal`; on a failure, `discard`.
    Until `seal` has written the marker the checkpoint does not count, wherever the process dies.
    """

    def __init__(self, root: Path, step: int, hook: Hook = no_hook):
        self.root = root
        self.step = step
        self.hook = hook
        self.tmp = root / f"{_TMP_PREFIX}{step}"
        self.final = root / f"checkpoint-{step}"

    @classmethod
    def begin(cls, root: Path, step: int, hook: Hook = no_hook) -> CheckpointWriter:
        """Create `root` if needed and delete what interrupted saves left in it."""
        root.mkdir(parents=True, exist_ok=True)
        remove_incomplete(root)
        return cls(root, step, hook)

    def make_tmp(self) -> Path:
        """Create the temporary dir the checkpoint's files are written into; returns it."""
        self.tmp.mkdir()
        return self.tmp

    def write_state(self, state: TrainerState, *, rng_states: list[dict[str, Any]], fingerprint: dict[str, Any],
                    config_text: str) -> None:
        """The JSON and YAML files: trainer state, every process's RNG state, the run fingerprint, the config."""
        _write_json(self.tmp / RNG, {"processes": rng_states}, indent=None)
        _write_json(self.tmp / STATE, to_json(state), indent=1)
        _write_json(self.tmp / FINGERPRINT, fingerprint, indent=1)
        (self.tmp / CONFIG).write_text(config_text, encoding="utf-8")

    def seal(self, digests: bool = True) -> Path:
        """fsync every file, rename the temporary dir to checkpoint-<step> (replacing one of the same step, left
        by a run that resumed from before it), then write the COMPLETE marker durably.

        Args:
            digests: record each file's SHA-256 in the marker besides its size (costs a read of the checkpoint).

        Returns:
            The checkpoint path.
        """
        _fsync_tree(self.tmp)
        marker = CompleteMarker(step=self.step, files=file_digests(self.tmp, digests))
        self.hook("checkpoint.fsynced")
        if self.final.exists():
            remove_checkpoint(self.final, self.hook)
        self.tmp.rename(self.final)
        _fsync_dir(self.root)
        self.hook("checkpoint.renamed")
        _write_json(self.final / COMPLETE, to_json(marker), indent=1)
        _fsync_file(self.final / COMPLETE)
        _fsync_dir(self.final)
        return self.final

    def discard(self) -> None:
        """Remove the temporary dir after a failed save; earlier checkpoints are left as they were."""
        shutil.rmtree(self.tmp, ignore_errors=True)


def _write_json(path: Path, value: Any, indent: int | None) -> None:
    path.write_text(json.dumps(value, indent=indent), encoding="utf-8")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
