"""Load tokenizers and models the same way in every stage."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sftpipe.config.schema import ModelConfig
from sftpipe.contracts.model_dir import read_final_info
from sftpipe.contracts.run_dir import RunDir
from sftpipe.errors import SftpipeError

if TYPE_CHECKING:  # torch and transformers load in seconds: imported where used, so `prepare` starts fast
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

DEFAULT_MODEL = ModelConfig.model_fields["name_or_path"].default  # where `sftpipe init-tiny` writes by default
MODEL_FILES = ("config.json",)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def check_local_path(source: str, field: str) -> None:
    """Fail fast on a local path that does not exist, instead of asking the hub for it: one that looks local,
    one inside a local model dir (`tiny/model` where tiny/ holds the model), or the default tiny model."""
    path = Path(source).expanduser()
    if path.exists():
        return
    local = (source.startswith(("/", "./", "../", "~")) or source == DEFAULT_MODEL
             or any((parent / "config.json").is_file() for parent in path.parents if parent != Path(".")))
    if local:
        raise SftpipeError(f"{field} {source!r}: no such directory ({path.resolve()}). "
                           + missing_dir_fix(source, field))


def not_loadable_message(source: str, field: str, what: str, files: tuple[str, ...], error: Exception) -> str:
    """Why no `what` (model or tokenizer) came from `source`: the local directory looked for, and the fix
    that fits what is there. `files` are the files a directory holding one has (at least one of them)."""
    path = Path(source).expanduser()
    where = path.resolve()
    if not path.is_dir():
        return (f"{field} {source!r}: no directory {where}, and no {what} of that name on the Hugging Face Hub or "
                f"in its cache ({error}). " + missing_dir_fix(source, field))
    if not any((path / name).is_file() for name in files):
        inner = [p for p in sorted(path.iterdir()) if p.is_dir() and any((p / name).is_file() for name in files)]
        fix = f" {inner[0]} holds one: set {field}: {inner[0]}." if inner else ""
        return f"{field} {source!r}: {where} holds no {what} (none of {', '.join(files)}).{fix}"
    return f"{field} {source!r}: cannot load the {what} from {where} ({error})"


def missing_dir_fix(source: str, field: str) -> str:
    """What to do about a model path that does not exist: the model dir above it, or init-tiny for the default
    (building a random tiny model helps nobody who named another model)."""
    for parent in Path(source).expanduser().parents:
        if parent != Path(".") and (parent / "config.json").is_file():
            return f"{parent} holds a model: set {field}: {parent}."
    if source == DEFAULT_MODEL:
        return (f"Run `sftpipe init-tiny` in {Path.cwd()} to build the embedded tiny model there, or set {field} "
                "to a Hub model id or a local model directory.")
    return f"Set {field} to a Hub model id or a local model directory."


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with a pad token guaranteed (eos when it has none)."""
    source = cfg.tokenizer or cfg.name_or_path
    field = "model.tokenizer" if cfg.tokenizer else "model.name_or_path"
    check_local_path(source, field)
    try:
        if declares_generic_tokenizer(source):
            from transformers import TokenizersBackend

            tokenizer = TokenizersBackend.from_pretrained(source, revision=cfg.revision)
        else:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(
                source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
            )
    except (OSError, ValueError) as exc:
        raise SftpipeError(not_loadable_message(source, field, "tokenizer", TOKENIZER_FILES, exc)) from None
    if tokenizer.pad_token is None:
        # Labels are masked by position, not by pad id, so pad == eos never hides the trained eos token.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# What AutoTokenizer loads as the generic TokenizersBackend: a tokenizer_config.json declaring one of these
# classes, of a model of one of these types or of no model (transformers overrides the declared class for a
# list of model types; llama is not on it). tests/unit/test_startup.py checks the two load alike.
GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")
GENERIC_TOKENIZER_MODEL_TYPES = ("llama",)


def declares_generic_tokenizer(source: str) -> bool:
    """Whether `source` is a local dir whose tokenizer AutoTokenizer would load as the generic
    `TokenizersBackend` anyway: loading that class directly skips AutoTokenizer's model-config lookup, which
    imports torch (seconds that `prepare` does not otherwise need). The tiny model, and the runs, checkpoints
    and merged models made from it, are such dirs; a hub id or any other model goes through AutoTokenizer.
    """
    path = Path(source).expanduser()
    if not (path / "tokenizer.json").is_file() or not (path / "tokenizer_config.json").is_file():
        return False
    try:
        declared = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
        model = json.loads((path / "config.json").read_text(encoding="utf-8")) if (path / "config.json").is_file() \
            else None
    except (OSError, ValueError):
        return False  # AutoTokenizer reports what is wrong with the files
    generic_model = model is None or (isinstance(model, dict) and "auto_map" not in model
                                      and model.get("model_type") in GENERIC_TOKENIZER_MODEL_TYPES)
    return (isinstance(declared, dict) and "auto_map" not in declared
            and declared.get("tokenizer_class") in GENERIC_TOKENIZER_CLASSES and generic_model)


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a config dtype name (float32, bfloat16, float16)."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on CUDA devices that support it, fp32 elsewhere."""
    import torch

    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return torch_dtype(name)


