"""The `train` stage: one compact loop on accelerate for full fine-tuning and LoRA.

Reads the data dir written by `prepare` (refusing one made with another tokenizer), writes a run dir:
config.yaml, run_manifest.json, checkpoints/, final/, logs/metrics.jsonl + the trackers' files, report.html.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from transformers import get_scheduler

from sftpipe.config.loader import dump_config, save_config
from sftpipe.config.schema import Config, TrainConfig
from sftpipe.contracts.checkpoint import TrainerState, checkpoint_step, complete_checkpoints
from sftpipe.contracts.data_dir import DataManifest
from sftpipe.contracts.run_dir import FinalSource, RunDir
from sftpipe.data.batches.loader import MicroBatchSource, micro_batch_loader
from sftpipe.data.batches.mix import SourceTokens, mix_figures, open_train_data
from sftpipe.data.batches.plan import build_plan
from sftpipe.errors import SftpipeError
from sftpipe.models.adapters import build_trainable_model, count_parameters
from sftpipe.models.loading import load_tokenizer, pick_device, resolve_attn
from sftpipe.models.loss import LossMetrics
from sftpipe.models.varlen_attention import VARLEN_ATTENTION, packed_attention
from sftpipe.train.auto_batch import choose_batch, largest_micro_batch, probe_step
from sftpipe.train.causal_lm import CausalLMLoss, decoder_layers
from sftpipe.train.checkpoint import capture_rng, load_weights, save_checkpoint
from sftpipe.train.evaluators import BuildEvaluators, Evaluators
from sftpipe.train.faults import failpoint
from sftpipe.train.progress import progress
from sftpipe.train.resume import resume_from_latest_complete, run_fingerprint, trim_metrics
from sftpipe.train.saving import save_final, save_inference_files
from sftpipe.train.run_report import write_run_report
from sftpipe.train.trackers import (
    build_trackers,
    check_tracker_libraries,
    final_figures,
    log_run_end,
    log_run_start,
    start_trackers,
)
from sftpipe.train.sharded_checkpoint import (
    ShardedState,
    gathered_copy,
    gathered_weights,
    load_shards,
    restore_sharded_checkpoint,
    save_sharded_checkpoint,
)
from sftpipe.train.sharding import (
    RootForward,
    full_norm,
    gradient_sync,
    shard_model,
    sharding_from_launch,
)
from sftpipe.train.tracking import MetricsLogger, peak_memory_mb, write_run_manifest


log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class TrainResult:
    run_dir: Path
    steps: int
    final_dir: Path
    train_loss: float
    val: LossMetrics | None
    val_before: LossMetrics | None
    trainable_params: int
    total_params: int
    tokens_per_s: float  # real tokens per second spent in training steps (see Throughput)
    wall_s: float  # the whole run: setup, validation and saving included
    resumed_from: Path | None
    final: FinalSource  # which step's weights final/ holds
    packing_efficiency: float = float("nan")  # real tokens / token slots of the batches this run trained on
    main_process: bool = True  # False on the other processes of a multi-process launch (they print nothing)


@dataclass(kw_only=True)
class Session:
    """What one training run holds, built by `setup`; a resumed run builds the same from its checkpoint."""

    cfg: Config
    accelerator: Accelerator
    run_dir: RunDir
    manifest: DataManifest
    tokenizer: Any
    model: torch.nn.Module  # the bare model (plain or peft): saving
    eval_model: torch.nn.Module  # what validation calls: the bare model, or its forward through the FSDP root
    loss_model: torch.nn.Module  # the model plus its loss, as prepared by accelerate: training
    optimizer: torch.optim.Optimizer
    scheduler: Any
    source: MicroBatchSource
    total_micro: int
    total_steps: int
    fingerprint: dict
    state: TrainerState
    resumed_from: Path | None
    logger: MetricsLogger
    trainable: int
    total: int
    source_tokens: SourceTokens | None = None  # train tokens per data dir of a train.data mix
    sharded: ShardedState | None = None  # set when train.sharding is fsdp


class Throughput:
    """Real tokens, token slots and trained tokens over the seconds spent in training steps, since the last log
    line and since this process started.

    Only the steps' own time counts (fetching the batches, forward, backward, optimizer): validation,
    in-training eval and checkpoints between steps would otherwise lower the figures of whichever step
    follows them, and the run's figure by however long they took.
    """

    def __init__(self):
        self.run_real = self.run_slots = 0
        self.run_seconds = 0.0
        self._reset()

    def _reset(self) -> None:
        self.real = self.slots = self.trained = 0
        self.seconds = 0.0

    def add(self, real: int, slots: int, trained: int, seconds: float) -> None:
        """Count one optimizer step that took `seconds`."""
        self.real, self.slots, self.trained = self.real + real, self.slots + slots, self.trained + trained
        self.seconds += seconds
        self.run_real, self.run_slots = self.run_real + real, self.run_slots + slots
        self.run_seconds += seconds

    def take(self) -> dict[str, float]:
        """The figures of the steps since the last call, for a log line; starts a new window."""
        figures = {"tokens_per_s": self.real / self.seconds if self.seconds > 0 else 0.0,
                   "trained_tokens_per_s": self.trained / self.seconds if self.seconds > 0 else 0.0,
                   "packing_efficiency": self.real / self.slots if self.slots else 1.0}
        self._reset()
        return figures

    @property
    def run_tokens_per_s(self) -> float:
        """Real tokens per second of training step of this process's run (a resumed run: since it resumed)."""
        return self.run_real / self.run_seconds if self.run_seconds > 0 else 0.0

    @property
    def run_efficiency(self) -> float:
        return self.run_real / self.run_slots if self.run_slots else float("nan")


