"""In-training eval: greedy generation (+ execution of problems with tests) on the first few val prompts
every `eval.during_training.every` optimizer steps, logged next to the loss as `gen_*` figures.

It runs on the main process with the unwrapped model, in its own RNG stream (the training RNG is left
as it was, so runs with and without it train identically). Under sftpipe's FSDP (train.sharding: fsdp) the
loop hands it a whole copy gathered on the main process, so the model must fit one device.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from sftpipe.config.schema import Config
from sftpipe.contracts.data_dir import DataDir
from sftpipe.errors import SftpipeError
from sftpipe.evaluate.execution.executor import Executor
from sftpipe.evaluate.generation import DecodingSettings
from sftpipe.evaluate.problems import EvalItem, items_from_split, unique_ids
from sftpipe.evaluate.suite import make_executor, run_suite


class TrainingEval:
    """Call with the model every `every` steps (see `due`); returns the figures to log."""

    def __init__(self, cfg: Config, tokenizer: PreTrainedTokenizerBase, items: list[EvalItem],
                 executor: Executor | None, skipped: str | None):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.items = items
        self.executor = executor
        self.skipped = skipped
        self.every = cfg.eval.during_training.every

    @classmethod
    def create(cls, cfg: Config, tokenizer: PreTrainedTokenizerBase, accelerator) -> "TrainingEval | None":
        """The hook for this run, or None when it is off, this is not the main process, or val is empty."""
        settings = cfg.eval.during_training
        if not settings.every or not accelerator.is_main_process:
            return None
        if accelerator.distributed_type.value in ("FSDP", "DEEPSPEED"):
            raise SftpipeError("eval.during_training.every > 0 needs the whole model on one process; it is not "
                               "supported with FSDP or DeepSpeed. Set it to 0 and run `sftpipe eval` on checkpoints.")
        items = unique_ids(items_from_split(Path(cfg.data.output_dir), "val", cfg.eval.code.language)[0])
        items = items[: settings.max_prompts]
        if not items:
            return None
        executor, skipped = make_executor(cfg.eval.code, items)
        # Prompt with the template the data was rendered with (the base tokenizer may carry another one).
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.chat_template = DataDir(Path(cfg.data.output_dir)).manifest.template.text
        return cls(cfg, tokenizer, items, executor, skipped)

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def __call__(self, model) -> dict[str, float]:
        start = time.perf_counter()
        decoding = DecodingSettings(self.cfg.eval.during_training.max_new_tokens, 1, 0.0,
                                    batch_size=self.cfg.eval.generation.batch_size)
        suite = run_suite(model, self.tokenizer, self.items, decoding, self.cfg.eval.code, self.executor, self.skipped)
        g = suite.generation
        figures = {"gen_length_mean": g.length_mean, "gen_ended_with_eos": g.ended_with_eos,
                   "gen_distinct_2": g.distinct_2, "gen_repetition_rate": g.repetition_rate}
        code = suite.code
        if code is not None and code.samples:
            figures["gen_pass@1"] = code.pass_at_k.get("pass@1", 0.0)
            figures["gen_compile_rate"] = 1.0 - code.verdicts.get("compile_error", 0) / code.samples
        figures["gen_eval_seconds"] = time.perf_counter() - start
        return figures