def resolve_attn(name: str, device: torch.device | None = None) -> str:
    """auto: flash-attention 2 on CUDA when installed (varlen kernels for packed rows), else sdpa."""
    if name == "auto" and device is not None and device.type == "cuda":
        if importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
        log.info("flash-attn is not installed; using sdpa attention (pip install 'sftpipe[flash]' for varlen kernels)")
    if name == "sdpa_varlen":
        import sftpipe.models.varlen_attention  # noqa: F401 - registers the implementation with transformers
    if name == "flash_attention_2":
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            raise SftpipeError(
                "model.attn_implementation is flash_attention_2 but flash-attn is not installed; "
                "`pip install flash-attn --no-build-isolation` or use sdpa"
            ) from None
    return "sdpa" if name == "auto" else name


def load_model(cfg: ModelConfig, device: torch.device, path: str | Path | None = None, *,
               quantized: bool = False) -> PreTrainedModel:
    """Load the causal LM from `path` (default: cfg.name_or_path) with the configured dtype and attention;
    `quantized`: its linear layers quantized by bitsandbytes as `cfg.quantization` says (QLoRA's frozen base)."""
    from transformers import AutoModelForCausalLM

    source = str(path or cfg.name_or_path)
    check_local_path(source, "model.name_or_path")
    dtype = resolve_dtype(cfg.dtype, device)
    placement = {}
    if quantized:
        from sftpipe.models.quantization import bnb_config, check_device

        check_device(cfg.quantization, device)
        compute = dtype if cfg.quantization.compute_dtype == "auto" else torch_dtype(cfg.quantization.compute_dtype)
        # bitsandbytes quantizes while loading onto the device; a quantized model cannot be moved afterwards
        placement = {"quantization_config": bnb_config(cfg.quantization, compute), "device_map": {"": device}}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source,
            revision=None if path else cfg.revision,
            dtype=dtype,
            attn_implementation=resolve_attn(cfg.attn_implementation, device),
            trust_remote_code=cfg.trust_remote_code,
            use_safetensors=True,
            **placement,
        )
    except (OSError, ValueError) as exc:
        raise SftpipeError(not_loadable_message(source, "model.name_or_path", "model", MODEL_FILES, exc)) from None
    return model if quantized else model.to(device)


def pick_device(name: str) -> torch.device:
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise SftpipeError("train.device is cuda but no CUDA GPU is visible; use device: auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_model_dir(path: str | Path) -> Path | str:
    """A run dir means its final/ model; anything else (model dir, adapter dir, hub id) is used as given."""
    p = Path(path)
    if RunDir.is_run_dir(p):
        return RunDir(p).final
    return p if p.exists() else str(path)


def load_trained(path: str | Path, device: torch.device, dtype: str = "auto",
                 trust_remote_code: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a model for inference: a run dir, a LoRA adapter dir (base loaded from its config, quantized as in
    training for a QLoRA adapter), or a full model.

    The tokenizer comes from the same directory, so it carries the template the model was trained with.
    """
    import peft

    source = resolve_model_dir(path)
    adapter = Path(source) / "adapter_config.json" if isinstance(source, Path) else None
    if adapter is not None and adapter.is_file():
        if not (adapter.parent / "adapter_model.safetensors").is_file():
            raise SftpipeError(f"{adapter.parent}: no adapter_model.safetensors. sftpipe loads weights only from "
                               "safetensors (an adapter_model.bin is a pickle, which can run code when loaded); "
                               "convert it with a tool you trust first.")
        base_id = json.loads(adapter.read_text(encoding="utf-8"))["base_model_name_or_path"]
        info = read_final_info(Path(source))
        quantization = info.quantization if info is not None else None  # a QLoRA adapter: its base as trained
        base_cfg = ModelConfig(name_or_path=base_id, dtype=dtype, trust_remote_code=trust_remote_code,
                               **({"quantization": quantization} if quantization else {}))
        base = load_model(base_cfg, device, quantized=quantization is not None)
        model = peft.PeftModel.from_pretrained(base, str(source))
        model = model if quantization is not None else model.to(device)
    else:
        model = load_model(ModelConfig(name_or_path=str(source), dtype=dtype, trust_remote_code=trust_remote_code),
                           device)
    tokenizer = load_tokenizer(ModelConfig(name_or_path=str(source), trust_remote_code=trust_remote_code))
    model.eval()
    return model, tokenizer
