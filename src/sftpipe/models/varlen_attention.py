"""Attention that stays inside each packed example, without a mask: varlen attention for SDPA.

With packed rows and `sdpa`, transformers builds a block-causal (tokens x tokens) mask and SDPA computes
every query/key pair of the row before masking most of them: attention costs row_length² however short the
examples are, and a mask rules out the kernels' causal fast path. Flash-attention's varlen kernels avoid
this on GPU; this module does the same with plain SDPA: one causal SDPA call per example (the segments come
from `cu_seq_lens_q` or from where `position_ids` restart), so attention costs the sum of length² over
examples, and no mask is built. It is registered with transformers' AttentionInterface (its documented
extension point) as `sdpa_varlen`; everything that is not a packed training row (a padding mask, a KV
cache) is handed to transformers' own SDPA path unchanged.
"""

from __future__ import annotations

import logging

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

log = logging.getLogger(__name__)

SDPA_VARLEN = "sdpa_varlen"

# Architectures whose attention is plain causal softmax attention (no soft-capping, no attention sinks or
# biases), so that per-example causal SDPA is exactly what their sdpa path computes on a packed row.
VARLEN_MODEL_TYPES = frozenset({
    "llama", "mistral", "qwen2", "qwen3", "phi3", "olmo", "olmo2", "smollm3", "starcoder2", "gemma", "stablelm",
})


def segment_bounds(query: torch.Tensor, kwargs: dict) -> list[list[tuple[int, int]]]:
    """(start, end) of every example in each row: from cu_seq_lens_q (one flat row), else where position ids
    restart (any step that is not +1, as transformers detects packed sequences), else the whole row."""
    batch, length = query.shape[0], query.shape[2]
    cu = kwargs.get("cu_seq_lens_q")
    if cu is not None and batch == 1:
        bounds = cu.tolist()
        return [list(zip(bounds[:-1], bounds[1:]))]
    position_ids = kwargs.get("position_ids")
    if position_ids is None:
        return [[(0, length)]] * batch
    rows = []
    for pos in position_ids.expand(batch, -1):
        starts = [0] + (torch.nonzero(pos[1:] - pos[:-1] != 1).flatten() + 1).tolist() + [length]
        rows.append(list(zip(starts[:-1], starts[1:])))
    return rows


@torch.compiler.disable  # a Python loop over data-dependent bounds: compiled, it recompiles per example count
def sdpa_varlen_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, **kwargs) -> tuple[torch.Tensor, None]:
    """Causal SDPA within each packed example; transformers' SDPA for anything else.

    Args and returns as transformers' `sdpa_attention_forward`: query (batch, heads, tokens, dim), output
    (batch, tokens, heads, dim).
    """
    if attention_mask is not None or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    rows = []
    for row, bounds in enumerate(segment_bounds(query, kwargs)):
        if bounds == [(0, query.shape[2])]:
            q, k, v = query[row : row + 1], key[row : row + 1], value[row : row + 1]
            rows.append(sdpa_attention_forward(module, q, k, v, None, **kwargs)[0])
            continue
        pieces = [sdpa_attention_forward(module, query[row : row + 1, :, a:b], key[row : row + 1, :, a:b],
                                         value[row : row + 1, :, a:b], None, **kwargs)[0] for a, b in bounds]
        rows.append(torch.cat(pieces, dim=1))
    return torch.cat(rows, dim=0), None


def _varlen_mask(*args, **kwargs) -> torch.Tensor | None:
    """No mask for unpadded inputs without a cache (the attention keeps to each example); SDPA's otherwise."""
    if kwargs.get("attention_mask") is None and kwargs["q_length"] == kwargs["kv_length"]:
        return None
    return sdpa_mask(*args, **kwargs)


AttentionInterface.register(SDPA_VARLEN, sdpa_varlen_attention)
AttentionMaskInterface.register(SDPA_VARLEN, _varlen_mask)


def varlen_supported(model: PreTrainedModel, longest_example: int) -> bool:
    """Whether per-example causal SDPA computes exactly what `model`'s SDPA path computes on packed rows."""
    config = model.config
    window = getattr(config, "sliding_window", None)  # architecture-specific field (Mistral, Qwen2)
    windowed = window is not None and getattr(config, "use_sliding_window", True) and window < longest_example
    return config.model_type in VARLEN_MODEL_TYPES and not windowed


def use_sdpa_varlen(model: PreTrainedModel) -> None:
    """Switch `model` (a transformers model, not a peft wrapper) to `sdpa_varlen` attention."""
    model.set_attn_implementation(SDPA_VARLEN)


# Attention implementations that take a micro-batch as one flat row with sequence boundaries (no padding).
VARLEN_ATTENTION = frozenset({"flash_attention_2", SDPA_VARLEN})


def packed_attention(model: PreTrainedModel, requested: str, resolved: str, longest_example: int) -> str:
    """The attention packed training uses: `auto` upgrades sdpa to sdpa_varlen where that is exact.

    Returns the implementation now set on `model`.
    """
    if requested != "auto" or resolved != "sdpa":
        return resolved
    if not varlen_supported(model, longest_example):
        log.info("model type %r: packed rows use sdpa with block-causal masks (sdpa_varlen is not known to be "
                 "exact for it)", model.config.model_type)
        return resolved
    use_sdpa_varlen(model)
    return SDPA_VARLEN
