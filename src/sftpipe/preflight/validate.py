"""`sftpipe validate CONFIG`: everything that can be checked before training, reported at once.

Config (by loading it), source files (a sample of records read as `prepare` would), model config and
weights format, LoRA targets and parameter counts (on the meta device: no weights are loaded), tokenizer vs
an existing data dir, the template's masks on a few rendered samples (one printed with its trained part
marked), what `train` would resume from, free disk for the planned checkpoints, and device/dtype/attention.
"""

from __future__ import annotations

import itertools
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sftpipe.config.schema import Config, TrainConfig
from sftpipe.contracts.data_dir import DataDir, tokenizer_sha256
from sftpipe.data.batches.collate import TokenStore
from sftpipe.data.batches.mix import check_mix_dirs, describe_mix, mix_stores
from sftpipe.data.batches.plan import build_plan, rows_stats
from sftpipe.data.formats import detect_format, to_conversation
from sftpipe.data.readers import read_source
from sftpipe.data.records import Conversation, RecordError
from sftpipe.data.templates import check_template, resolve_template
from sftpipe.data.tokenize import IGNORE_INDEX, ConversationTokenizer
from sftpipe.errors import SftpipeError
from sftpipe.preflight import Check
from sftpipe.preflight.sharding import sharding_checks
from sftpipe.redact import redact
from sftpipe.train.checkpoint import human_bytes

SAMPLE_RECORDS = 200  # records read per source
SAMPLE_RENDERS = 20  # conversations rendered and tokenized
TRAINED_OPEN, TRAINED_CLOSE = "[[", "]]"


@dataclass
class ModelPlan:
    total_params: int
    trainable_params: int
    checkpoint_bytes: int  # saved weights + optimizer state
    final_bytes: int


@dataclass
class ValidateResult:
    checks: list[Check] = field(default_factory=list)
    sample: str | None = None  # one rendered example, trained text between [[ and ]]
    sample_location: str | None = None

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]


def run(cfg: Config) -> ValidateResult:
    """Run every check; never raises for a problem it can report as a failed check."""
    result = ValidateResult()
    checks = result.checks
    tokenizer = _check_tokenizer(cfg, checks)
    template = _check_template(cfg, tokenizer, checks) if tokenizer is not None else None
    conversations = _check_sources(cfg, checks)
    if template is not None:
        _check_samples(cfg, tokenizer, template, conversations, result)
    plan = _check_model(cfg, checks)
    steps = _check_train_mix(cfg, tokenizer, checks) if cfg.train.data else _check_data_dir(cfg, tokenizer, checks)
    _check_run_dir(cfg, tokenizer, checks)
    _check_disk(cfg, plan, steps, checks)
    _check_device(cfg, checks)
    if plan is not None:
        _check_memory(cfg, checks)
    checks.extend(sharding_checks(cfg, plan and plan.total_params, plan and plan.trainable_params,
                                  weight_bytes(cfg)))
    return result


def _check_memory(cfg: Config, checks: list[Check]) -> None:
    """The figures of `sftpipe estimate` in one line; a run that does not fit the GPU is a failed check."""
    from sftpipe.preflight.estimate import run as estimate_memory
    from sftpipe.preflight.estimate import summary

    try:
        result = estimate_memory(cfg)
    except SftpipeError as exc:
        checks.append(Check("memory", "skip", str(exc)))
        return
    checks.append(Check("memory", "fail" if result.fits is False else "ok",
                        summary(result) + " (estimate; `sftpipe estimate` for the breakdown)"))


def _check_tokenizer(cfg: Config, checks: list[Check]):
    from sftpipe.models.loading import load_tokenizer

    try:
        tokenizer = load_tokenizer(cfg.model)
        sha = tokenizer_sha256(tokenizer)
    except SftpipeError as exc:
        checks.append(Check("tokenizer", "fail", str(exc)))
        return None
    checks.append(Check("tokenizer", "ok", f"{cfg.model.tokenizer or cfg.model.name_or_path}: {len(tokenizer)} "
                                           f"tokens, SHA-256 {sha[:12]}…"))
    return tokenizer


def _check_template(cfg: Config, tokenizer, checks: list[Check]) -> str | None:
    try:
        template = resolve_template(cfg.data, tokenizer)
        check_template(tokenizer, template, cfg.data.template)
    except SftpipeError as exc:
        checks.append(Check("template", "fail", str(exc)))
        return None
    checks.append(Check("template", "ok", f"{cfg.data.template}: renders prompts as prefixes and ends answers "
                                          "with an end token"))
    return template


