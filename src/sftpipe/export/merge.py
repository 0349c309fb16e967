"""The `merge` stage: fold LoRA weights into the base model, check logits, save safetensors.

A QLoRA adapter is folded into its base dequantized from the 4-bit weights it was trained on, and checked against
the adapter on the 4-bit base (see README, QLoRA, for the tolerance).

The merged model is only written when its logits match the adapter model's on a sample batch within
`export.logits_atol`: a merge that changes what the model computes is an error, not a warning.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import peft
import torch
from transformers import PreTrainedTokenizerBase

from sftpipe.config.schema import Config
from sftpipe.export.model_card import write_merged_card
from sftpipe.contracts.model_dir import MergedInfo, read_final_info, write_info
from sftpipe.data.tokenize import encode_prompt
from sftpipe.errors import SftpipeError
from sftpipe.models.loading import load_trained, resolve_model_dir, torch_dtype
from sftpipe.models.quantization import dequantized_adapter_model, is_quantized

SAMPLE_CONVERSATIONS = [
    [{"role": "user", "content": "Write a Haskell function that reverses a list."}],
    [{"role": "system", "content": "You are concise."}, {"role": "user", "content": "What is a monad?"}],
]


@dataclass
class MergeResult:
    output_dir: Path
    max_abs_logit_diff: float
    num_params: int


def sample_batch(tokenizer: PreTrainedTokenizerBase) -> dict[str, torch.Tensor]:
    """Right-padded prompts rendered with the model's template."""
    encoded = [encode_prompt(tokenizer, c) for c in SAMPLE_CONVERSATIONS]
    width = max(len(e) for e in encoded)
    ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(encoded):
        ids[i, : len(e)] = torch.tensor(e)
        mask[i, : len(e)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def run(cfg: Config, adapter_path: str, output_dir: str | None = None) -> MergeResult:
    """Merge the adapter at `adapter_path` (or a run dir) and save it to `output_dir`."""
    out = Path(output_dir or cfg.export.output_dir)
    device = torch.device("cpu")  # merging is cheap; fp32 on CPU gives the most exact check
    model, tokenizer = load_trained(adapter_path, device, dtype="float32",
                                    trust_remote_code=cfg.model.trust_remote_code)
    if not isinstance(model, peft.PeftModel):
        raise SftpipeError(f"{adapter_path}: not a LoRA adapter (no adapter_config.json); nothing to merge")
    batch = sample_batch(tokenizer)
    with torch.no_grad():
        adapter_logits = model(**batch).logits.float()
    source = Path(resolve_model_dir(adapter_path))
    if is_quantized(model):
        # A QLoRA adapter was trained on the quantized base, not on the original weights: it is merged into the
        # dequantized base (the weights the 4-bit layers multiply by), in fp32, and checked against the
        # adapter on the quantized model.
        model = dequantized_adapter_model(model, str(source), torch.float32)
    merged = model.merge_and_unload()
    merged.eval()
    with torch.no_grad():
        merged_logits = merged(**batch).logits.float()
    mask = batch["attention_mask"].bool()
    diff = float((adapter_logits - merged_logits).abs()[mask].max())
    if diff > cfg.export.logits_atol:
        raise SftpipeError(
            f"merge check failed: merged logits differ from adapter logits by {diff:.2e} > export.logits_atol "
            f"{cfg.export.logits_atol:g}; nothing was written"
        )
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.to(torch_dtype(cfg.export.dtype)).save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    write_info(tmp, MergedInfo.of(read_final_info(source), merged_from=str(source), max_abs_logit_diff=diff,
                                  dtype=cfg.export.dtype))
    write_merged_card(source, tmp, max_abs_logit_diff=diff, dtype=cfg.export.dtype)
    if (source / "generation_config.json").is_file():
        shutil.copy(source / "generation_config.json", tmp / "generation_config.json")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return MergeResult(out, diff, sum(p.numel() for p in merged.parameters()))
