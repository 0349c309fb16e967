"""Checkpoints of a sharded (FSDP2) run: every process writes its shard with torch.distributed.checkpoint (DCP).

The checkpoint contract is the same as a single-process one (`sftpipe.contracts.checkpoint`): the main process
creates the temporary dir, every process writes its shard of the model and optimizer state into its `sharded/`
subdir (DCP: one `__<rank>_0.distcp` file per process, and `.metadata` from the main process once all are
written), then the main process adds the scheduler, trainer state and every process's RNG state, seals
(fsync, rename, COMPLETE marker with the size and SHA-256 of every file, every process's shard included) and
applies retention. A missing or truncated shard is therefore named by `verify_checkpoint` before anything is
loaded, and `--resume auto` falls back to the previous complete checkpoint as it does for any other damage.

Beside the shards, the main process writes the gathered weights (full model or LoRA adapter) and the inference
files, as in a single-process checkpoint, so `eval`, `infer`, `merge` and `train.select_best` use a sharded
run's checkpoints as they use any other. Resuming reads only the shards.

The run dir must be on a filesystem every process sees (one node, or a shared filesystem across nodes).

Resuming with another number of processes (only with --resume-force: the process count is in the run
fingerprint) works: DCP reshards the state on load. What then differs from an uninterrupted run is the data
order: each process takes every world-size-th batch of the plan, so the batches of the remaining steps are
split over processes differently, and the saved data position counts micro-batches per process.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from accelerate import Accelerator
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from sftpipe.config.schema import Config
from sftpipe.contracts.checkpoint import (
    RNG,
    SCHEDULER_JSON,
    SHARDED,
    CheckpointWriter,
    TrainerState,
    apply_retention,
    is_sharded_checkpoint,
    load_trainer_state,
    read_rng_states,
)
from sftpipe.contracts.run_dir import RunDir
from sftpipe.errors import SftpipeError
from sftpipe.train.checkpoint import restore_rng
from sftpipe.train.dcp_reader import SafeFileSystemReader
from sftpipe.train.faults import failpoint
from sftpipe.train.optim_state import read_scheduler, save_scheduler

# Only trainable weights are saved: LoRA's frozen base model is the base model on disk, not training state.
TRAINABLE = StateDictOptions(ignore_frozen_params=True)
# Loading into a module whose frozen weights were left out: which keys may be missing is checked by us.
TRAINABLE_LOAD = StateDictOptions(ignore_frozen_params=True, strict=False)
GATHERED = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)


@dataclass(kw_only=True)
class ShardedState:
    """What a sharded checkpoint saves and restores, as the loop holds it."""

    loss_model: torch.nn.Module  # the FSDP root: the model plus its loss
    model: torch.nn.Module  # the bare model (plain or peft) inside it: the gathered weights
    optimizer: torch.optim.Optimizer
    scheduler: Any


def gathered_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable weights of the bare model, whole, in CPU memory of the main process (empty elsewhere).

    A collective: every process must call it. For LoRA only the adapters are gathered.
    """
    return get_model_state_dict(model, options=GATHERED)


def gathered_copy(live: ShardedState, cfg: Config, device: torch.device, main: bool) -> torch.nn.Module | None:
    """A whole, unsharded copy of the model being trained, on the main process (None elsewhere), for in-training
    generation: `generate` calls the model's own forward many times, which a sharded model can only do with
    every process taking part. A collective: every process gathers; the main process loads the base model again
    and puts the trained weights in. It needs the model to fit one device once more (small models).

    Building the copy (LoRA initialises its adapters) draws no random numbers from the training streams.
    """
    weights = gathered_weights(live.model)
    if not main:
        return None
    from sftpipe.models.adapters import build_trainable_model

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        copy = build_trainable_model(cfg, device)
    result = copy.load_state_dict(weights, strict=False)
    trainable = {name for name, p in copy.named_parameters() if p.requires_grad}
    missing = [k for k in result.missing_keys if k in trainable]
    if missing or result.unexpected_keys:
        raise SftpipeError(f"in-training eval: the gathered weights do not fit a fresh copy of the model (missing "
                           f"{missing[:5]}, unexpected {list(result.unexpected_keys)[:5]})")
    return copy.eval()


