"""Build the trainable model: full fine-tune, LoRA, or QLoRA (LoRA on a quantized base). The training loop does
not know which it got."""

from __future__ import annotations

import peft
import torch
from transformers import PreTrainedModel

from sftpipe.config.schema import Config
from sftpipe.models.loading import load_model
from sftpipe.models.quantization import prepare_for_kbit_training


def build_trainable_model(cfg: Config, device: torch.device) -> torch.nn.Module:
    """Load the base model and make the configured part of it trainable."""
    qlora = cfg.train.method == "qlora"
    model: PreTrainedModel = load_model(cfg.model, device, quantized=qlora)
    if qlora:  # PEFT's k-bit preparation also enables checkpointing when it is configured
        model = prepare_for_kbit_training(model, cfg.model.gradient_checkpointing)
    elif cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.model.gradient_checkpointing:
        model.config.use_cache = False
    if cfg.train.method == "full":
        model.requires_grad_(True)
        return model
    model = peft.get_peft_model(model, lora_config(cfg))
    if cfg.model.gradient_checkpointing:
        model.enable_input_require_grads()
    return model


def lora_config(cfg: Config) -> peft.LoraConfig:
    """The peft LoRA config for `cfg.lora` (also used by `validate` to count parameters on the meta device)."""
    return peft.LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        use_dora=cfg.lora.use_dora,
        use_rslora=cfg.lora.use_rslora,
        modules_to_save=cfg.lora.modules_to_save or None,
        task_type="CAUSAL_LM",
    )


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a 4-bit weight counts as the parameters it stands for."""
    def numel(p: torch.nn.Parameter) -> int:
        shape = getattr(getattr(p, "quant_state", None), "shape", None)  # bitsandbytes Params4bit packs 2 per byte
        return int(torch.Size(shape).numel()) if shape is not None else p.numel()

    trainable = sum(numel(p) for p in model.parameters() if p.requires_grad)
    return trainable, sum(numel(p) for p in model.parameters())
