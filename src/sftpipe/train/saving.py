"""Write `final/` and the inference files of every checkpoint: the tokenizer carrying the training template,
the generation config and sftpipe.json, beside the adapter or full model.

The tokenizer saved here has `chat_template` set to the exact template used in training, so any tool
that calls `apply_chat_template` on this directory (sftpipe infer, transformers, vLLM) prompts the model
the way it was trained. Checkpoints get the same files as final/, so `eval`, `infer` and `merge` take a
checkpoint dir as they take final/.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import peft
import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase

from sftpipe import __version__
from sftpipe.config.schema import Config
from sftpipe.contracts.data_dir import DataManifest
from sftpipe.export.model_card import CardSource, write_model_card
from sftpipe.contracts.model_dir import FinalInfo, write_info
from sftpipe.data.templates import stop_token_ids, template_with_bos
from sftpipe.train.faults import failpoint
from sftpipe.train.tracking import git_sha


def save_final(final: Path, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, manifest: DataManifest,
               cfg: Config, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Write final/ under a temporary name and rename it into place, so final/ is whole or absent.

    Args:
        state_dict: the weights to save instead of the model's own (a sharded model's, gathered).
    """
    out = final.with_name(f".tmp-{final.name}")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    model.save_pretrained(out, state_dict=state_dict, safe_serialization=True)
    save_inference_files(out, model, tokenizer, manifest, cfg)
    failpoint("final.written")
    if final.exists():
        shutil.rmtree(final)
    out.rename(final)


def save_inference_files(out: Path, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, manifest: DataManifest,
                         cfg: Config) -> None:
    """Write what, besides the weights, makes `out` loadable on its own: the tokenizer with the training
    template, the generation config (every end-of-turn token a stop token), sftpipe.json and the model card
    (README.md).

    Args:
        out: the directory `model.save_pretrained` wrote (final/ or a checkpoint being written).
        manifest: the data dir's manifest (template text and name, tokenizer hash).
    """
    save_tokenizer_with_template(tokenizer, manifest.template.text, out)
    base = model.get_base_model() if isinstance(model, peft.PeftModel) else model
    generation = generation_config(base.generation_config, tokenizer)
    generation.save_pretrained(out)
    stops = [tokenizer.convert_ids_to_tokens(i) for i in generation.eos_token_id]
    write_model_card(out, cfg, manifest, CardSource(__version__, git_sha(), stops))
    quantization = cfg.model.quantization.model_dump(mode="json") if cfg.train.method == "qlora" else None
    write_info(out, FinalInfo(sftpipe_version=__version__, method=cfg.train.method, base_model=cfg.model.name_or_path,
                              template=manifest.template.name, tokenizer_sha256=manifest.tokenizer.sha256,
                              quantization=quantization))


def save_tokenizer_with_template(tokenizer: PreTrainedTokenizerBase, template: str, out: Path) -> None:
    """Save the tokenizer with the training template (writing BOS where training prompts start with it)."""
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = template_with_bos(tokenizer, template)
    tokenizer.save_pretrained(out)


def generation_config(base: GenerationConfig | None, tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    """The model's generation config with every end-of-turn token as a stop token."""
    config = copy.deepcopy(base) if base is not None else GenerationConfig()
    config.eos_token_id = stop_token_ids(tokenizer)
    config.pad_token_id = tokenizer.pad_token_id
    return config
