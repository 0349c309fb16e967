"""What the loop evaluates between optimizer steps, handed in by whoever runs it.

Validation loss and in-training generation are the eval stage's code, and train imports nothing from
evaluate: the caller above both (`sftpipe.stages`) builds them and passes them to `loop.run`. The loop
decides when they run and logs what they return.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from accelerate import Accelerator

from sftpipe.config.schema import Config
from sftpipe.models.loss import LossMetrics


class GenerationEval(Protocol):
    """Generation (and execution) on a few val prompts every few steps; returns the figures to log."""

    def due(self, step: int) -> bool: ...

    def __call__(self, model: torch.nn.Module) -> dict[str, float]: ...


@dataclass(frozen=True)
class Evaluators:
    """The evaluations of one run; None where it has none (no val split, turned off, not the main process)."""

    # Loss on the val split of the bare model, on every process (it reduces over them): before the first step,
    # every train.eval_every steps and after the last one.
    validate: Callable[[torch.nn.Module], LossMetrics] | None = None
    # Called on the main process with the unwrapped model after every step it says is `due`.
    generation: GenerationEval | None = None
    # Called with (step, the figures of that step's validation and generation, whether it is the last step)
    # after they are logged, before the step's checkpoint. An HPO pruner raises here to stop a trial: the
    # exception leaves `loop.run` with the run dir as a kill would (complete checkpoints, no final/).
    # Single-process runs only: raised on one process, it would leave the others waiting at a collective.
    on_figures: Callable[[int, dict[str, float], bool], None] | None = None


# Builds a run's evaluators once the loop has set up: (config, tokenizer, accelerator) -> Evaluators.
BuildEvaluators = Callable[[Config, Any, Accelerator], Evaluators]
