"""`sftpipe train CONFIG --dry-run`: validate, estimate, build the model and run one training step on the largest
micro-batch the run would make, then print step time and peak memory next to the estimate. Nothing is written:
no Accelerator (it would create the log dir), no run dir, no checkpoint.

The step is a real one (forward, backward, AdamW step) so the peak holds the optimizer states as every later
step does. On CUDA the peak is `torch.cuda.max_memory_allocated`, the figure the estimate predicts; on CPU it is
the process's peak resident memory, which also holds Python, the libraries and the loaded data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sftpipe.config.schema import Config
from sftpipe.contracts.data_dir import DataDir
from sftpipe.data.batches.mix import open_train_data
from sftpipe.errors import SftpipeError
from sftpipe.models.adapters import build_trainable_model, count_parameters
from sftpipe.models.loading import load_tokenizer, pick_device, resolve_attn
from sftpipe.models.varlen_attention import VARLEN_ATTENTION, packed_attention
from sftpipe.preflight import Check, validate
from sftpipe.preflight.estimate import EstimateResult
from sftpipe.preflight.estimate import run as estimate_memory
from sftpipe.models.memory_plan import resolve_auto_batch
from sftpipe.train.auto_batch import device_memory, largest_micro_batch
from sftpipe.train.causal_lm import CausalLMLoss
from sftpipe.train.tracking import peak_rss_bytes


@dataclass
class DryRunResult:
    checks: list[Check]
    estimate: EstimateResult
    ran: bool  # False when validation failed or the estimate does not fit: no step was tried
    step_s: float = float("nan")
    peak_bytes: int = 0
    peak_kind: str = ""  # what peak_bytes measures
    loss: float = float("nan")
    tokens: int = 0  # token slots of the micro-batch stepped on
    rows: int = 0
    trainable_params: int = 0

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def ok(self) -> bool:
        return self.ran and not self.failed


def run(cfg: Config, gpu_memory: int | None = None, gpus: int = 1) -> DryRunResult:
    """Check, estimate and step once; never writes to disk."""
    checks = validate.run(cfg).checks
    result = DryRunResult(checks=checks, estimate=estimate_memory(cfg, gpus=gpus, gpu_memory=gpu_memory), ran=False)
    if result.failed or result.estimate.fits is False:
        return result
    if not cfg.train.data and not DataDir(Path(cfg.data.output_dir)).is_prepared():
        raise SftpipeError(f"{cfg.data.output_dir}: not prepared; `sftpipe prepare` it before `train --dry-run` (the "
                           "step runs on the largest micro-batch of the prepared data)")
    device = pick_device(cfg.train.device)
    if cfg.train.auto_batch:  # the batch training would choose (without the CUDA probe)
        cfg = resolve_auto_batch(cfg, gpu_memory or device_memory(device), gpus=gpus, cuda=device.type == "cuda")[0]
    tc = cfg.train
    torch.manual_seed(tc.seed)
    tokenizer = load_tokenizer(cfg.model)
    model = build_trainable_model(cfg, device)
    result.trainable_params = count_parameters(model)[0]
    loss_model = CausalLMLoss(model, tc.cross_entropy, tc.loss_chunk_tokens, compile=tc.compile)
    # the train data the run would read: data.output_dir, or the train.data mix of several dirs
    data = open_train_data(cfg, tokenizer, cfg.model.tokenizer or cfg.model.name_or_path)
    store = data.store
    attention = resolve_attn(cfg.model.attn_implementation, device)
    if tc.packing:
        attention = packed_attention(loss_model.causal_lm(), cfg.model.attn_implementation, attention,
                                     int(store.lengths.max()))
    batch = largest_micro_batch(cfg, store, tokenizer.pad_token_id, data.max_length,
                                flat=attention in VARLEN_ATTENTION)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tc.lr)
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.inputs.items()}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.synchronize(device)
    model.train()
    started = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.precision == "bf16"):
        loss = loss_model(**inputs)
    loss.backward()
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        result.peak_bytes, result.peak_kind = torch.cuda.max_memory_allocated(device), "CUDA max_memory_allocated"
    else:
        result.peak_bytes = peak_rss_bytes()
        result.peak_kind = "process peak RSS (Python, libraries and data included)"
    result.step_s = time.perf_counter() - started
    result.loss = float(loss.detach()) / max(int((inputs["labels"][:, 1:] != -100).sum()), 1)
    result.tokens, result.rows = batch.slots, int(inputs["input_ids"].shape[0])
    result.ran = True
    return result

