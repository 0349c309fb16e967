"""The memory plan of a config: its largest micro-batch, the estimate of a step on it (models/memory.py), and the
largest micro-batch that fits a memory budget while the rows per optimizer step stay as configured. Used by
`sftpipe estimate`, `validate`, `train --dry-run` and `micro_batch_size: auto`.

The micro-batch is the largest one training would make: `micro_batch_size` rows of the longest example (padded
batches), or the packed rows of `tokens_per_batch` / `pack_length`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sftpipe.config.schema import Config
from sftpipe.contracts.data_dir import DataDir
from sftpipe.models.memory import (
    ActivationSettings,
    DecoderShape,
    MemoryEstimate,
    activation_settings,
    count_parameters,
    estimate,
    meta_model,
)

MAX_ROWS = 4096  # the search for the largest micro-batch stops here


@dataclass(frozen=True)
class BatchShape:
    rows: int  # rows of the largest micro-batch
    row_length: int  # tokens per row (the longest example, or pack_length)
    supervised_fraction: float  # labelled share of the tokens (1.0 when the data dir is not prepared)
    rows_per_step: int  # rows of an optimizer step on one device (micro-batch rows x grad_accum)
    packed: bool
    source: str  # where the lengths came from


@dataclass
class Recommendation:
    micro_batch_size: int  # rows per micro-batch (packed rows with packing)
    grad_accum: int
    gradient_checkpointing: bool
    estimate: MemoryEstimate

    @property
    def tokens_per_batch(self) -> int:
        return self.estimate.tokens


@dataclass
class EstimateResult:
    model: str
    method: str
    shape: DecoderShape
    batch: BatchShape
    planned: MemoryEstimate  # the configured run
    other_checkpointing: MemoryEstimate  # the same with gradient checkpointing switched
    budget: int | None  # bytes per device
    recommendation: Recommendation | None  # None when nothing fits or no budget is known

    @property
    def fits(self) -> bool | None:
        return None if self.budget is None else self.planned.reserved <= self.budget

    def as_dict(self) -> dict[str, Any]:
        rec = self.recommendation
        return {"model": self.model, "method": self.method, "budget_bytes": self.budget, "fits": self.fits,
                "batch": self.batch.__dict__, "planned": self.planned.as_dict(),
                "other_checkpointing": self.other_checkpointing.as_dict(),
                "recommendation": None if rec is None else {
                    "micro_batch_size": rec.micro_batch_size, "grad_accum": rec.grad_accum,
                    "tokens_per_batch": rec.tokens_per_batch, "gradient_checkpointing": rec.gradient_checkpointing,
                    "estimate": rec.estimate.as_dict()}}


def batch_shape(cfg: Config) -> BatchShape:
    """The largest micro-batch of `cfg`: from the prepared data dir's lengths when there is one, else from
    data.max_length (every example as long as allowed)."""
    tc = cfg.train
    data = DataDir(Path(cfg.data.output_dir))
    longest, fraction, source = cfg.data.max_length, 1.0, f"data.max_length {cfg.data.max_length}"
    if data.is_prepared():
        manifest = data.manifest
        split = manifest.splits["train"]
        longest = manifest.max_length
        if split.examples:
            from sftpipe.data.batches.collate import TokenStore

            longest = int(TokenStore(data.load_split("train")).lengths.max())
            fraction = split.trained_tokens / max(split.tokens, 1)
            source = f"{data.path} (longest train example {longest} tokens)"
    mbs = tc.micro_batch_size if isinstance(tc.micro_batch_size, int) else 1
    budget = tc.tokens_per_batch if isinstance(tc.tokens_per_batch, int) else 0
    if tc.packing:
        length = tc.pack_length or (data.manifest.max_length if data.is_prepared() else cfg.data.max_length)
        rows = budget // length if budget else mbs
    else:
        length = longest
        rows = max(1, budget // longest) if budget else mbs
    per_step = math.ceil(tc.tokens_per_step / length) if tc.auto_batch else rows * tc.grad_accum
    return BatchShape(rows, length, fraction, per_step, tc.packing, source)


def resolve_auto_batch(cfg: Config, budget: int, *, gpus: int = 1, cuda: bool = True) -> tuple[Config, Recommendation]:
    """`cfg` with `micro_batch_size: auto` or `tokens_per_batch: auto` replaced by the largest micro-batch whose
    estimate fits `budget` bytes per device, grad_accum keeping tokens_per_step, and checkpointing on only when
    nothing fits without it.

    Raises:
        SftpipeError: not even one row fits.
    """
    from sftpipe.errors import SftpipeError

    result = estimate_config(cfg, gpus=gpus, gpu_memory=budget, cuda=cuda)
    rec = result.recommendation
    if rec is None:
        raise SftpipeError(f"train.micro_batch_size/tokens_per_batch auto: not even one row of "
                           f"{result.batch.row_length} tokens fits {budget / 2**30:.2f} GiB per device by the estimate "
                           "(`sftpipe estimate` shows the breakdown); use qlora, more GPUs or shorter rows")
    return apply_batch(cfg, rec.micro_batch_size, rec.tokens_per_batch, rec.grad_accum,
                       rec.gradient_checkpointing), rec


def apply_batch(cfg: Config, rows: int, tokens: int, grad_accum: int, checkpointing: bool) -> Config:
    """`cfg` with the auto field set to `rows` (micro_batch_size) or `tokens` (tokens_per_batch)."""
    tc = cfg.train
    update: dict[str, Any] = {"grad_accum": grad_accum}
    if tc.micro_batch_size == "auto":
        update["micro_batch_size"] = rows
    else:
        update["tokens_per_batch"] = tokens
    model = cfg.model.model_copy(update={"gradient_checkpointing": checkpointing or cfg.model.gradient_checkpointing})
    return cfg.model_copy(update={"train": tc.model_copy(update=update), "model": model})


def estimate_config(cfg: Config, *, gpus: int = 1, gpu_memory: int | None = None, sharded: bool | None = None,
        config: Any = None, cuda: bool | None = None) -> EstimateResult:
    """Estimate the configured run's memory per device and, given a budget, the micro-batch that fits.

    Args:
        gpus: devices the run is launched on.
        gpu_memory: bytes per device; default: the first CUDA device's memory, none on a CPU-only machine.
        sharded: FSDP full sharding of weights, gradients and optimizer states (default: as train.sharding
            says; without it every process holds the whole model, as under DDP).
        config: a transformers config built in code, instead of reading model.name_or_path's.
        cuda: estimate for CUDA devices (bool dropout masks, context and allocator slack); default: whether
            a budget applies (--gpu-memory given or a GPU present).
    """
    import torch

    from sftpipe.models.loading import pick_device, resolve_dtype

    if gpu_memory is None and torch.cuda.is_available():
        gpu_memory = torch.cuda.get_device_properties(0).total_memory
    cuda = gpu_memory is not None if cuda is None else cuda
    device = torch.device("cuda") if cuda else pick_device("cpu")
    weight_dtype = resolve_dtype(cfg.model.dtype, device) if cfg.model.dtype != "auto" or not cuda else torch.bfloat16
    sharded = cfg.train.sharding == "fsdp" if sharded is None else sharded
    model = meta_model(cfg, config)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    shape = DecoderShape.of(base.config)
    params = count_parameters(model, cfg, weight_dtype)
    acts = activation_settings(cfg, model, weight_dtype, cuda)
    batch = batch_shape(cfg)

    def at(a: ActivationSettings, rows: int) -> MemoryEstimate:
        return estimate(shape, params, a, rows=rows, row_length=batch.row_length,
                        supervised_fraction=batch.supervised_fraction, devices=gpus, sharded=sharded, cuda=cuda,
                        chunk_tokens=cfg.train.loss_chunk_tokens)

    planned = at(acts, batch.rows)
    other = at(replace(acts, checkpointing=not acts.checkpointing), batch.rows)
    recommendation = recommend(at, acts, batch, gpu_memory) if gpu_memory else None
    return EstimateResult(model=cfg.model.name_or_path, method=cfg.train.method, shape=shape, batch=batch,
                          planned=planned, other_checkpointing=other, budget=gpu_memory,
                          recommendation=recommendation)


def largest_rows(at: Callable[[ActivationSettings, int], MemoryEstimate], a: ActivationSettings, budget: int, cap: int) -> int:
    """The most rows (up to `cap`) whose estimate fits `budget`; 0 when not even one does."""
    if at(a, 1).reserved > budget:
        return 0
    low, high = 1, cap  # the estimate grows with the rows: bisect for the last that fits
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if at(a, mid).reserved <= budget else (low, mid - 1)
    return low


def recommend(at: Callable[[ActivationSettings, int], MemoryEstimate], acts: ActivationSettings, batch: BatchShape,
              budget: int) -> Recommendation | None:
    """The largest micro-batch that fits `budget` (checkpointing only when it must), with the grad accum that
    keeps the configured rows per optimizer step (rounded up when they do not divide)."""
    for checkpointing in ([acts.checkpointing, True] if not acts.checkpointing else [True]):
        a = replace(acts, checkpointing=checkpointing)
        rows = largest_rows(at, a, budget, min(MAX_ROWS, batch.rows_per_step))
        if rows:
            grad_accum = math.ceil(batch.rows_per_step / rows)
            rows = math.ceil(batch.rows_per_step / grad_accum)  # the fewest rows with that many micro-batches
            return Recommendation(micro_batch_size=rows, grad_accum=grad_accum, gradient_checkpointing=checkpointing,
                                  estimate=at(a, rows))
    return None
