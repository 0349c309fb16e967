"""Config keys users bring from transformers' TrainingArguments, TRL's SFTConfig and PEFT's LoraConfig.

An unknown key with one of these names is answered with sftpipe's key for it, or with what sftpipe does not
have yet, in whichever section it was put. The nearest spelling would mislead for most of them
(`save_steps` is nearest to `max_steps`).
"""

from __future__ import annotations


def _renamed(key: str) -> str:
    return f"sftpipe's key for it is {key}"


def _not_yet(what: str) -> str:
    return f"not supported yet: {what}"


# their name -> what to write in sftpipe's config instead
FOREIGN_KEYS: dict[str, str] = {
    "per_device_train_batch_size": _renamed("train.micro_batch_size"),
    "train_batch_size": _renamed("train.micro_batch_size"),
    "batch_size": _renamed("train.micro_batch_size (eval.batch_size for evaluation)"),
    "per_device_eval_batch_size": _renamed("eval.batch_size"),
    "gradient_accumulation_steps": _renamed("train.grad_accum"),
    "learning_rate": _renamed("train.lr"),
    "num_train_epochs": _renamed("train.epochs"),
    "save_steps": _renamed("train.save_every"),
    "eval_steps": _renamed("train.eval_every"),
    "logging_steps": _renamed("train.log_every"),
    "lr_scheduler_type": _renamed("train.scheduler"),
    "bf16": _renamed("train.precision (bf16 or fp32)"),
    "max_seq_length": _renamed("data.max_length"),
    "model_name_or_path": _renamed("model.name_or_path"),
    "torch_dtype": _renamed("model.dtype"),
    "lora_r": _renamed("lora.r"),
    "lora_alpha": _renamed("lora.alpha"),
    "lora_dropout": _renamed("lora.dropout"),
    "lora_target_modules": _renamed("lora.target_modules"),
    "load_in_4bit": _renamed("train.method: qlora with model.quantization.bits: 4"),
    "load_in_8bit": _renamed("train.method: qlora with model.quantization.bits: 8"),
    "quantization_config": _renamed("model.quantization"),
    "bnb_4bit_quant_type": _renamed("model.quantization.quant_type"),
    "bnb_4bit_compute_dtype": _renamed("model.quantization.compute_dtype"),
    "bnb_4bit_use_double_quant": _renamed("model.quantization.double_quant"),
    "use_dora": _renamed("lora.use_dora"),
    "use_rslora": _renamed("lora.use_rslora"),
    "report_to": _renamed("train.report_to"),
    "fp16": _not_yet("fp16 mixed precision is not offered; use train.precision: bf16 (or fp32)"),
    "deepspeed": _not_yet("DeepSpeed; sftpipe shards with FSDP2 instead (train.sharding: fsdp)"),
    "fsdp": _renamed("train.sharding (fsdp), with train.fsdp for its options"),
    "push_to_hub": _not_yet("uploading to the Hugging Face Hub; upload final/ or the merged model yourself"),
}
