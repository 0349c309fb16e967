"""Typed configuration: one model per config section, unknown keys are errors.

Every field carries its help text in `description`, which `sftpipe show-config --help-fields` prints with
the field's type and default (see `fields.py`), so the schema is the single source of documentation for
the config file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from sftpipe.config.base import Section
from sftpipe.config.data_sections import DecontamConfig, DedupConfig, FilterConfig, MixConfig
from sftpipe.config.verify_section import VerifyConfig
from sftpipe.config.hpo_section import HpoConfig


class QuantizationConfig(Section):
    bits: Literal[4, 8] = Field(4, description="Bits per frozen base weight: 4 (QLoRA, bitsandbytes Linear4bit) or 8 "
                                "(LLM.int8, Linear8bitLt; GPU only).")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type: nf4 (QLoRA's NormalFloat) or fp4.")
    double_quant: bool = Field(True, description="Quantize the 4-bit blocks' absmax constants too (~0.37 bit less "
                               "per weight).")
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype the 4-bit weights are dequantized to for each matmul. auto: model.dtype as "
        "resolved (bfloat16 on a GPU that supports it, else float32).")


class ModelConfig(Section):
    name_or_path: str = Field(
        "tiny",
        description="Hugging Face model id or local directory. The default, tiny, is where `sftpipe init-tiny` "
        "builds the embedded tiny model used by the demo and tests.",
    )
    tokenizer: str | None = Field(None, description="Tokenizer id or directory; defaults to name_or_path.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) to pin.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype when loading. auto: bfloat16 on a GPU that supports it, else float32."
    )
    attn_implementation: Literal["auto", "eager", "sdpa", "sdpa_varlen", "flash_attention_2"] = Field(
        "auto", description="Attention kernel. auto: flash_attention_2 on CUDA when flash-attn is installed, else sdpa; "
        "packed training upgrades sdpa to sdpa_varlen (one causal SDPA call per example, no mask: attention cost "
        "follows the examples' lengths, not the row's)."
    )
    trust_remote_code: bool = Field(
        False, description="Run Python code shipped with a hub model. Off by default: only enable for models you trust."
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    quantization: QuantizationConfig = Field(
        default_factory=QuantizationConfig,
        description="How train.method: qlora loads the frozen base (bitsandbytes); unused by full and lora.")


class SourceConfig(Section):
    path: str | None = Field(None, description="File (json, jsonl, csv, parquet, txt) or local dataset directory.")
    hf_dataset: str | None = Field(None, description="Dataset name for datasets.load_dataset (hub or local script).")
    hf_config: str | None = Field(None, description="Dataset config name for hf_dataset.")
    hf_split: str = Field("train", description="Split of hf_dataset to read.")
    format: Literal["auto", "alpaca", "messages", "sharegpt", "qa", "prompt_completion", "text", "code"] = Field(
        "auto", description="Record format; auto detects it from the fields of the first record."
    )
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="Map canonical field names to the names in your data, e.g. {instruction: prompt, output: answer}.",
    )
    name: str | None = Field(None, description="Source name used in reports; defaults to the file name.")
    system_prompt: str | None = Field(None, description="System message added to every record of this source.")
    code_language: str = Field("haskell", description="Language of `code` records (used by the instruction template).")
    weight: float | None = Field(None, gt=0, description="Mixing weight of this source in the train split (see "
                                 "data.mix); set it on every source or on none.")
    syntax_check: Literal["none", "python", "haskell"] = Field(
        "none", description="Keep only records whose code (fenced blocks of the response, or the whole response) "
        "passes a syntax check: python (ast.parse, fast) or haskell (ghc -fno-code, ~0.3 s per record, needs ghc).",
    )
    verify: Literal["none", "tests"] = Field(
        "none", description="tests: run each record's solution (its response's code, in code_language) against "
        "the record's own `tests` with eval.code's runners, sandbox and verdict cache; keep the passing ones, "
        "reject the others with their verdict (verify_wrong_answer, ...). See data.verify.",
    )

    @model_validator(mode="after")
    def _one_location(self) -> "SourceConfig":
        if (self.path is None) == (self.hf_dataset is None):
            raise ValueError("give exactly one of `path` or `hf_dataset`")
        return self

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        return Path(self.path).name if self.path else str(self.hf_dataset)


class SplitConfig(Section):
    train: float = Field(0.8, ge=0, le=1, description="Fraction of records in the train split.")
    val: float = Field(0.1, ge=0, le=1, description="Fraction of records in the validation split.")
    test: float = Field(0.1, ge=0, le=1, description="Fraction of records in the test split.")
    seed: int = Field(1234, description="Seed of the deterministic split.")

    @model_validator(mode="after")
    def _sums_to_one(self) -> "SplitConfig":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1.0, got {total:g}")
        return self


class DataConfig(Section):
    sources: list[SourceConfig] = Field(default_factory=list, description="Input datasets.")
    output_dir: str = Field("data/prepared", description="Where `prepare` writes the data dir; `train` reads it.")
    template: Literal["tokenizer", "chatml", "instruct", "chat", "alpaca", "custom"] = Field(
        "chatml", description="Chat template used to render conversations."
    )
    custom_template: str | None = Field(None, description="Jinja chat template, required when template is custom.")
    system_prompt: str | None = Field(None, description="System message added to records that have none.")
    max_length: int = Field(1024, gt=8, description="Maximum tokens per example.")
    overlong: Literal["drop", "truncate"] = Field(
        "drop", description="What to do with examples longer than max_length. Both are counted and reported."
    )
    on_error: Literal["skip", "raise"] = Field(
        "skip", description="skip: reject bad records (counted, written to rejected.jsonl); raise: stop at the first."
    )
    split: SplitConfig = Field(default_factory=SplitConfig)
    filters: FilterConfig = Field(default_factory=FilterConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    decontam: DecontamConfig = Field(default_factory=DecontamConfig)
    mix: MixConfig = Field(default_factory=MixConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    num_proc: int = Field(0, ge=0, description="Worker processes for prepare; 0: one per available CPU core.")
    shard_size: int = Field(50_000, gt=0, description="Examples per Arrow shard file of each split.")

    @model_validator(mode="after")
    def _custom_needs_template(self) -> "DataConfig":
        if self.template == "custom" and not self.custom_template:
            raise ValueError("template is custom but custom_template is empty: give a Jinja chat template")
        return self

    @model_validator(mode="after")
    def _weights_all_or_none(self) -> "DataConfig":
        unweighted = [f"sources[{i}]" for i, s in enumerate(self.sources) if s.weight is None]
        if unweighted and len(unweighted) < len(self.sources):
            raise ValueError(f"mixing needs a weight on every source; {', '.join(unweighted)} has none")
        return self


class LoraConfig(Section):
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: int = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r, or alpha / sqrt(r) with "
                       "use_rslora).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or all-linear for every linear layer but the LM head."
    )
    use_dora: bool = Field(False, description="DoRA: learn a magnitude per output feature besides the LoRA "
                           "direction (PEFT's use_dora; slower steps, merges like LoRA).")
    use_rslora: bool = Field(False, description="rsLoRA: scale by alpha / sqrt(r) instead of alpha / r, which keeps "
                             "high ranks learning (PEFT's use_rslora).")
    modules_to_save: list[str] = Field(
        default_factory=list, description="Modules trained in full and saved with the adapter, e.g. [embed_tokens, "
        "lm_head] when tokens were added to the vocabulary.")


class TrainDataDir(Section):
    """One prepared data dir of a train-time mix (`train.data`)."""

    dir: str = Field(description="A data dir written by `sftpipe prepare` (its own template and filters).")
    weight: float = Field(1.0, gt=0, description="Share of every epoch this dir gets, relative to the other "
                          "entries' weights (in train.mix_unit).")
    name: str | None = Field(None, description="Name in logs (val_loss/<name>, train_tokens/<name>) and the run "
                             "manifest; defaults to the dir's last path component.")

    @property
    def label(self) -> str:
        return self.name or Path(self.dir).name


class FsdpConfig(Section):
    """How FSDP2 shards the model when train.sharding is fsdp (see train/sharding.py)."""

    reshard_after_forward: bool = Field(
        True, description="Free each layer's gathered weights after its forward and gather them again for backward "
        "(ZeRO-3: least memory); false keeps them until backward (ZeRO-2 like: one all-gather less per layer).")
    cpu_offload: bool = Field(
        False, description="Keep the sharded weights, gradients and optimizer state in CPU memory and copy each "
        "layer to the GPU for its forward/backward: fits larger models, trains slower.")


class TrainConfig(Section):
    method: Literal["full", "lora", "qlora"] = Field(
        "lora", description="full fine-tune, LoRA adapters, or qlora: LoRA adapters on a base quantized as "
        "model.quantization says (bitsandbytes; pip install 'sftpipe[qlora]').")
    output_dir: str = Field("runs/sftpipe", description="Run directory: checkpoints, logs, final model.")
    epochs: float = Field(1.0, gt=0, description="Passes over the train split (ignored when max_steps > 0).")
    max_steps: int = Field(0, ge=0, description="Optimizer steps to run; 0 means use epochs.")
    micro_batch_size: int | Literal["auto"] = Field(
        4, description="Examples per forward pass (packed rows with packing). auto: the largest that fits the "
        "device's memory by the estimate (confirmed by a step on CUDA), with grad_accum chosen to keep "
        "tokens_per_step; the choice is recorded in the run manifest and reused on resume.")
    grad_accum: int = Field(1, gt=0, description="Micro-batches per optimizer step (with an auto batch size, "
                            "chosen to keep tokens_per_step: the value set here is replaced, with a log line).")
    tokens_per_step: int = Field(
        0, ge=0, description="With micro_batch_size or tokens_per_batch auto: token slots per optimizer step per "
        "device to keep (the micro-batch's tokens x grad_accum, rounded up to whole micro-batches).")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (not applied to biases and norms).")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    scheduler: Literal["linear", "cosine", "constant"] = Field("cosine", description="LR schedule after warmup.")
    warmup_ratio: float | None = Field(
        0.03, ge=0, lt=1, description="Fraction of the optimizer steps spent warming up linearly (rounded down); "
        "null when warmup_steps is set.")
    warmup_steps: int | None = Field(
        None, ge=0, description="Optimizer steps spent warming up linearly; when set, it replaces warmup_ratio "
        "(a layer that sets one of the two replaces the other from the layers below: preset < file < --set).")
    max_grad_norm: float = Field(1.0, ge=0, description="Clip the global gradient norm; 0 disables clipping.")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="Mixed precision mode.")
    eval_every: int = Field(0, ge=0, description="Validate every N optimizer steps; 0 only at the end.")
    save_every: int = Field(0, ge=0, description="Checkpoint every N optimizer steps; 0 only at the end.")
    save_total_limit: int = Field(2, ge=1, description="Complete checkpoints kept (newest and best always kept).")
    checkpoint_digests: bool = Field(
        True, description="Record the SHA-256 of every checkpoint file and verify it before resuming (sizes are "
        "always checked). Hashing reads each checkpoint once more; turn off for huge full fine-tunes.")
    log_every: int = Field(1, gt=0, description="Log metrics every N optimizer steps.")
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        ["tensorboard"], description="Trackers that get the metrics (logs/metrics.jsonl is always written), the "
        "resolved config (secrets redacted), the data summary and the run manifest: tensorboard (logs/tensorboard), "
        "wandb (pip install 'sftpipe[wandb]'; WANDB_MODE=offline writes logs/wandb only), mlflow (pip install "
        "'sftpipe[mlflow]'; MLFLOW_TRACKING_URI says where, default ./mlflow.db). none or []: no tracker.")
    run_name: str | None = Field(None, description="The run's name in the trackers; default: output_dir's name.")
    project: str = Field("sftpipe", description="W&B project and MLflow experiment the run is logged to.")
    tags: list[str] = Field([], description="Tags of the run in W&B and MLflow.")
    seed: int = Field(42, description="Seed for initialisation, dropout and shuffling.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available.")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    cpu_threads: int = Field(
        0, ge=0, description="torch threads when training on CPU; 0: torch's default (one per core). On a machine "
        "where other jobs take cores, set it to the cores left free: a thread that is descheduled stalls all the "
        "others at every operation (2 threads on 2 cores with one core busy ran 2.3x slower than 1 thread).")
    progress_bar: bool = Field(
        True, description="Show progress with loss, tokens/s and ETA: a bar on a terminal, a plain line every "
        "progress_every_s seconds when stderr is not a terminal (logs, CI).")
    progress_every_s: float = Field(
        30.0, ge=0, description="Seconds between plain progress lines when stderr is not a terminal (the first and "
        "last step always get one); 0: a line at every logged step.")
    select_best: Literal["none", "val_loss"] = Field(
        "none", description="What final/ holds. none: the last step's weights. val_loss: the weights of the "
        "checkpoint with the lowest validation loss (needs a val split and a validation at every checkpoint: "
        "eval_every must divide save_every).")
    # Speed (issue 3). Defaults keep the plain padded batches; `packing: true` is the fast path.
    packing: bool = Field(
        False, description="Pack examples best-fit-decreasing into rows of pack_length tokens; position ids restart "
        "at each example and attention never crosses examples. Same loss per example as unpacked, far less padding.")
    tokens_per_batch: int | Literal["auto"] = Field(
        0, description="auto: the largest budget that fits the device's memory (see micro_batch_size). Token budget of one micro-batch (padding included). With packing: rows per micro-batch "
        "= tokens_per_batch // pack_length (0: micro_batch_size rows). Without packing: > 0 groups examples of "
        "similar length, as many per micro-batch as fit; 0 uses micro_batch_size examples.")
    pack_length: int = Field(
        0, ge=0, description="Tokens per packed row; 0 uses data.max_length of the data dir. Must be at least the "
        "longest example: examples are never cut during training.")
    cross_entropy: Literal["auto", "chunked", "liger", "full"] = Field(
        "auto", description="Loss implementation. chunked: LM head applied to supervised positions in chunks, full "
        "logits never materialised; liger: Liger's fused kernel (CUDA, pip install 'sftpipe[liger]'); full: logits "
        "of every position. auto: liger when installed on CUDA, else chunked, else full.")
    loss_chunk_tokens: int = Field(
        0, ge=0, description="Positions per chunk of the chunked cross-entropy; 0: as many as 256 MiB of fp32 "
        "logits allow.")
    compile: bool = Field(False, description="torch.compile the decoder (first steps are slower while it compiles).")
    pin_memory: bool = Field(True, description="Pin host memory of batches for faster copies to a CUDA device.")
    data: list[TrainDataDir] = Field(
        default_factory=list, description="Train on several prepared data dirs mixed by weight, each prepared once "
        "(templates may differ; the tokenizer must be the model's). Empty: train on data.output_dir alone. An epoch "
        "is as large as all dirs together in train.mix_unit; each dir's share of it is its weight's share, small "
        "dirs repeated and large ones subsampled, deterministically from train.seed.")
    mix_unit: Literal["samples", "tokens", "trained_tokens"] = Field(
        "samples", description="What the weights of train.data share: examples, all tokens, or trained "
        "(assistant) tokens.")
    sharding: Literal["none", "fsdp"] = Field(
        "none", description="none: every process holds the whole model (DDP when launched on several). fsdp: "
        "FSDP2 shards weights, gradients and optimizer state over the processes (per decoder layer, then the rest), "
        "with sharded checkpoints; `accelerate launch` with an FSDP config means the same. Activation "
        "checkpointing is model.gradient_checkpointing; bf16 keeps weights in bf16 and reduces gradients in fp32.")
    fsdp: FsdpConfig = Field(default_factory=FsdpConfig, description="FSDP2 settings (used when sharding: fsdp).")

    @field_validator("report_to", mode="before")
    @classmethod
    def _no_tracker(cls, value: Any) -> Any:
        """`none`, [none] and a single name are accepted as they read; a name listed twice is one tracker."""
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            value = list(dict.fromkeys(value))
        return [] if value == ["none"] else value

    @model_validator(mode="before")
    @classmethod
    def _one_warmup(cls, data: Any) -> Any:
        """warmup_steps and warmup_ratio say one thing two ways: one of them is set, the other is null."""
        if not isinstance(data, dict):
            return data
        steps, ratio = data.get("warmup_steps"), data.get("warmup_ratio", 0.03)
        if steps is not None and ratio is not None and "warmup_ratio" in data:
            raise ValueError(f"warmup_steps ({steps}) and warmup_ratio ({ratio}) are both set; keep one of them")
        if steps is None and ratio is None:
            raise ValueError("warmup_steps and warmup_ratio are both null; set one of them (0 for no warmup)")
        return {**data, "warmup_ratio": None} if steps is not None else data

    @model_validator(mode="after")
    def _auto_batch(self) -> "TrainConfig":
        """auto chooses the micro-batch and grad_accum for a number of tokens per step, which must be given."""
        autos = [name for name in ("micro_batch_size", "tokens_per_batch") if getattr(self, name) == "auto"]
        for name in ("micro_batch_size", "tokens_per_batch"):
            value = getattr(self, name)
            if value != "auto" and value < (1 if name == "micro_batch_size" else 0):
                raise ValueError(f"{name} must be {'> 0' if name == 'micro_batch_size' else '>= 0'} or auto, "
                                 f"got {value}")
        if len(autos) == 2:
            raise ValueError("micro_batch_size and tokens_per_batch are both auto; set one of them to auto")
        if autos and not self.tokens_per_step:
            raise ValueError(f"{autos[0]}: auto needs tokens_per_step, the token slots per optimizer step per device "
                             "to keep (e.g. tokens_per_step: 65536)")
        return self

    @property
    def auto_batch(self) -> bool:
        return "auto" in (self.micro_batch_size, self.tokens_per_batch)

    @model_validator(mode="after")
    def _best_is_validated(self) -> "TrainConfig":
        """select_best chooses among checkpoints, so every checkpoint must have a validation figure."""
        if self.select_best != "none" and self.save_every and (
                not self.eval_every or self.save_every % self.eval_every):
            raise ValueError(
                f"select_best: {self.select_best} compares the checkpoints' validation figures, but with eval_every "
                f"{self.eval_every} and save_every {self.save_every} some checkpoints are not validated; set "
                f"eval_every to a divisor of save_every (e.g. eval_every: {self.save_every})")
        return self

    @model_validator(mode="after")
    def _mix_names_unique(self) -> "TrainConfig":
        """Names key the per-source figures and seed each dir's subsampling: two alike would mix them up."""
        labels = [d.label for d in self.data]
        twice = sorted({x for x in labels if labels.count(x) > 1})
        if twice:
            raise ValueError(f"data: the names {twice} are used by more than one entry (a name defaults to the "
                             "dir's last path component); give each entry a distinct `name`")
        return self

    def num_warmup_steps(self, total_steps: int) -> int:
        """Optimizer steps of linear warmup in a run of `total_steps`."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        assert self.warmup_ratio is not None  # _one_warmup
        return int(self.warmup_ratio * total_steps)


class ExecLimits(Section):
    compile_timeout_s: float = Field(30.0, gt=0, description="Wall-clock limit to compile one sample (a batch "
                                     "of n Haskell samples gets this + min(this, 2 s) per sample).")
    compile_memory_mb: int = Field(2048, ge=64, description="Address-space limit of the compiler process.")
    run_timeout_s: float = Field(10.0, gt=0, description="Wall-clock limit to run one sample's tests "
                                 "(CPU limit: this + 1 s); exceeding it is a timeout.")
    run_memory_mb: int = Field(1024, ge=64, description="Address-space limit of one sample's process.")
    file_size_mb: int = Field(16, gt=0, description="Largest file a sample may write (stdout/stderr included).")
    output_kb: int = Field(64, gt=0, description="stdout/stderr kept per sample for verdicts and excerpts.")


class CodeEvalConfig(Section):
    enabled: bool | Literal["auto"] = Field(
        "auto", description="Execute answers of problems that have tests. auto: skip (and say so) when the "
        "language's toolchain is missing; true: missing toolchain is an error.")
    language: Literal["haskell", "python"] = Field(
        "haskell", description="Language of problems from the prepared split or sftpipe problem files "
        "(MultiPL-E records carry their own).")
    profile: Literal["default", "multipl-e"] = Field(
        "default", description="How answers are run and judged. default: Haskell built with ghc (ghc_flags) in "
        "batches, limits.run_timeout_s, verdicts pass / wrong_answer / compile_error / runtime_error / timeout. "
        "multipl-e: as MultiPL-E, each sample is one program (answer + tests) run with `runghc` or `python "
        "prog.py` under a 15 s wall limit, judged by exit status only: pass (exit 0), runtime_error (any other "
        "exit, compile errors and failed assertions included) or timeout. Profiles never share cached verdicts.")
    k: list[int] = Field([1, 5, 10], description="k values of pass@k; those above the samples per problem are "
                         "left out.")
    sandbox: Literal["auto", "bwrap", "unshare", "none"] = Field(
        "auto", description="Isolation: bwrap (read-only system, no network, private /tmp), unshare (no "
        "network, PID namespace), none. auto: the strongest available.")
    workers: int = Field(0, ge=0, description="Parallel compile/run workers; 0: one per CPU core.")
    cache_dir: str | None = Field(
        "auto", description="Verdict cache keyed by (toolchain, flags, limits, tests, normalised code). auto: "
        "$XDG_CACHE_HOME/sftpipe/exec (~/.cache/sftpipe/exec); a directory; null disables it. Timeouts are "
        "never cached.")
    ghc: str = Field("ghc", description="GHC executable.")
    ghc_flags: list[str] = Field(["-O0"], description="Extra GHC flags (-w, -fkeep-going and, where GHC has "
                                 "shared libraries, -dynamic are added).")
    haskell_batch_size: int = Field(32, gt=0, description="Haskell samples built per compiler call.")
    python: str | None = Field(None, description="Python interpreter for Python problems; default: this one.")
    limits: ExecLimits = Field(default_factory=ExecLimits)

    @model_validator(mode="after")
    def _positive_k(self) -> "CodeEvalConfig":
        if not self.k or any(k < 1 for k in self.k):
            raise ValueError(f"k must be a non-empty list of integers >= 1, got {self.k}")
        return self


class GenerationEvalConfig(Section):
    enabled: bool = Field(True, description="Generate answers for the eval prompts (quality metrics, code "
                          "execution, report).")
    source: str = Field(
        "split", description="Prompts: `split` (eval.split of the data dir; rows with tests are code problems), "
        "a .jsonl/.json/.parquet file or dataset dir of prompts / sftpipe problems / MultiPL-E problems, or "
        "hf:NAME for datasets.load_dataset.")
    hf_config: str | None = Field(None, description="Dataset config for hf:NAME sources (e.g. humaneval-hs).")
    hf_split: str = Field("test", description="Split of hf:NAME or dataset-dir sources.")
    max_prompts: int = Field(0, ge=0, description="Use at most this many prompts (the first ones); 0: all.")
    num_samples: int = Field(1, gt=0, description="Samples per prompt (n of pass@k).")
    temperature: float = Field(0.0, ge=0, description="0: greedy decoding; > 0: sampling.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold (sampling only).")
    batch_size: int = Field(8, gt=0, description="Sequences per generate call.")
    seed: int = Field(0, description="Seed of sampling, so base and fine-tuned draw alike.")

    @model_validator(mode="after")
    def _sampling_needs_temperature(self) -> "GenerationEvalConfig":
        if self.num_samples > 1 and self.temperature == 0:
            raise ValueError("num_samples > 1 with temperature 0 gives identical greedy samples; "
                             "set temperature > 0 (e.g. 0.8) or num_samples: 1")
        return self


class TrainingEvalConfig(Section):
    every: int = Field(0, ge=0, description="Generate + execute on a subset every N optimizer steps; 0: never.")
    max_prompts: int = Field(8, gt=0, description="Prompts of the val split used each time.")
    max_new_tokens: int = Field(128, gt=0, description="Generation length limit for in-training eval.")


class EvalConfig(Section):
    split: Literal["val", "test"] = Field("test", description="Prepared split to evaluate on.")
    batch_size: int = Field(8, gt=0, description="Examples per forward pass during evaluation.")
    max_new_tokens: int = Field(256, gt=0, description="Generation length limit.")
    loss: bool = Field(True, description="Teacher-forced loss, perplexity and accuracies on the prepared split.")
    generation: GenerationEvalConfig = Field(default_factory=GenerationEvalConfig)
    code: CodeEvalConfig = Field(default_factory=CodeEvalConfig)
    report_examples: int = Field(6, ge=0, description="Prompts shown with their generations in report.html.")
    during_training: TrainingEvalConfig = Field(default_factory=TrainingEvalConfig)


class ExportConfig(Section):
    output_dir: str = Field("runs/sftpipe/merged", description="Where `merge` writes the merged model.")
    logits_atol: float = Field(1e-4, gt=0, description="Max |merged - adapter| logit difference allowed.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="dtype of the saved weights.")


class Config(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    hpo: HpoConfig = Field(default_factory=HpoConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
