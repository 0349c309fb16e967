"""Save and restore the live training state: weights, optimizer, scheduler, RNG states and the trainer state.

What a checkpoint dir holds, how it is sealed (temporary dir, fsync, rename, COMPLETE marker with sizes and
digests) and verified, and which checkpoints count is the checkpoint contract (`sftpipe.contracts.checkpoint`);
this module captures the state into it and restores the state from it. Weights and optimizer tensors are
safetensors, everything else is JSON (see `optim_state`): nothing in a checkpoint is a pickle.

Saves happen only after an optimizer step, so a checkpoint never falls inside gradient accumulation and
the data position is one number: the global index of the next micro-batch.
"""

from __future__ import annotations

import errno
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sftpipe.contracts.checkpoint import (
    OPTIMIZER_JSON,
    RNG,
    SCHEDULER_JSON,
    CheckpointWriter,
    TrainerState,
    apply_retention,
    complete_checkpoints,
    is_sharded_checkpoint,
    load_trainer_state,
    read_rng_states,
    weight_files,
)
from sftpipe.contracts.run_dir import RunDir
from sftpipe.errors import SftpipeError
from sftpipe.train.faults import failpoint
from sftpipe.train.optim_state import (
    read_optimizer,
    read_scheduler,
    read_tensors,
    save_optimizer,
    save_scheduler,
)

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


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
    root = RunDir(run_dir).checkpoints
    writer = CheckpointWriter.begin(root, state.step, hook=failpoint)
    try:
        tmp = writer.make_tmp()
        failpoint("checkpoint.begin")
        model.save_pretrained(tmp, safe_serialization=True)
        if inference_files is not None:
            inference_files(tmp)
        failpoint("checkpoint.weights")
        save_optimizer(optimizer, tmp)
        save_scheduler(scheduler, tmp)
        failpoint("checkpoint.optimizer")
        writer.write_state(state, rng_states=rng_states or [capture_rng()], fingerprint=fingerprint or {},
                           config_text=config_text)
        failpoint("checkpoint.state")
        final = writer.seal(digests)  # fires checkpoint.fsynced and checkpoint.renamed
    except OSError as exc:
        writer.discard()
        if exc.errno in _DISK_FULL:
            raise SftpipeError(disk_full_message(root, state.step, exc, estimate_checkpoint_bytes(model, optimizer),
                                                 save_limit)) from None
        raise SftpipeError(f"{writer.tmp}: cannot write checkpoint-{state.step} ({exc}); earlier checkpoints are "
                           "intact") from None
    failpoint("checkpoint.complete")
    apply_retention(root, save_limit, state.best_step, state.step, hook=failpoint)
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


def restore_checkpoint(ckpt: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                       process_index: int = 0) -> TrainerState:
    """Load weights, optimizer, scheduler and RNG states of `ckpt` into the live objects.

    Call `verify_checkpoint` first. Every piece is overwritten, so restoring an older checkpoint after a
    newer one failed halfway leaves nothing of the failed one behind.

    Raises:
        SftpipeError: naming the file that is missing, corrupt or does not fit the model.
    """
    if is_sharded_checkpoint(ckpt):
        raise SftpipeError(f"{ckpt}: written by a sharded run (train.sharding: fsdp), whose optimizer state is in "
                           f"shards; resume it with train.sharding: fsdp (any number of processes)")
    state = load_trainer_state(ckpt)
    rng_states = read_rng_states(ckpt)
    load_weights(ckpt, model)
    try:
        optimizer.load_state_dict(read_optimizer(ckpt, optimizer))
    except (KeyError, ValueError, RuntimeError) as exc:
        raise SftpipeError(f"{ckpt / OPTIMIZER_JSON}: does not fit this optimizer ({exc})") from None
    try:
        scheduler.load_state_dict(read_scheduler(ckpt))
    except (KeyError, TypeError, AttributeError) as exc:
        raise SftpipeError(f"{ckpt / SCHEDULER_JSON}: does not fit this scheduler ({exc})") from None
    try:
        restore_rng(rng_states[process_index % len(rng_states)])  # fewer saved than now only under --resume-force
    except (KeyError, TypeError, ValueError, RuntimeError, ZeroDivisionError) as exc:
        raise SftpipeError(f"{ckpt / RNG}: not an RNG state ({exc})") from None
    return state


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