def save_sharded_checkpoint(
    run_dir: Path,
    state: TrainerState,
    live: ShardedState,
    accelerator: Accelerator,
    *,
    save_limit: int,
    fingerprint: dict[str, Any],
    config_text: str,
    rng_states: list[dict[str, Any]],
    digests: bool,
    inference_files: Callable[[Path], None],
) -> Path:
    """Write checkpoint-<step> from every process (a collective), then apply retention on the main process.

    Returns:
        The checkpoint path.

    Raises:
        SftpipeError: the write failed (on any process); the temporary dir is removed, earlier checkpoints stay.
    """
    root = RunDir(run_dir).checkpoints
    main = accelerator.is_main_process
    writer = CheckpointWriter.begin(root, state.step, hook=failpoint) if main else CheckpointWriter(root, state.step)
    try:
        if main:
            writer.make_tmp()
        accelerator.wait_for_everyone()
        failpoint("checkpoint.begin")
        weights = gathered_weights(live.model)
        if main:
            live.model.save_pretrained(writer.tmp, state_dict=weights, safe_serialization=True)
            inference_files(writer.tmp)
        del weights
        failpoint("checkpoint.weights")
        model_state, optimizer_state = get_state_dict(live.loss_model, live.optimizer, options=TRAINABLE)
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=writer.tmp / SHARDED)
        failpoint("checkpoint.optimizer")
        if main:
            save_scheduler(live.scheduler, writer.tmp)
            writer.write_state(state, rng_states=rng_states, fingerprint=fingerprint, config_text=config_text)
            failpoint("checkpoint.state")
            writer.seal(digests)  # fires checkpoint.fsynced and checkpoint.renamed
    except (OSError, CheckpointException) as exc:
        if main:
            writer.discard()
        raise SftpipeError(f"{writer.tmp}: cannot write sharded checkpoint-{state.step} ({exc}); earlier "
                           "checkpoints are intact") from None
    accelerator.wait_for_everyone()  # no process goes on before the checkpoint is sealed
    if main:
        failpoint("checkpoint.complete")
        apply_retention(root, save_limit, state.best_step, state.step, hook=failpoint)
    accelerator.wait_for_everyone()
    return writer.final


def load_shards(ckpt: Path, live: ShardedState, optimizer: bool = True) -> None:
    """Load the model (and optimizer) shards of `ckpt` into the live sharded objects (a collective).

    DCP's `.metadata` is a pickle (its default planner's format): it is read with an allow-list of DCP's own
    records (`train.dcp_reader`), never with `pickle.load`; the shards' tensors are read with
    torch.load(weights_only=True).

    Raises:
        SftpipeError: the shards are missing, unreadable, or do not fit the model (naming the checkpoint).
    """
    if not is_sharded_checkpoint(ckpt):
        raise SftpipeError(f"{ckpt}: not a sharded checkpoint (no {SHARDED}/), but this run is sharded "
                           "(train.sharding: fsdp); resume it with the sharding it was written with")
    model_state, optimizer_state = get_state_dict(live.loss_model, live.optimizer, options=TRAINABLE)
    state = {"model": model_state, "optimizer": optimizer_state} if optimizer else {"model": model_state}
    try:
        dcp.load(state, storage_reader=SafeFileSystemReader(ckpt / SHARDED))
    except (OSError, RuntimeError, KeyError, ValueError, CheckpointException, pickle.UnpicklingError) as exc:
        raise SftpipeError(f"{ckpt / SHARDED}: cannot load the sharded state ({type(exc).__name__}: "
                           f"{str(exc)[:500]})") from None
    trainable = {name for name, p in live.loss_model.named_parameters() if p.requires_grad}
    if optimizer:
        result = set_state_dict(live.loss_model, live.optimizer, model_state_dict=state["model"],
                                optim_state_dict=state["optimizer"], options=TRAINABLE_LOAD)
    else:
        result = set_model_state_dict(live.loss_model, state["model"], options=TRAINABLE_LOAD)
    missing = [k for k in result.missing_keys if k in trainable]
    if missing or result.unexpected_keys:
        raise SftpipeError(f"{ckpt / SHARDED}: does not match the model (missing {missing[:5]}, unexpected "
                           f"{list(result.unexpected_keys)[:5]}); was it saved from a different model or method?")


def restore_sharded_checkpoint(ckpt: Path, live: ShardedState, process_index: int) -> TrainerState:
    """Load shards, scheduler and this process's RNG state of `ckpt` (every process calls it; verify first)."""
    state = load_trainer_state(ckpt)
    rng_states = read_rng_states(ckpt)
    load_shards(ckpt, live)
    try:
        live.scheduler.load_state_dict(read_scheduler(ckpt))
    except (KeyError, TypeError, AttributeError) as exc:
        raise SftpipeError(f"{ckpt / SCHEDULER_JSON}: does not fit this scheduler ({exc})") from None
    try:
        restore_rng(rng_states[process_index % len(rng_states)])  # other process counts only under --resume-force
    except (KeyError, TypeError, ValueError, RuntimeError, ZeroDivisionError) as exc:
        raise SftpipeError(f"{ckpt / RNG}: not an RNG state ({exc})") from None
    return state