# accelerate's own sharding plugins. sftpipe shards with FSDP2 itself (train/sharding.py) and reads an FSDP launch
# from the environment before the Accelerator is built, so none of these should reach it; if one does (a
# launcher that sets it another way), the model would be wrapped by accelerate, not by sftpipe.
ACCELERATE_SHARDING = frozenset({"FSDP", "DEEPSPEED", "MEGATRON_LM"})


def check_distribution(distributed_type: str) -> None:
    """Refuse an Accelerator that set up its own sharding plugin (see ACCELERATE_SHARDING)."""
    if distributed_type in ACCELERATE_SHARDING:
        raise SftpipeError(
            f"accelerate is set up for {distributed_type}, which sftpipe does not let accelerate do: sftpipe "
            "shards with FSDP2 itself. Launch with `accelerate launch --config_file configs/accelerate/fsdp.yaml` "
            "(or set train.sharding: fsdp under torchrun); DeepSpeed and Megatron-LM are not supported.")


def set_cpu_threads(requested: int) -> int:
    """Set torch's CPU threads (0 keeps torch's default); warn when other jobs leave fewer cores than threads.

    OpenMP threads meet at a barrier after every operation, so one thread that the kernel deschedules for
    another job stalls the rest: with every core used, a busy machine slows training far more than the share
    of CPU the other jobs take. Returns the threads torch uses.
    """
    if requested:
        torch.set_num_threads(requested)
    threads = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0  # other jobs: this one has not started yet
    if not requested and threads > 1 and load >= 1 and threads + load > cores + 0.5:
        free = max(1, round(cores - load))
        log.warning("training on CPU with %d threads while the load average is %.1f on %d cores: other jobs are "
                    "running, and threads they deschedule stall the rest. If steps are slow, set "
                    "train.cpu_threads=%d (the cores left free).", threads, load, cores, free)
    return threads