def _check_sources(cfg: Config, checks: list[Check]) -> list[Conversation]:
    """Read the first records of each source as `prepare` would; count what it would reject."""
    if not cfg.data.sources and cfg.train.data:
        checks.append(Check("sources", "skip", "data.sources is empty: train reads the prepared dirs of train.data"))
        return []
    if not cfg.data.sources:
        checks.append(Check("sources", "fail", "data.sources is empty: add at least one, e.g. "
                                               "sources: [{path: train.jsonl}]"))
        return []
    conversations: list[Conversation] = []
    for i, source in enumerate(cfg.data.sources):
        name = f"data.sources[{i}]"
        if source.hf_dataset is not None:
            checks.append(Check("source", "skip", f"{name}: hf_dataset {source.hf_dataset!r} is not read by "
                                                  "validate (no downloads); prepare loads it"))
            continue
        if not Path(source.path or "").exists():
            checks.append(Check("source", "fail", f"{name}.path {source.path!r}: not found"))
            continue
        usable, rejected, first_problem = 0, {}, None
        fmt = None
        try:
            for location, record in itertools.islice(read_source(source), SAMPLE_RECORDS):
                try:
                    if isinstance(record, RecordError):
                        raise record
                    fmt = fmt or detect_format(record, source)
                    conversations.append(to_conversation(record, fmt, source, location, cfg.data.system_prompt))
                    usable += 1
                except RecordError as err:
                    rejected[err.reason] = rejected.get(err.reason, 0) + 1
                    first_problem = first_problem or f"{location}: {err.reason}: {err.detail}"
        except SftpipeError as exc:
            checks.append(Check("source", "fail", f"{name}: {exc}"))
            continue
        read = usable + sum(rejected.values())
        head = f"{source.path}: first {read} records ({fmt or 'format unknown'}): {usable} usable"
        if read == 0:
            checks.append(Check("source", "fail", f"{name}.path {source.path!r}: no records"))
        elif not rejected:
            checks.append(Check("source", "ok", head))
        else:
            counts = ", ".join(f"{r} {n}" for r, n in sorted(rejected.items()))
            strict = cfg.data.on_error == "raise"
            action = "prepare would stop there (data.on_error: raise)" if strict else "prepare would reject them"
            checks.append(Check("source", "fail" if strict or usable == 0 else "warn",
                                f"{head}, {sum(rejected.values())} rejected ({counts}); first: {first_problem}; "
                                f"{action}"))
    return conversations


def _check_samples(cfg: Config, tokenizer, template: str, conversations: list[Conversation],
                   result: ValidateResult) -> None:
    """Tokenize a few conversations with their loss masks; keep the first as the printed sample."""
    encode = ConversationTokenizer(tokenizer, template, cfg.data.max_length, cfg.data.overlong)
    ok, rejected = 0, {}
    for conv in conversations[:SAMPLE_RENDERS]:
        try:
            example = encode(conv)
        except RecordError as err:
            rejected[err.reason] = rejected.get(err.reason, 0) + 1
            continue
        ok += 1
        if result.sample is None:
            result.sample = mark_trained(tokenizer, example.input_ids, example.labels)
            result.sample_location = conv.location
    if not conversations:
        return
    detail = f"{ok} of {ok + sum(rejected.values())} sampled conversations tokenized with a non-empty loss mask"
    if rejected:
        detail += " (rejected: " + ", ".join(f"{r} {n}" for r, n in sorted(rejected.items())) + ")"
    result.checks.append(Check("masks", "ok" if not rejected else "warn" if ok else "fail", detail))


def mark_trained(tokenizer, input_ids: list[int], labels: list[int]) -> str:
    """Decode `input_ids`, wrapping every run of trained tokens (label != -100) in [[ ]]."""
    parts = []
    for trained, run in itertools.groupby(zip(input_ids, labels), key=lambda pair: pair[1] != IGNORE_INDEX):
        text = tokenizer.decode([token for token, _ in run], skip_special_tokens=False)
        parts.append(f"{TRAINED_OPEN}{text}{TRAINED_CLOSE}" if trained else text)
    return "".join(parts)


