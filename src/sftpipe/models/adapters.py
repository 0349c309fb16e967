"""Build the trainable model: full fine-tune or LoRA. The training loop does not know which it got."""

from __future__ import annotations

import peft
import torch
from transformers import PreTrainedModel

from sftpipe.config.schema import Config
from sftpipe.models.loading import load_model


def build_trainable_model(cfg: Config, device: torch.device) -> torch.nn.Module:
    """Load the base model and make the configured part of it trainable."""
    model: PreTrainedModel = load_model(cfg.model, device)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
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
        task_type="CAUSAL_LM",
    )


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
