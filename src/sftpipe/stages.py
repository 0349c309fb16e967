"""The train stage as the CLI, the demo and tests run it: the loop with evaluate's validation and in-training eval;
and the eval stage on a run's model, which adds its figures to the run's model card, trackers and report.

train imports nothing from evaluate (its loop receives evaluation as callables, see `train.evaluators`);
this module, above both, joins them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from datasets import Dataset

from sftpipe.config.schema import Config
from sftpipe.contracts.data_dir import DataDir
from sftpipe.contracts.run_dir import RunDir, read_eval_figures
from sftpipe.evaluate import run as evaluate_run
from sftpipe.evaluate.in_training import TrainingEval
from sftpipe.evaluate.metrics import combine_loss, evaluate_loss
from sftpipe.evaluate.result import EvalResult
from sftpipe.export.model_card import CARD, add_eval_section
from sftpipe.models.loss import LossMetrics
from sftpipe.train import loop
from sftpipe.train.evaluators import Evaluators
from sftpipe.train.run_report import write_run_report
from sftpipe.train.trackers import log_eval


log = logging.getLogger(__name__)


def train(cfg: Config, resume: str = "auto", resume_force: bool = False,
          on_figures: Callable[[int, dict[str, float], bool], None] | None = None) -> loop.TrainResult:
    """Train as configured, validating on the val split and evaluating generation as `cfg` says.

    Args:
        resume: auto (newest usable complete checkpoint, if any), never, or a checkpoint path.
        resume_force: resume even from a checkpoint made with other settings, data or model.
        on_figures: called with each validation's figures (see `Evaluators.on_figures`); HPO prunes there.
    """
    def evaluators(cfg: Config, tokenizer: Any, accelerator: Accelerator) -> Evaluators:
        return replace(training_evaluators(cfg, tokenizer, accelerator), on_figures=on_figures)

    return loop.run(cfg, evaluators, resume=resume, resume_force=resume_force)


def evaluate(cfg: Config, model_path: str, output_dir: str | None = None) -> EvalResult:
    """`eval` of one model; when it is a run's final model evaluated into the run's eval/, the model card
    (final/README.md) and the run's trackers (TensorBoard, W&B, MLflow runs of its training) gain the eval
    figures, and the run's report.html is written again with them."""
    result = evaluate_run.run(cfg, model_path, output_dir)
    run = evaluated_run(model_path, result)
    if run is not None:
        figures = read_eval_figures(run.eval)
        if figures is not None and (run.final / CARD).is_file():
            add_eval_section(run.final / CARD, figures)
        if figures is not None:
            try:
                log_eval(run, figures)
            except Exception as exc:  # noqa: BLE001 - the eval is done and saved; a tracker's trouble is said
                log.warning("eval figures not added to the run's trackers (%s: %s)", type(exc).__name__, exc)
        write_run_report(run)
    return result


def evaluated_run(model_path: str, result: EvalResult) -> RunDir | None:
    """The run whose final model `model_path` is, when `result` was written into that run's eval/."""
    run = RunDir.of_model(model_path)
    return run if run is not None and result.output_dir.resolve() == run.eval.resolve() else None


def training_evaluators(cfg: Config, tokenizer: Any, accelerator: Accelerator) -> Evaluators:
    """Loss on the data dir's val split (none when it is empty) and the in-training eval (`eval.during_training`).

    A `train.data` mix validates on every dir's val split: `val_loss/<name>` per dir, and `val_loss` over all
    of them together (token-weighted, whatever the mix weights).
    """
    generation = TrainingEval.create(cfg, tokenizer, accelerator)  # None unless on, and on the main process
    if cfg.train.data:
        splits = {entry.label: DataDir(Path(entry.dir)).load_split("val") for entry in cfg.train.data}
    else:
        splits = {"": DataDir(Path(cfg.data.output_dir)).load_split("val")}
    splits = {name: val for name, val in splits.items() if len(val)}
    if not splits:
        return Evaluators(generation=generation)

    def loss_on(model: torch.nn.Module, val: Dataset) -> LossMetrics:
        return evaluate_loss(model, val, cfg.eval.batch_size, tokenizer.pad_token_id, accelerator.device,
                             accelerator.process_index, accelerator.num_processes,
                             reduce=lambda t: accelerator.reduce(t, "sum"))

    def validate(model: torch.nn.Module) -> LossMetrics:
        if not cfg.train.data:
            return loss_on(model, splits[""])
        return combine_loss({name: loss_on(model, val) for name, val in splits.items()})

    return Evaluators(validate, generation)