def _check_model(cfg: Config, checks: list[Check]) -> ModelPlan | None:
    """Model config, weights format, and parameter counts from a meta-device build (no weights loaded)."""
    import peft
    from transformers import AutoConfig, AutoModelForCausalLM

    from sftpipe.models.adapters import lora_config
    from sftpipe.models.loading import MODEL_FILES, check_local_path, not_loadable_message, pick_device, resolve_dtype

    source = cfg.model.name_or_path
    try:
        check_local_path(source, "model.name_or_path")
        config = AutoConfig.from_pretrained(source, revision=cfg.model.revision,
                                            trust_remote_code=cfg.model.trust_remote_code)
    except SftpipeError as exc:
        checks.append(Check("model", "fail", str(exc)))
        return None
    except (OSError, ValueError) as exc:
        checks.append(Check("model", "fail", not_loadable_message(source, "model.name_or_path", "model", MODEL_FILES,
                                                                  exc)))
        return None
    if cfg.train.method == "qlora":
        from sftpipe.models.quantization import require_bitsandbytes

        try:
            require_bitsandbytes()
        except SftpipeError as exc:
            checks.append(Check("quantization", "fail", str(exc)))
    if Path(source).is_dir() and not list(Path(source).glob("*.safetensors")):
        checks.append(Check("weights", "fail", f"{source}: no *.safetensors weights; sftpipe loads weights only "
                                               "from safetensors (.bin files are pickles)"))
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.model.trust_remote_code)
        if cfg.train.method != "full":
            model = peft.get_peft_model(model, lora_config(cfg))
    except (ValueError, TypeError, KeyError) as exc:  # peft: target modules not found; transformers: bad config
        checks.append(Check("model", "fail", f"cannot build {cfg.train.method} on {source!r}: {exc} "
                                             "(check lora.target_modules)"))
        return None
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    try:
        weight_bytes = torch.finfo(resolve_dtype(cfg.model.dtype, pick_device(cfg.train.device))).bits // 8
    except SftpipeError:
        weight_bytes = 4
    if cfg.train.method != "full":
        saved = trainable * 4  # peft keeps adapters in fp32
        plan = ModelPlan(total, trainable, saved + 2 * saved, saved)
    else:
        saved = total * weight_bytes
        plan = ModelPlan(total, trainable, saved + 2 * trainable * weight_bytes, saved)
    method = "full" if cfg.train.method == "full" else \
        f"{'QLoRA' if cfg.train.method == 'qlora' else 'LoRA'} r={cfg.lora.r} on {cfg.lora.target_modules}"
    checks.append(Check("model", "ok", f"{source}: {config.model_type}, {total:,} params, {trainable:,} trainable "
                                       f"({method})"))
    max_positions = getattr(config, "max_position_embeddings", None)
    if max_positions is not None and cfg.data.max_length > max_positions:
        checks.append(Check("length", "warn", f"data.max_length {cfg.data.max_length} > the model's "
                                              f"max_position_embeddings {max_positions}"))
    return plan


