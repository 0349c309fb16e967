"""`train.micro_batch_size: auto` / `train.tokens_per_batch: auto`: the largest micro-batch that fits the device.

The estimate (models/memory_plan.py) picks the largest micro-batch whose peak fits the device's memory, and
grad_accum so that the tokens per optimizer step stay `train.tokens_per_step`. On CUDA a probe confirms it: a
forward and backward on that many rows of the longest examples, with the optimizer states' bytes held aside,
halving the rows on out-of-memory. The RNG states are restored after the probe, so the run draws what it would
have drawn without it. The choice goes into the run manifest; a resumed run takes it from there instead of
choosing again (another GPU could choose otherwise, and the trajectory would change).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable

import torch

from sftpipe.config.schema import Config
from sftpipe.contracts.checkpoint import complete_checkpoints
from sftpipe.contracts.run_dir import AutoBatch, RunDir
from sftpipe.data.batches.collate import MicroBatch, TokenStore, collate_padded
from sftpipe.data.batches.plan import build_plan, rows_stats
from sftpipe.errors import SftpipeError
from sftpipe.models.memory_plan import apply_batch, resolve_auto_batch

log = logging.getLogger(__name__)

Probe = Callable[[int], None]  # runs a forward/backward on that many rows; raises torch.OutOfMemoryError


def device_memory(device: torch.device) -> int:
    """Bytes of memory of `device`: the GPU's total, or the machine's physical memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def choose_batch(cfg: Config, run_dir: RunDir, device: torch.device, world_size: int,
                 probe: Probe | None = None) -> tuple[Config, AutoBatch | None]:
    """`cfg` with its auto batch fields chosen (or taken from the run being resumed), and the choice.

    Args:
        probe: on CUDA, confirms a number of rows by running them (see `probe_step`).
    """
    if not cfg.train.auto_batch:
        return cfg, None
    if run_dir.manifest_path.is_file() and complete_checkpoints(run_dir.path):
        chosen = run_dir.manifest.batch
        if chosen is not None:
            log.info("auto batch: reusing the choice of the run being resumed (micro_batch_size %d, grad_accum %d)",
                     chosen.micro_batch_size, chosen.grad_accum)
            return apply_batch(cfg, chosen.micro_batch_size, chosen.tokens_per_batch, chosen.grad_accum,
                               chosen.gradient_checkpointing), chosen
    if cfg.train.grad_accum != 1:
        log.warning("train.grad_accum %d is replaced by the auto batch size's choice (it keeps train.tokens_per_step "
                    "%d)", cfg.train.grad_accum, cfg.train.tokens_per_step)
    budget = device_memory(device)
    resolved, rec = resolve_auto_batch(cfg, budget, gpus=world_size, cuda=device.type == "cuda")
    rows, probed = rec.micro_batch_size, False
    if probe is not None and device.type == "cuda":
        rows = fewest_over_processes(probe_rows(probe, rows), device)
        probed = True
    row_length = rec.estimate.row_length
    rows_per_step = rec.micro_batch_size * rec.grad_accum
    grad_accum = math.ceil(rows_per_step / rows)
    resolved = apply_batch(cfg, rows, rows * row_length, grad_accum, rec.gradient_checkpointing)
    chosen = AutoBatch(micro_batch_size=rows, tokens_per_batch=rows * row_length, grad_accum=grad_accum,
                       gradient_checkpointing=resolved.model.gradient_checkpointing, budget_bytes=budget,
                       estimate_bytes=rec.estimate.reserved, probed=probed)
    log.info("auto batch: %d rows of %d tokens per micro-batch, grad_accum %d, gradient checkpointing %s "
             "(estimate %.2f GiB of %.2f GiB%s)", rows, row_length, grad_accum,
             "on" if chosen.gradient_checkpointing else "off", chosen.estimate_bytes / 2**30, budget / 2**30,
             ", confirmed by a CUDA step" if probed else "")
    return resolved, chosen


def probe_rows(probe: Probe, rows: int) -> int:
    """The most rows, from `rows` down by halving, whose probe step does not run out of memory."""
    while True:
        try:
            probe(rows)
            return rows
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            if rows == 1:
                raise SftpipeError("auto batch: even one row runs out of CUDA memory in the probe step; use qlora, "
                                   "gradient checkpointing, more GPUs or shorter rows") from None
            log.info("auto batch: %d rows ran out of memory in the probe step; trying %d", rows, rows // 2)
            rows //= 2


def fewest_over_processes(rows: int, device: torch.device) -> int:
    """The smallest of every process's `rows` (a collective when a process group is up).

    Each process probes its own GPU; one that ran out of memory sooner must not train with fewer rows and more
    micro-batches per step than the others: every step would wait for a gradient sync that never comes.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return rows
    agreed = torch.tensor([rows], dtype=torch.int64, device=device)
    dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
    return int(agreed.item())


def probe_step(loss_model: torch.nn.Module, optimizer_bytes: int, batch_of: Callable[[int], MicroBatch],
               device: torch.device) -> Probe:
    """A probe running forward and backward on `rows` rows from `batch_of`, with `optimizer_bytes` held aside
    for the optimizer states a real step has; gradients and RNG states are left as they were."""
    def probe(rows: int) -> None:
        cpu_rng, cuda_rng = torch.get_rng_state(), torch.cuda.get_rng_state(device)
        held = torch.empty(optimizer_bytes, dtype=torch.uint8, device=device)
        try:
            inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch_of(rows).inputs.items()}
            loss_model(**inputs).backward()
            torch.cuda.synchronize(device)
        finally:
            del held
            for p in loss_model.parameters():
                p.grad = None
            torch.set_rng_state(cpu_rng)
            torch.cuda.set_rng_state(cuda_rng, device)
    return probe


def largest_micro_batch(cfg: Config, store: TokenStore, pad_id: int, data_max_length: int, flat: bool,
                        rows: int | None = None) -> MicroBatch:
    """The micro-batch with the most token slots the run could make: the `rows` (default: micro_batch_size)
    longest examples together (padded batches are shuffled, so any epoch may group them), or the fullest of
    the packed (`rows` packed rows) or token-budget plan's first epoch."""
    tc = cfg.train
    lengths = store.lengths
    if not tc.packing and (rows is not None or not tc.tokens_per_batch):
        longest = sorted(range(len(lengths)), key=lambda i: -int(lengths[i]))[: rows or tc.micro_batch_size]
        return collate_padded(store, [[i] for i in longest], pad_id)
    if rows is not None:
        tc = tc.model_copy(update={"micro_batch_size": rows, "tokens_per_batch": 0})
    plan, layout = build_plan(tc, lengths, data_max_length, 1, 0, flat=flat)
    fullest = max(range(plan.micro_batches_per_epoch), key=lambda g: rows_stats(plan.rows(g)[0], lengths).slots)
    return layout.collate(store, plan.rows(fullest)[0], pad_id, True)
