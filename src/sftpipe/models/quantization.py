"""The quantized frozen base of QLoRA: bitsandbytes settings, k-bit preparation, and dequantizing for a merge.

QLoRA keeps the base weights in 4 (or 8) bits and trains LoRA adapters in full precision on top. The base is
quantized at load time from the model's own weights, deterministically, so a checkpoint holds only the adapter
and the optimizer; the run fingerprint holds the base model's hash and `model.quantization`, which together
decide the quantized weights.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from sftpipe.config.schema import QuantizationConfig
from sftpipe.errors import SftpipeError

if TYPE_CHECKING:
    import peft
    import torch
    from transformers import BitsAndBytesConfig, PreTrainedModel

INSTALL_HINT = "pip install 'sftpipe[qlora]' (bitsandbytes >= 0.50; its 4-bit layers run on CPU and CUDA)"


def require_bitsandbytes(what: str = "train.method: qlora") -> None:
    """Fail with the install command when bitsandbytes is missing."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise SftpipeError(f"{what} needs bitsandbytes, which is not installed: {INSTALL_HINT}")


def bnb_config(qc: QuantizationConfig, compute_dtype: torch.dtype) -> BitsAndBytesConfig:
    """transformers' BitsAndBytesConfig for `qc`; `compute_dtype` is `qc.compute_dtype` resolved."""
    from transformers import BitsAndBytesConfig

    require_bitsandbytes()
    if qc.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=qc.quant_type,
                              bnb_4bit_use_double_quant=qc.double_quant, bnb_4bit_compute_dtype=compute_dtype)


def check_device(qc: QuantizationConfig, device: torch.device) -> None:
    """8-bit LLM.int8 layers have no CPU backward in bitsandbytes; 4-bit ones run on both."""
    if qc.bits == 8 and device.type != "cuda":
        raise SftpipeError(f"model.quantization.bits: 8 needs a CUDA GPU (bitsandbytes' Linear8bitLt has no CPU "
                           f"training path), and this run is on {device.type}; use bits: 4 (nf4 runs on CPU too)")


def prepare_for_kbit_training(model: PreTrainedModel, gradient_checkpointing: bool) -> PreTrainedModel:
    """PEFT's recommended preparation: freeze the base, norms/embeddings/head in fp32, and with checkpointing,
    input embeddings that require grad (otherwise no gradient reaches the checkpointed frozen blocks' adapters)."""
    import peft

    return peft.prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False})


def is_quantized(model: torch.nn.Module) -> bool:
    """Whether any layer of `model` holds bitsandbytes-quantized weights."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return False
    import bitsandbytes as bnb

    return any(isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)) for m in model.modules())


def dequantized_adapter_model(model: peft.PeftModel, adapter_dir: str, dtype: torch.dtype) -> peft.PeftModel:
    """The adapter of `adapter_dir` on the base of `model` dequantized to `dtype` (transformers' `dequantize`):
    the exact weights the quantized layers multiply by, as plain linear layers, so that merging the adapter into
    them folds in what the adapter computed on the quantized base. (PEFT's own merge into a 4-bit layer
    quantizes the merged weight again, which adds a second rounding error.)"""
    import peft

    base = model.unload()  # the quantized base, without the LoRA layers
    base = base.dequantize(dtype=dtype)
    return peft.PeftModel.from_pretrained(base, adapter_dir)
