"""The `infer` stage: render prompts with the model's own template, generate in left-padded batches."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sftpipe.data.tokenize import encode_prompt
from sftpipe.errors import SftpipeError
from sftpipe.models.loading import load_trained, pick_device


@dataclass
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    batch_size: int = 8


@torch.no_grad()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, conversations: list[list[dict[str, str]]],
             settings: GenerationSettings) -> list[str]:
    """One completion per conversation (each ending with a user turn)."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    outputs: list[str] = []
    for start in range(0, len(conversations), settings.batch_size):
        encoded = [encode_prompt(tokenizer, c) for c in conversations[start : start + settings.batch_size]]
        width = max(len(e) for e in encoded)
        input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        attention = torch.zeros((len(encoded), width), dtype=torch.long)
        for i, ids in enumerate(encoded):  # left padding keeps every prompt's end at the same position
            input_ids[i, width - len(ids):] = torch.tensor(ids)
            attention[i, width - len(ids):] = 1
        sample = settings.temperature > 0
        out = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention.to(device),
            max_new_tokens=settings.max_new_tokens, do_sample=sample,
            temperature=settings.temperature if sample else None, top_p=settings.top_p if sample else None,
            top_k=None, pad_token_id=pad,
        )
        outputs += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return outputs


def read_prompts(path: Path) -> list[list[dict[str, str]]]:
    """A JSONL file of {"prompt": str} or {"messages": [...]} records (ending with a user turn)."""
    conversations = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SftpipeError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
        if isinstance(record, dict) and isinstance(record.get("prompt"), str):
            conversations.append([{"role": "user", "content": record["prompt"]}])
        elif isinstance(record, dict) and isinstance(record.get("messages"), list):
            conversations.append(record["messages"])
        else:
            raise SftpipeError(f"{path}:{lineno}: expected {{\"prompt\": \"...\"}} or {{\"messages\": [...]}}")
    return conversations


def run(model_path: str, prompts: list[list[dict[str, str]]], settings: GenerationSettings,
        device: str = "auto", trust_remote_code: bool = False) -> list[str]:
    model, tokenizer = load_trained(model_path, pick_device(device), trust_remote_code=trust_remote_code)
    return generate(model, tokenizer, prompts, settings)
