"""`sftpipe validate` under train.sharding: fsdp: what FSDP2 will shard, and the sharded state per process."""

from __future__ import annotations

from sftpipe.config.schema import Config
from sftpipe.preflight import Check
from sftpipe.train.checkpoint import human_bytes

PROCESS_COUNTS = (2, 4, 8)


def sharding_checks(cfg: Config, total: int | None, trainable: int | None, weight_bytes: int) -> list[Check]:
    """The sharding plan and the weights + gradients + AdamW state each process holds for 2, 4 and 8 processes
    (activations and the one gathered layer at a time come on top); none when the run is not sharded."""
    if cfg.train.sharding != "fsdp":
        return []
    notes = []
    if cfg.eval.during_training.every:
        notes.append(Check("sharding", "warn", "eval.during_training under FSDP gathers a whole copy of the model on "
                                               "the main process for generation: it must fit one device"))
    plan = (f"FSDP2: one unit per decoder layer, then the rest (embeddings, norm, LM head); "
            f"reshard_after_forward {cfg.train.fsdp.reshard_after_forward}, cpu_offload {cfg.train.fsdp.cpu_offload}, "
            f"activation checkpointing {cfg.model.gradient_checkpointing}; checkpoints sharded, train.output_dir "
            "must be on a filesystem every process sees")
    if total is None or trainable is None:
        return [Check("sharding", "ok", plan), *notes]
    state = total * weight_bytes + 3 * trainable * weight_bytes  # weights, gradients, AdamW's two moments
    where = "CPU" if cfg.train.fsdp.cpu_offload else "device"
    per_process = ", ".join(f"{n} processes {human_bytes(state / n)}" for n in PROCESS_COUNTS)
    return [Check("sharding", "ok", f"{plan}. Sharded state per process ({where} memory; activations not "
                                    f"included): {per_process}"), *notes]