def _check_data_dir(cfg: Config, tokenizer, checks: list[Check]) -> int | None:
    """Tokenizer and data settings of an existing data dir; returns the planned optimizer steps."""
    data = DataDir(Path(cfg.data.output_dir))
    data_dir = data.path
    if not data.is_prepared():
        checks.append(Check("data dir", "warn", f"{data_dir}: not prepared yet; run `sftpipe prepare` with this "
                                                "config before `train`"))
        return None
    manifest = data.manifest
    if tokenizer is not None and not data.tokenizer_matches(tokenizer):
        checks.append(Check("data dir", "fail", f"{data_dir}: tokenized with another tokenizer "
                                                f"({manifest.tokenizer.name_or_path}); re-run `sftpipe prepare`"))
    saved, now = manifest.data_config, redact(cfg.data.model_dump(mode="json"))
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if changed:
        fields = ", ".join(f"data.{k}" for k in changed)
        checks.append(Check("data dir", "warn", f"{data_dir}: prepared with other data settings ({fields}); "
                                                "re-run `sftpipe prepare`"))
    examples = manifest.splits["train"].examples
    head = f"{data_dir}: {examples} train examples, {manifest.splits['val'].examples} val"
    if examples == 0:
        checks.append(Check("data dir", "fail", f"{head}: nothing to train on"))
        return None
    tc = cfg.train
    if tc.auto_batch:  # plan with the batch training would choose (the estimate's, before any CUDA probe)
        from sftpipe.models.loading import pick_device
        from sftpipe.models.memory_plan import resolve_auto_batch
        from sftpipe.train.auto_batch import device_memory

        try:
            device = pick_device(tc.device)
            tc = resolve_auto_batch(cfg, device_memory(device), cuda=device.type == "cuda")[0].train
        except SftpipeError as exc:
            checks.append(Check("data dir", "fail", f"{head}: {exc}"))
            return None
    lengths = TokenStore(data.load_split("train")).lengths
    try:  # the batches train would make (one process): token budgets and packing change the steps per epoch
        per_epoch, efficiency = planned_batches(tc, lengths, manifest.max_length)
    except SftpipeError as exc:
        checks.append(Check("data dir", "fail", f"{head}: {exc}"))
        return None
    micro = tc.max_steps * tc.grad_accum if tc.max_steps else math.ceil(tc.epochs * per_epoch)
    steps = math.ceil(micro / tc.grad_accum)
    detail = (f"{head}; {steps} optimizer steps planned ({per_epoch} micro-batches per epoch on one process, "
              f"{tc.grad_accum} per step); {1 - efficiency:.0%} of the token slots are padding")
    status = "ok"
    if not tc.packing and efficiency < 0.9:
        packed = planned_batches(tc.model_copy(update={"packing": True, "pack_length": 0}), lengths,
                                 manifest.max_length)[1]
        detail += (f": train.packing: true would fill {packed:.1%} of them in padded rows, all of them with "
                   "varlen attention (the default where the model supports it; README: Training speed)")
        status = "warn"
    checks.append(Check("data dir", status, detail))
    return steps


def _check_train_mix(cfg: Config, tokenizer, checks: list[Check]) -> int | None:
    """The dirs of a train.data mix (prepared, the model's tokenizer) and the planned mix per dir: examples,
    tokens and epochs of every epoch; returns the planned optimizer steps."""
    tc = cfg.train
    dirs = [DataDir(Path(entry.dir)) for entry in tc.data]
    try:
        check_mix_dirs(tc, dirs, tokenizer_sha256(tokenizer) if tokenizer is not None else None,
                       cfg.model.tokenizer or cfg.model.name_or_path)
        stores = [TokenStore(d.load_split("train")) for d in dirs]
        empty = [entry.label for entry, store in zip(tc.data, stores) if len(store) == 0]
        if empty:
            raise SftpipeError(f"train.data {', '.join(empty)}: the train split is empty; nothing to mix")
        mixed, counts = mix_stores(tc, stores)
        mix = describe_mix(tc, dirs, stores, counts)
        per_epoch, efficiency = planned_batches(tc, mixed.lengths, max(d.manifest.max_length for d in dirs))
    except SftpipeError as exc:
        checks.append(Check("train mix", "fail", str(exc)))
        return None
    for d in mix.dirs:
        checks.append(Check("train mix", "ok", (
            f"{d.name} ({d.dir}, template {d.template}): {d.examples} examples of {d.available_examples} per "
            f"epoch ({d.epochs:.2f} epochs of the dir), {d.tokens} tokens, {d.trained_tokens} trained; "
            f"{tc.mix_unit} share {d.achieved_share:.1%} (weight {d.target_share:.1%})")))
    micro = tc.max_steps * tc.grad_accum if tc.max_steps else math.ceil(tc.epochs * per_epoch)
    steps = math.ceil(micro / tc.grad_accum)
    checks.append(Check("train mix", "ok", f"{len(mixed)} examples per epoch; {steps} optimizer steps planned "
                                           f"({per_epoch} micro-batches per epoch on one process); "
                                           f"{1 - efficiency:.0%} of the token slots are padding"))
    return steps


def planned_batches(tc: TrainConfig, lengths: np.ndarray, max_length: int) -> tuple[int, float]:
    """(micro-batches per epoch, real tokens / token slots) of the first epoch of batches `tc` makes.

    Slots are counted as training collates them: rows padded to the longest row of their micro-batch (with
    varlen attention on packed rows there is no padding at all).
    """
    plan, _ = build_plan(tc, lengths, max_length, 1, 0)
    real = slots = 0
    for g in range(plan.micro_batches_per_epoch):
        stats = rows_stats(plan.rows(g)[0], lengths)  # padded to the longest row, as collation does
        real, slots = real + stats.real_tokens, slots + stats.slots
    return plan.micro_batches_per_epoch, real / slots