def run(cfg: Config, evaluators: BuildEvaluators, resume: str = "auto", resume_force: bool = False
        ) -> TrainResult:
    """Train as configured.

    Args:
        evaluators: builds the run's validation and in-training eval (`sftpipe.stages.train` passes evaluate's).
        resume: auto (newest usable complete checkpoint, if any), never, or a checkpoint path.
        resume_force: resume even from a checkpoint made with other settings, data or model.
    """
    t0 = time.perf_counter()
    s = setup(cfg, resume, resume_force)
    cfg = s.cfg  # an FSDP launch sets train.sharding (see sharding_from_launch)
    evaluation = evaluators(cfg, s.tokenizer, s.accelerator)
    if cfg.train.select_best != "none" and evaluation.validate is None:
        raise SftpipeError(f"train.select_best: {cfg.train.select_best} needs validation figures, but the data dir "
                           f"{cfg.data.output_dir} has no val split; prepare one (data.split.val > 0) or set "
                           "train.select_best: none")
    val_before = evaluation.validate(s.eval_model) if evaluation.validate and s.state.step == 0 else None
    if val_before is not None:
        s.logger.log(0, val_before.as_dict("val_"))
    step_loss, last_val, throughput = train_steps(s, evaluation)
    final_dir = s.run_dir.final
    final = final_source(cfg.train, s.state)
    # every process looks the best checkpoint up (the run dir is on a filesystem all see): one that raised alone
    # would leave the others waiting for it in the next collective
    best = checkpoint_at(s.run_dir, final.step) if final.step != s.state.step else None
    if s.sharded is not None:
        if best is not None:
            load_shards(best, s.sharded, optimizer=False)
        weights = gathered_weights(s.model)  # every process takes part; the main process gets them
        if s.accelerator.is_main_process:
            save_final(final_dir, s.model, s.tokenizer, s.manifest, cfg, state_dict=weights)
            s.run_dir.write_manifest(s.run_dir.manifest.model_copy(update={"final": final}))
    elif s.accelerator.is_main_process:
        model = s.accelerator.unwrap_model(s.model)
        if best is not None:  # training is over: the model may take the best checkpoint's weights
            load_weights(best, model)
        save_final(final_dir, model, s.tokenizer, s.manifest, s.cfg)
        s.run_dir.write_manifest(s.run_dir.manifest.model_copy(update={"final": final}))
    if s.accelerator.is_main_process:
        log_run_end(s.accelerator.trackers, final_figures(final, s.state.step, last_val))
        write_run_report(s.run_dir)
    # The DDP wrapper's reducer must be gone before end_training destroys the process group: freed after it,
    # its gloo group's destructor can deadlock and the process never exits (seen with 2 CPU processes).
    s.loss_model = None
    s.accelerator.free_memory()
    s.accelerator.end_training()
    wall = time.perf_counter() - t0
    return TrainResult(run_dir=s.run_dir.path, steps=s.state.step, final_dir=final_dir, train_loss=step_loss,
                       val=last_val, val_before=val_before, trainable_params=s.trainable, total_params=s.total,
                       tokens_per_s=throughput.run_tokens_per_s, wall_s=wall, resumed_from=s.resumed_from,
                       final=final, packing_efficiency=throughput.run_efficiency,
                       main_process=s.accelerator.is_main_process)


# The validation figure that ranks checkpoints (retention keeps the best one; train.select_best may put its
# weights in final/) and whether lower is better. A figure offered by train.select_best needs its line here.
LOWER_IS_BETTER = {"val_loss": True}


def ranking_metric(tc: TrainConfig) -> str:
    return "val_loss" if tc.select_best == "none" else tc.select_best


def note_best(state: TrainerState, figures: Mapping[str, float | int], metric: str) -> None:
    """Record the current step as the best checkpoint if its `metric` beats the best so far."""
    value = float(figures[metric])
    best = state.best_val_loss
    if best is None or (value < best if LOWER_IS_BETTER[metric] else value > best):
        state.best_val_loss, state.best_step = value, state.step


def final_source(tc: TrainConfig, state: TrainerState) -> FinalSource:
    """The step whose weights final/ holds: the last one, or the best checkpoint under train.select_best."""
    if tc.select_best == "none" or state.best_step is None:
        return FinalSource(step=state.step, selected_by="last")
    return FinalSource(step=state.best_step, selected_by=tc.select_best, value=state.best_val_loss)


def checkpoint_at(run_dir: RunDir, step: int) -> Path:
    """The complete checkpoint of `step` (retention always keeps the best one)."""
    for ckpt in complete_checkpoints(run_dir.path):
        if checkpoint_step(ckpt) == step:
            return ckpt
    raise SftpipeError(f"{run_dir.checkpoints}: no complete checkpoint of step {step}, the best one for "
                       "train.select_best (retention keeps it: was it deleted by hand?); final/ is not written. "
                       "Restore it, or set train.select_best: none to keep the last step's weights")


