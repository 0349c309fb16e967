"""The train stage as the CLI, the demo and tests run it: the loop with evaluate's validation and in-training eval.

train imports nothing from evaluate (its loop receives evaluation as callables, see `train.evaluators`);
this module, above both, joins them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from datasets import Dataset

from sftpipe.config.schema import Config
from sftpipe.contracts.data_dir import DataDir
from sftpipe.evaluate.in_training import TrainingEval
from sftpipe.evaluate.metrics import combine_loss, evaluate_loss
from sftpipe.models.loss import LossMetrics
from sftpipe.train import loop
from sftpipe.train.evaluators import Evaluators


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
