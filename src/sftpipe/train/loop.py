"""The `train` stage: one compact loop on accelerate for full fine-tuning and LoRA.

Reads the data dir written by `prepare` (refusing one made with another tokenizer), writes a run dir:
config.yaml, run_manifest.json, checkpoints/, final/, logs/metrics.jsonl + TensorBoard events.
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from sftpipe.config.loader import dump_config, save_config
from sftpipe.config.schema import Config
from sftpipe.data.writer import load_split, read_manifest
from sftpipe.errors import SftpipeError
from sftpipe.evaluate.in_training import TrainingEval
from sftpipe.evaluate.metrics import LossMetrics, evaluate_loss
from sftpipe.faults import failpoint
from sftpipe.models.adapters import build_trainable_model, count_parameters
from sftpipe.models.loading import load_tokenizer, pick_device, resolve_attn, tokenizer_sha256
from sftpipe.models.varlen_attention import VARLEN_ATTENTION, packed_attention
from sftpipe.train.causal_lm import CausalLMLoss
from sftpipe.train.checkpoint import capture_rng, save_checkpoint
from sftpipe.train.microbatches import MicroBatchSource, TokenStore, build_plan, micro_batch_loader
from sftpipe.train.resume import resume_from_latest_complete, run_fingerprint, trim_metrics
from sftpipe.train.saving import save_final
from sftpipe.train.tracking import MetricsLogger, write_run_manifest


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    final_dir: Path
    train_loss: float
    val: LossMetrics | None
    val_before: LossMetrics | None
    trainable_params: int
    total_params: int
    tokens_per_s: float
    wall_s: float
    resumed_from: Path | None
    packing_efficiency: float = float("nan")  # real tokens / token slots of the batches this run trained on


def check_tokenizer_matches(manifest: dict, tokenizer, cfg: Config, data_dir: Path) -> None:
    """Refuse data tokenized with a different tokenizer: its ids would mean other tokens."""
    expected = manifest["tokenizer"]["sha256"]
    actual = tokenizer_sha256(tokenizer)
    if expected != actual:
        raise SftpipeError(
            f"{data_dir}/manifest.json: the data was tokenized with {manifest['tokenizer']['name_or_path']!r} "
            f"(tokenizer SHA-256 {expected[:12]}…) but model {cfg.model.tokenizer or cfg.model.name_or_path!r} "
            f"has tokenizer SHA-256 {actual[:12]}…. Re-run `sftpipe prepare` with this model's config, or set "
            "model.name_or_path to the model the data was prepared for."
        )


def run(cfg: Config, resume: str = "auto", resume_force: bool = False) -> TrainResult:
    """Train as configured.

    Args:
        resume: auto (newest usable complete checkpoint, if any), never, or a checkpoint path.
        resume_force: resume even from a checkpoint made with other settings, data or model.
    """
    t0 = time.perf_counter()
    tc = cfg.train
    device = pick_device(tc.device)
    accelerator = Accelerator(
        cpu=device.type == "cpu",
        mixed_precision="bf16" if tc.precision == "bf16" else "no",
        log_with="tensorboard",
        project_dir=str(Path(tc.output_dir) / "logs"),
    )
    device = accelerator.device
    set_seed(tc.seed)
    run_dir = Path(tc.output_dir)
    data_dir = Path(cfg.data.output_dir)
    manifest = read_manifest(data_dir)
    tokenizer = load_tokenizer(cfg.model)
    check_tokenizer_matches(manifest, tokenizer, cfg, data_dir)
    train_ds, val_ds = load_split(data_dir, "train"), load_split(data_dir, "val")
    if len(train_ds) == 0:
        raise SftpipeError(f"{data_dir}/train is empty: every record was rejected or split away (see DATA_CARD.md)")

    model = build_trainable_model(cfg, device)
    trainable, total = count_parameters(model)
    optimizer = torch.optim.AdamW(
        _param_groups(model, tc.weight_decay), lr=tc.lr, betas=tc.adam_betas, foreach=device.type == "cuda"
    )
    # The module trained is the model plus its loss (see causal_lm.py); `model` stays the bare model for
    # validation and saving.
    loss_model = CausalLMLoss(model, tc.cross_entropy, tc.loss_chunk_tokens, compile=tc.compile)
    attention = resolve_attn(cfg.model.attn_implementation, device)
    store = TokenStore(train_ds)
    if tc.packing:
        attention = packed_attention(loss_model.causal_lm(), cfg.model.attn_implementation, attention,
                                     int(store.lengths.max()))
    speed = {"cross_entropy": loss_model.cross_entropy, "attention": attention, "compile": tc.compile}
    plan, layout = build_plan(tc, store.lengths, manifest["max_length"], accelerator.num_processes,
                              accelerator.process_index, flat=attention in VARLEN_ATTENTION)
    total_micro = tc.max_steps * tc.grad_accum if tc.max_steps else math.ceil(tc.epochs * plan.micro_batches_per_epoch)
    total_steps = math.ceil(total_micro / tc.grad_accum)
    scheduler = get_scheduler(tc.scheduler, optimizer, num_warmup_steps=int(tc.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    loss_model, optimizer = accelerator.prepare(loss_model, optimizer)

    fingerprint = run_fingerprint(cfg, data_dir, manifest["tokenizer"]["sha256"], accelerator.num_processes)
    state, resumed_from = resume_from_latest_complete(
        run_dir, resume, fingerprint, resume_force, accelerator.unwrap_model(model), optimizer, scheduler,
        warn=lambda msg: accelerator.print(f"warning: {msg}", file=sys.stderr),
        process_index=accelerator.process_index)

    run_dir.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        # what a killed run logged after its last checkpoint is logged again from here on
        trim_metrics(run_dir / "logs" / "metrics.jsonl", state.step if resumed_from else -1)
        save_config(cfg, run_dir / "config.yaml")
        write_run_manifest(run_dir, cfg, manifest, accelerator.num_processes, str(device))
    accelerator.init_trackers("tensorboard")
    logger = MetricsLogger(run_dir / "logs" / "metrics.jsonl", accelerator, enabled=accelerator.is_main_process)
    if state.step == 0:  # once per run: a resumed run must not log it again (resumed logs equal uninterrupted)
        logger.log(0, {"speed": {**layout.describe(), **speed}})

    def validate() -> LossMetrics | None:
        if len(val_ds) == 0:
            return None
        return evaluate_loss(model, val_ds, cfg.eval.batch_size, tokenizer.pad_token_id, device,
                             accelerator.process_index, accelerator.num_processes,
                             reduce=lambda t: accelerator.reduce(t, "sum"))

    gen_eval = TrainingEval.create(cfg, tokenizer, accelerator)  # None unless eval.during_training.every > 0
    val_before = validate() if state.step == 0 else None
    if val_before is not None:
        logger.log(0, val_before.as_dict("val_"))

    model.train()
    bar = tqdm(total=total_steps, initial=state.step, disable=not (tc.progress_bar and accelerator.is_main_process),
               desc="train", dynamic_ncols=True)
    window_real = window_slots = window_trained = 0  # since the last log line: real tokens, token slots, trained
    run_real = run_slots = 0
    window_t = time.perf_counter()
    step_loss = float("nan")
    last_val = None
    source = MicroBatchSource(plan, layout, store, tokenizer.pad_token_id)
    batch_iter = iter(micro_batch_loader(source, state.micro_batch, total_micro, tc.num_workers,
                                         tc.pin_memory and device.type == "cuda"))
    while state.step < total_steps:
        failpoint("train.step")
        micro_ids = range(state.micro_batch, min(state.micro_batch + tc.grad_accum, total_micro))
        micro = [next(batch_iter) for _ in micro_ids]
        loss_total, step_tokens = accumulate_gradients(loss_model, [mb.inputs for mb in micro], accelerator)
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), tc.max_grad_norm) if tc.max_grad_norm else None
        optimizer.step()
        failpoint("train.optimizer_step")
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        step_loss = loss_total / max(step_tokens, 1)
        local = torch.tensor([sum(mb.real_tokens for mb in micro if mb.real), sum(mb.slots for mb in micro)],
                             device=device, dtype=torch.float64)
        seen, slots = (int(x) for x in accelerator.reduce(local, "sum").tolist())
        state.step += 1
        state.micro_batch = micro_ids.stop
        state.tokens_seen += seen
        state.trained_tokens_seen += step_tokens
        window_real, window_slots, window_trained = (window_real + seen, window_slots + slots,
                                                     window_trained + step_tokens)
        run_real, run_slots = run_real + seen, run_slots + slots
        if state.step % tc.log_every == 0 or state.step == total_steps:
            elapsed = time.perf_counter() - window_t
            tps = window_real / elapsed if elapsed > 0 else 0.0
            record = {"loss": step_loss, "lr": scheduler.get_last_lr()[0], "tokens_per_s": tps,
                      "trained_tokens_per_s": window_trained / elapsed if elapsed > 0 else 0.0,
                      "packing_efficiency": window_real / window_slots if window_slots else 1.0,
                      "epoch": state.micro_batch / plan.micro_batches_per_epoch,
                      "grad_norm": float(grad_norm) if grad_norm is not None else None,
                      "tokens": state.tokens_seen, "trained_tokens": state.trained_tokens_seen}
            logger.log(state.step, record)
            failpoint("train.logged")
            bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{tps:.0f}")
            window_real = window_slots = window_trained = 0
            window_t = time.perf_counter()
        bar.update(1)
        is_last = state.step == total_steps
        if (tc.eval_every and state.step % tc.eval_every == 0) or is_last:
            last_val = validate()
            if last_val is not None:
                logger.log(state.step, last_val.as_dict("val_"))
                if state.best_val_loss is None or last_val.loss < state.best_val_loss:
                    state.best_val_loss, state.best_step = last_val.loss, state.step
        if gen_eval is not None and gen_eval.due(state.step):
            logger.log(state.step, gen_eval(accelerator.unwrap_model(model)))
        if (tc.save_every and state.step % tc.save_every == 0) or is_last:
            accelerator.wait_for_everyone()
            rng_states = gather_object([capture_rng()])  # each process draws its own dropout masks
            if accelerator.is_main_process:
                save_checkpoint(run_dir, state, accelerator.unwrap_model(model), optimizer, scheduler,
                                tc.save_total_limit, fingerprint, dump_config(cfg), rng_states,
                                digests=tc.checkpoint_digests)
            accelerator.wait_for_everyone()
    bar.close()

    final_dir = run_dir / "final"
    if accelerator.is_main_process:
        save_final(final_dir, accelerator.unwrap_model(model), tokenizer, manifest, cfg)
    accelerator.end_training()
    wall = time.perf_counter() - t0
    return TrainResult(run_dir, state.step, final_dir, step_loss, last_val, val_before, trainable, total,
                       state.tokens_seen / wall if wall else 0.0, wall, resumed_from,
                       run_real / run_slots if run_slots else float("nan"))


def accumulate_gradients(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], accelerator: Accelerator
                         ) -> tuple[float, int]:
    """Forward/backward every micro-batch of one optimizer step; gradients end up as the step's token mean.

    `model` is a `CausalLMLoss` (as prepared by accelerate): its forward returns a micro-batch's loss sum.

    The loss of each micro-batch is its token SUM divided by the supervised tokens of the whole step on all
    ranks, so the accumulated gradient equals that of one big batch however the step is split into
    micro-batches and ranks (not a mean of micro-batch means, which over-weights short answers).

    Returns:
        (summed loss over all ranks, supervised tokens over all ranks).
    """
    device = accelerator.device
    local_tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
    step_tokens = int(accelerator.reduce(torch.tensor(local_tokens, device=device), "sum"))
    loss_total = torch.zeros((), device=device, dtype=torch.float64)
    for i, batch in enumerate(batches):
        batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        sync = i == len(batches) - 1
        with (nullcontext() if sync else accelerator.no_sync(model)), accelerator.autocast():
            loss_sum = model(**batch)
            # DDP averages gradients over ranks; scaling by world size turns that into a global token sum.
            loss = loss_sum * accelerator.num_processes / max(step_tokens, 1)
            accelerator.backward(loss)
        loss_total += loss_sum.detach().double()
    return float(accelerator.reduce(loss_total, "sum")), step_tokens


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and norm weights (1-D tensors), as is standard for transformers."""
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