def setup(cfg: Config, resume: str, resume_force: bool) -> Session:
    """Load data, tokenizer and model; plan the batches; resume from a checkpoint where there is one."""
    cfg = sharding_from_launch(cfg, os.environ)
    tc = cfg.train
    check_tracker_libraries(tc.report_to)
    device = pick_device(tc.device)
    run_dir = RunDir(Path(tc.output_dir))
    accelerator = Accelerator(
        cpu=device.type == "cpu",
        mixed_precision="bf16" if tc.precision == "bf16" else "no",
        log_with=build_trackers(tc, run_dir) or None,  # None: accelerate warns about an empty list
        project_dir=str(run_dir.logs),
    )
    check_distribution(accelerator.distributed_type.value)
    device = accelerator.device
    set_seed(tc.seed)
    tokenizer = load_tokenizer(cfg.model)
    data = open_train_data(cfg, tokenizer, cfg.model.tokenizer or cfg.model.name_or_path)
    manifest, store = data.manifest, data.store

    model = build_trainable_model(cfg, device)
    trainable, total = count_parameters(model)
    # The module trained is the model plus its loss (see causal_lm.py); `model` stays the bare model for
    # validation and saving.
    loss_model = CausalLMLoss(model, tc.cross_entropy, tc.loss_chunk_tokens, compile=tc.compile)
    attention = resolve_attn(cfg.model.attn_implementation, device)
    if tc.packing:
        attention = packed_attention(loss_model.causal_lm(), cfg.model.attn_implementation, attention,
                                     int(store.lengths.max()))
    # The CUDA probe runs one process's unsharded model: under FSDP the estimate (which shards) decides alone.
    probe = None if tc.sharding == "fsdp" else probe_step(
        loss_model, 2 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad),
        lambda rows: largest_micro_batch(cfg, store, tokenizer.pad_token_id, data.max_length,
                                         attention in VARLEN_ATTENTION, rows), device)
    cfg, auto = choose_batch(cfg, run_dir, device, accelerator.num_processes, probe=probe)
    tc = cfg.train
    speed = {"cross_entropy": loss_model.cross_entropy, "attention": attention, "compile": tc.compile,
             "sharding": tc.sharding, **({"auto_batch": auto.model_dump()} if auto else {})}
    if tc.sharding == "fsdp":  # before the optimizer: sharding replaces the parameters
        shard_model(loss_model, decoder_layers(loss_model.causal_lm()), cfg, device, accelerator.num_processes)
    optimizer = torch.optim.AdamW(
        _param_groups(model, tc.weight_decay), lr=tc.lr, betas=tc.adam_betas, foreach=device.type == "cuda"
    )
    if device.type == "cpu":
        speed["cpu_threads"] = set_cpu_threads(tc.cpu_threads)
    plan, layout = build_plan(tc, store.lengths, data.max_length, accelerator.num_processes,
                              accelerator.process_index, flat=attention in VARLEN_ATTENTION)
    total_micro = tc.max_steps * tc.grad_accum if tc.max_steps else math.ceil(tc.epochs * plan.micro_batches_per_epoch)
    total_steps = math.ceil(total_micro / tc.grad_accum)
    scheduler = build_scheduler(tc, optimizer, total_steps)
    sharded = None
    if tc.sharding == "fsdp":  # accelerate must not wrap the sharded model (in DDP): it only gets the optimizer
        optimizer = accelerator.prepare(optimizer)
        sharded = ShardedState(loss_model=loss_model, model=model, optimizer=optimizer, scheduler=scheduler)
    else:
        loss_model, optimizer = accelerator.prepare(loss_model, optimizer)

    fingerprint = run_fingerprint(cfg, data.fingerprint_dirs, manifest.tokenizer.sha256, accelerator.num_processes)
    state, resumed_from = resume_from_latest_complete(
        run_dir.path, resume, fingerprint, resume_force, accelerator.unwrap_model(model), optimizer, scheduler,
        warn=lambda msg: accelerator.print(f"warning: {msg}", file=sys.stderr),
        process_index=accelerator.process_index,
        restore=None if sharded is None else (
            lambda ckpt: restore_sharded_checkpoint(ckpt, sharded, accelerator.process_index)))

    run_dir.path.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        # what a killed run logged after its last checkpoint is logged again from here on
        trim_metrics(run_dir.metrics, state.step if resumed_from else -1)
        save_config(cfg, run_dir.config)
        write_run_manifest(run_dir, cfg, manifest, accelerator.num_processes, str(device))
        if data.mix is not None:
            run_dir.write_manifest(run_dir.manifest.model_copy(update={"data_mix": data.mix}))
    start_trackers(accelerator, tc)  # on the main process only
    if accelerator.is_main_process:
        log_run_start(accelerator.trackers, cfg, manifest, run_dir)
    logger = MetricsLogger(run_dir.metrics, accelerator, enabled=accelerator.is_main_process)
    if auto is not None and accelerator.is_main_process:  # what auto batch sizes chose, for the resumed run
        run_dir.write_manifest(run_dir.manifest.model_copy(update={"batch": auto}))
    if state.step == 0:  # once per run: a resumed run must not log it again (resumed logs equal uninterrupted)
        logger.log(0, {"speed": {**layout.describe(), **speed}})
        if data.mix is not None:
            logger.log(0, {"data_mix": mix_figures(data.mix)})
    return Session(cfg=cfg, accelerator=accelerator, run_dir=run_dir, manifest=manifest, tokenizer=tokenizer,
                   model=model, eval_model=model if sharded is None else RootForward(loss_model),
                   loss_model=loss_model, optimizer=optimizer, scheduler=scheduler,
                   source=MicroBatchSource(plan, layout, store, tokenizer.pad_token_id), total_micro=total_micro,
                   total_steps=total_steps, fingerprint=fingerprint, state=state, resumed_from=resumed_from,
                   logger=logger, trainable=trainable, total=total, sharded=sharded,
                   source_tokens=SourceTokens(plan, accelerator.num_processes, store, data.names) if data.mix else None)