def _check_run_dir(cfg: Config, tokenizer, checks: list[Check]) -> None:
    """What `train --resume auto` would do with the run dir as it is."""
    from sftpipe.contracts.checkpoint import complete_checkpoints, read_fingerprint, verify_checkpoint
    from sftpipe.train.resume import fingerprint_differences, run_fingerprint

    run_dir = Path(cfg.train.output_dir)
    done = complete_checkpoints(run_dir)
    if not done:
        checks.append(Check("run dir", "ok", f"{run_dir}: no checkpoint; train starts from step 0"))
        return
    newest = done[-1]
    try:
        verify_checkpoint(newest)
    except SftpipeError as exc:
        checks.append(Check("run dir", "warn", f"{newest} is unusable ({exc}); train would fall back to an "
                                               "older checkpoint"))
        return
    dirs = [DataDir(Path(entry.dir)) for entry in cfg.train.data] or [DataDir(Path(cfg.data.output_dir))]
    if tokenizer is None or not all(d.is_prepared() for d in dirs):
        checks.append(Check("run dir", "ok", f"train would resume from {newest}"))
        return
    data_dirs = [d.path for d in dirs] if cfg.train.data else dirs[0].path
    current = run_fingerprint(cfg, data_dirs, tokenizer_sha256(tokenizer), world_size=1)
    diffs = fingerprint_differences(read_fingerprint(newest), current)
    if diffs:
        checks.append(Check("run dir", "warn", f"train would refuse to resume from {newest}: " + "; ".join(diffs)
                                               + " (use --resume-force, or --resume never to start over)"))
    else:
        checks.append(Check("run dir", "ok", f"train would resume from {newest} (verified)"))


def _check_disk(cfg: Config, plan: ModelPlan | None, steps: int | None, checks: list[Check]) -> None:
    if plan is None:
        return
    tc = cfg.train
    saves = (steps // tc.save_every + 1) if steps and tc.save_every else 1
    # kept checkpoints + the best one + the one being written, then final/
    held = min(saves, tc.save_total_limit + 2)
    need = held * plan.checkpoint_bytes + plan.final_bytes
    where = Path(tc.output_dir).absolute()
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    detail = (f"{where}: {human_bytes(free)} free; up to {held} checkpoints of ~{human_bytes(plan.checkpoint_bytes)} "
              f"plus final/ need ~{human_bytes(need)}")
    if free < need:
        checks.append(Check("disk", "fail", detail + "; free space, lower train.save_total_limit, or point "
                                                     "train.output_dir at a bigger disk"))
    else:
        checks.append(Check("disk", "ok", detail))


def weight_bytes(cfg: Config) -> int:
    """Bytes per weight as training will load them (4 when the device cannot be resolved)."""
    from sftpipe.models.loading import pick_device, resolve_dtype

    try:
        return torch.finfo(resolve_dtype(cfg.model.dtype, pick_device(cfg.train.device))).bits // 8
    except SftpipeError:
        return 4


def _check_device(cfg: Config, checks: list[Check]) -> None:
    from sftpipe.models.loading import pick_device, resolve_attn, resolve_dtype

    try:
        device = pick_device(cfg.train.device)
        attention = resolve_attn(cfg.model.attn_implementation)
    except SftpipeError as exc:
        checks.append(Check("device", "fail", str(exc)))
        return
    dtype = str(resolve_dtype(cfg.model.dtype, device)).removeprefix("torch.")
    detail = f"{device}, weights {dtype}, precision {cfg.train.precision}, attention {attention}"
    if cfg.train.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        checks.append(Check("device", "fail", f"{detail}: this GPU has no bf16; set train.precision: fp32"))
    elif cfg.train.precision == "bf16" and device.type == "cpu":
        checks.append(Check("device", "warn", f"{detail}: bf16 autocast on CPU is slow; fp32 is usual on CPU"))
    elif attention == "flash_attention_2" and device.type != "cuda":
        checks.append(Check("device", "fail", f"{detail}: flash_attention_2 needs a CUDA GPU; use sdpa"))
    else:
        checks.append(Check("device", "ok", detail))
