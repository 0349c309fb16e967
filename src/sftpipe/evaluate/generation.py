"""The one generate loop, used by eval, infer and chat: n samples per prompt, greedy or sampled, stopping at the
model's eos and the template's end-of-turn tokens, with per-sample token counts and whether each ended
with an end token or ran into max_new_tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.generation.streamers import BaseStreamer

from sftpipe.data.templates import stop_token_ids
from sftpipe.data.tokenize import encode_prompt

if TYPE_CHECKING:
    from sftpipe.config.schema import Config


@dataclass
class Generation:
    text: str
    num_tokens: int  # generated tokens up to and including the end token
    ended: bool  # True: stopped at an end token; False: hit max_new_tokens


@dataclass
class DecodingSettings:
    max_new_tokens: int
    num_samples: int = 1
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    batch_size: int = 8
    seed: int = 0


def decoding_settings(cfg: Config) -> DecodingSettings:
    """The decoding settings of `cfg.eval` (max_new_tokens and the eval.generation section)."""
    g = cfg.eval.generation
    return DecodingSettings(cfg.eval.max_new_tokens, g.num_samples, g.temperature, g.top_p, g.batch_size, g.seed)


def end_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The model's generation-config eos ids plus the tokenizer's end-of-turn tokens."""
    configured = model.generation_config.eos_token_id
    ids = list(configured) if isinstance(configured, list) else ([configured] if configured is not None else [])
    return sorted(set(ids) | set(stop_token_ids(tokenizer)))


@torch.no_grad()
def generate_samples(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                     conversations: list[list[dict[str, str]]], settings: DecodingSettings) -> list[list[Generation]]:
    """`settings.num_samples` generations per conversation (each ends with a user turn), in prompt order.

    Sampling uses its own seeded RNG stream (the caller's torch RNG state is restored afterwards), so two
    models evaluated with the same settings draw from the same seed and training randomness is untouched.
    """
    device = next(model.parameters()).device
    stops = end_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id
    # Each prompt repeated n times; prompts sorted by length so batches waste little padding.
    encoded = [encode_prompt(tokenizer, c) for c in conversations]
    order = sorted(((i, s) for i in range(len(conversations)) for s in range(settings.num_samples)),
                   key=lambda pair: (len(encoded[pair[0]]), pair))
    results: list[list[Generation | None]] = [[None] * settings.num_samples for _ in conversations]
    was_training = model.training
    model.eval()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(settings.seed)
        for start in range(0, len(order), settings.batch_size):
            chunk = order[start:start + settings.batch_size]
            for (i, s), gen in zip(chunk, _generate_batch(model, [encoded[i] for i, _ in chunk], settings, stops,
                                                          pad, device, tokenizer)):
                results[i][s] = gen
    model.train(was_training)
    return [[g for g in row if g is not None] for row in results]


def _generate_batch(model, prompts: list[list[int]], settings: DecodingSettings, stops: list[int], pad: int,
                    device: torch.device, tokenizer: PreTrainedTokenizerBase) -> list[Generation]:
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):  # left padding: every prompt ends where generation starts
        input_ids[row, width - len(ids):] = torch.tensor(ids)
        attention[row, width - len(ids):] = 1
    sample = settings.temperature > 0
    out = model.generate(
        input_ids=input_ids.to(device), attention_mask=attention.to(device), max_new_tokens=settings.max_new_tokens,
        do_sample=sample, temperature=settings.temperature if sample else None,
        top_p=settings.top_p if sample else None, top_k=None, eos_token_id=stops, pad_token_id=pad,
    )
    return [_until_stop(row, stops, tokenizer) for row in out[:, width:].tolist()]


@torch.no_grad()
def generate_streamed(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]],
                      settings: DecodingSettings, streamer: BaseStreamer) -> Generation:
    """One reply to `messages` (ending with a user turn), its tokens handed to `streamer` as they come: the
    prompt, stop tokens and decoding of `generate_samples`, one conversation at a time (`sftpipe chat`).

    Sampling draws from the caller's torch RNG, so the replies of a seeded session follow one stream.
    """
    device = next(model.parameters()).device
    stops = end_token_ids(model, tokenizer)
    prompt = torch.tensor([encode_prompt(tokenizer, messages)], device=device)
    sample = settings.temperature > 0
    out = model.generate(
        input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=settings.max_new_tokens,
        do_sample=sample, temperature=settings.temperature if sample else None,
        top_p=settings.top_p if sample else None, top_k=None, eos_token_id=stops,
        pad_token_id=tokenizer.pad_token_id, streamer=streamer,
    )
    return _until_stop(out[0, prompt.shape[1]:].tolist(), stops, tokenizer)


def _until_stop(row: list[int], stops: list[int], tokenizer: PreTrainedTokenizerBase) -> Generation:
    """The generation in `row` up to its first stop token (a padded row of a batch goes on after it)."""
    end = next((j for j, tok in enumerate(row) if tok in stops), None)
    kept = row if end is None else row[:end]
    return Generation(tokenizer.decode(kept, skip_special_tokens=True), len(row) if end is None else end + 1,
                      end is not None)