# transformers' "constant" schedule ignores num_warmup_steps; "constant_with_warmup" with 0 steps is constant.
_SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


def build_scheduler(tc: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    """The LR schedule of `tc.scheduler` after a linear warmup of `tc.num_warmup_steps(total_steps)` steps."""
    return get_scheduler(_SCHEDULES[tc.scheduler], optimizer, num_warmup_steps=tc.num_warmup_steps(total_steps),
                         num_training_steps=total_steps)


def train_steps(s: Session, evaluation: Evaluators) -> tuple[float, LossMetrics | None, Throughput]:
    """Optimizer steps from `s.state.step` to the end: log, validate, evaluate and checkpoint as configured.

    Returns:
        (loss of the last step, the last validation, the throughput of this process's steps).
    """
    tc, acc, state = s.cfg.train, s.accelerator, s.state
    gen_eval = evaluation.generation
    s.model.train()
    bar = progress(total=s.total_steps, initial=state.step, enabled=tc.progress_bar and acc.is_main_process,
                   every_s=tc.progress_every_s)
    throughput = Throughput()
    step_loss = float("nan")
    last_val = None
    batch_iter = iter(micro_batch_loader(s.source, state.micro_batch, s.total_micro, tc.num_workers,
                                         tc.pin_memory and acc.device.type == "cuda"))
    while state.step < s.total_steps:
        failpoint("train.step")
        step_started = time.perf_counter()
        micro_ids = range(state.micro_batch, min(state.micro_batch + tc.grad_accum, s.total_micro))
        micro = [next(batch_iter) for _ in micro_ids]
        loss_total, step_tokens = accumulate_gradients(s.loss_model, [mb.inputs for mb in micro], acc)
        grad_norm = acc.clip_grad_norm_(s.model.parameters(), tc.max_grad_norm) if tc.max_grad_norm else None
        s.optimizer.step()
        failpoint("train.optimizer_step")
        s.scheduler.step()
        s.optimizer.zero_grad(set_to_none=True)

        step_loss = loss_total / max(step_tokens, 1)
        local = torch.tensor([sum(mb.real_tokens for mb in micro if mb.real), sum(mb.slots for mb in micro)],
                             device=acc.device, dtype=torch.float64)
        seen, slots = (int(x) for x in acc.reduce(local, "sum").tolist())
        state.step += 1
        state.micro_batch = micro_ids.stop
        state.tokens_seen += seen
        state.trained_tokens_seen += step_tokens
        throughput.add(seen, slots, step_tokens, time.perf_counter() - step_started)
        is_last = state.step == s.total_steps
        if state.step % tc.log_every == 0 or is_last:
            figures = throughput.take()
            s.logger.log(state.step, {
                "loss": step_loss, "lr": s.scheduler.get_last_lr()[0], **figures,
                "epoch": state.micro_batch / s.source.plan.micro_batches_per_epoch,
                "grad_norm": full_norm(grad_norm),
                "tokens": state.tokens_seen, "trained_tokens": state.trained_tokens_seen,
                "peak_memory_mb": peak_memory_mb(acc.device)})
            failpoint("train.logged")
            bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{figures['tokens_per_s']:.0f}")
        bar.update(1)
        saves = bool(tc.save_every and state.step % tc.save_every == 0) or is_last
        reported: dict[str, float] = {}  # this step's validation and generation figures, for on_figures
        if (tc.eval_every and state.step % tc.eval_every == 0) or is_last:
            last_val = evaluation.validate(s.eval_model) if evaluation.validate else None
            if last_val is not None:
                reported.update(last_val.as_dict("val_"))
                s.logger.log(state.step, last_val.as_dict("val_"))
                if saves:  # the best is a checkpoint: one that is kept and can become final/
                    note_best(state, last_val.as_dict("val_"), ranking_metric(tc))
            if s.source_tokens is not None:
                s.logger.log(state.step, s.source_tokens.upto(state.micro_batch))
        generated = None
        if s.sharded is not None and generation_due(s.cfg, state.step):  # every process gathers a copy
            copy = gathered_copy(s.sharded, s.cfg, acc.device, acc.is_main_process)
            if gen_eval is not None:
                generated = gen_eval(copy)
            del copy
        elif gen_eval is not None and gen_eval.due(state.step):
            generated = gen_eval(acc.unwrap_model(s.model))
        if generated is not None:
            s.logger.log(state.step, generated)
            reported.update(generated)
        if reported and evaluation.on_figures is not None:
            evaluation.on_figures(state.step, reported, is_last)
        if saves:
            checkpoint(s)
    bar.close()
    return step_loss, last_val, throughput


def generation_due(cfg: Config, step: int) -> bool:
    """Whether in-training generation runs after `step` (known to every process: under FSDP all take part)."""
    every = cfg.eval.during_training.every
    return bool(every) and step % every == 0


def checkpoint(s: Session) -> None:
    """Save a complete checkpoint of the current step (every process's RNG; written by the main process, or by
    every process for its shard under FSDP)."""
    acc = s.accelerator
    acc.wait_for_everyone()
    rng_states = gather_object([capture_rng()])  # each process draws its own dropout masks
    if s.sharded is not None:
        tc = s.cfg.train
        save_sharded_checkpoint(
            s.run_dir.path, s.state, s.sharded, acc, save_limit=tc.save_total_limit, fingerprint=s.fingerprint,
            config_text=dump_config(s.cfg), rng_states=rng_states, digests=tc.checkpoint_digests,
            inference_files=lambda out: save_inference_files(out, s.model, s.tokenizer, s.manifest, s.cfg))
        return
    if acc.is_main_process:
        tc = s.cfg.train
        model = acc.unwrap_model(s.model)

        def inference_files(out: Path) -> None:  # so eval, infer and merge can use the checkpoint as final/
            save_inference_files(out, model, s.tokenizer, s.manifest, s.cfg)

        save_checkpoint(s.run_dir.path, s.state, model, s.optimizer, s.scheduler, tc.save_total_limit, s.fingerprint,
                        dump_config(s.cfg), rng_states, digests=tc.checkpoint_digests, inference_files=inference_files)
    acc.wait_for_everyone()


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
        with gradient_sync(model, accelerator, sync), accelerator.autocast():
            loss_sum = model(**batch)
            # DDP and FSDP average gradients over ranks; scaling by world size turns that into a global token sum.
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
