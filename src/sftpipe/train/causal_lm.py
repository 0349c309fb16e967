"""The training forward pass: a causal LM whose forward returns the token-summed loss of a micro-batch.

The loop trains `CausalLMLoss(model)` instead of the bare model so that the loss is part of the module that
accelerate wraps (DDP syncs gradients of what goes through its forward), and so that the LM head can be
applied to the supervised positions only, in chunks (or by Liger's fused kernel on GPU): the full
(batch x seq x vocab) fp32 logits are never materialised.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging

import peft
import torch
from transformers import PreTrainedModel

from sftpipe.data.tokenize import IGNORE_INDEX
from sftpipe.errors import SftpipeError
from sftpipe.models.loss import linear_cross_entropy_sum, shifted_targets, token_loss_sum

log = logging.getLogger(__name__)

# Architectures whose logits are exactly `lm_head(final hidden states)`: no soft-capping, scaling or bias
# after the head (Gemma 2/3, Cohere, Granite, Phi-2 do something there), so the head can be applied by us.
PLAIN_HEAD_MODEL_TYPES = frozenset({
    "llama", "mistral", "qwen2", "qwen3", "phi3", "olmo", "olmo2", "smollm3", "starcoder2", "gemma", "stablelm",
})


def head_is_plain(model: PreTrainedModel) -> bool:
    """Whether `model`'s logits are a bias-free linear map of its decoder output (so chunking is exact)."""
    head = model.get_output_embeddings()
    return (model.config.model_type in PLAIN_HEAD_MODEL_TYPES and type(head) is torch.nn.Linear
            and head.bias is None)


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def resolve_cross_entropy(requested: str, model: PreTrainedModel, device: torch.device) -> str:
    """Pick the loss implementation: liger (CUDA, installed), chunked, or full logits.

    auto takes the fastest that is exact for this model; an explicit choice that cannot run falls back
    with a log line (liger) or is refused (chunked on a model whose head is not a plain linear map).
    """
    plain = head_is_plain(model)
    if requested == "full":
        return "full"
    if requested == "chunked" and not plain:
        raise SftpipeError(
            f"train.cross_entropy=chunked: model type {model.config.model_type!r} post-processes its logits "
            "(or its LM head is adapted or has a bias), so sftpipe cannot apply the head itself; use auto or full")
    if requested in ("liger", "auto") and plain and device.type == "cuda":
        if liger_available():
            return "liger"
        if requested == "liger":
            log.warning("train.cross_entropy=liger but liger-kernel is not installed (pip install 'sftpipe[liger]'); "
                        "using the chunked cross-entropy")
    elif requested == "liger":
        log.warning("train.cross_entropy=liger needs a CUDA device and a plain LM head; using %s",
                    "chunked" if plain else "full")
    if not plain:
        log.info("model type %r: cross-entropy on full logits (its head is not a plain linear map)",
                 model.config.model_type)
        return "full"
    return "chunked"


def decoder_layers(model: PreTrainedModel) -> list[torch.nn.Module]:
    """The repeated blocks of `model`'s decoder (the classes transformers keeps whole when it splits a model)."""
    block_types = set(model._no_split_modules or ())
    layers = [m for m in model.get_decoder().modules() if type(m).__name__ in block_types]
    if not layers:
        raise SftpipeError(f"model type {model.config.model_type!r}: cannot find its decoder layers (to compile or "
                           "shard them); set train.compile: false and train.sharding: none")
    return layers


def nested_graph_breaks() -> contextlib.AbstractContextManager:
    """Let dynamo resume a compiled layer after the eager attention call inside it.

    A graph break in a nested call otherwise makes dynamo compile each enclosing frame on its own, and in
    transformers >= 5.24 those frames include a deprecation wrapper shared by the layers and their attention
    modules (one code object called with 1 and with 2 positional args): it recompiled at every call.
    """
    if not hasattr(torch._dynamo.config, "nested_graph_breaks"):  # older torch: recompiles, still correct
        return contextlib.nullcontext()
    return torch._dynamo.config.patch(nested_graph_breaks=True)


class CausalLMLoss(torch.nn.Module):
    """Wraps a causal LM (plain or peft); `forward(**micro_batch)` returns the summed token cross-entropy.

    Args:
        model: the trainable model from `build_trainable_model`.
        cross_entropy: auto, chunked, liger or full (see `resolve_cross_entropy`).
        chunk_tokens: rows of logits per chunk for the chunked loss; 0 sizes chunks automatically.
        compile: torch.compile the decoder in place (the loss and the LM head stay eager: their shapes
            depend on how many positions are supervised).
    """

    def __init__(self, model: torch.nn.Module, cross_entropy: str = "auto", chunk_tokens: int = 0,
                 compile: bool = False):
        super().__init__()
        self.model = model
        self.chunk_tokens = chunk_tokens
        self.cross_entropy = resolve_cross_entropy(cross_entropy, self.causal_lm(), next(model.parameters()).device)
        if self.cross_entropy == "liger":
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

            self.liger = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="sum")
        self.compiled = compile
        if compile:
            # dynamic: row lengths vary between micro-batches; one graph instead of one per shape
            for layer in decoder_layers(self.causal_lm()):
                layer.compile(dynamic=True)

    def causal_lm(self) -> PreTrainedModel:
        """The transformers model (inside peft's wrapper for LoRA; its layers carry the adapters)."""
        return self.model.get_base_model() if isinstance(self.model, peft.PeftModel) else self.model

    def logits(self, **inputs) -> torch.Tensor:
        """The bare model's output (validation). Under FSDP it is registered as a forward method of the root
        unit (see `train.sharding`), so the root's weights (embeddings, head) are gathered for it too."""
        return self.model(**inputs)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, **attention_kwargs) -> torch.Tensor:
        """Summed cross-entropy over the supervised tokens of one micro-batch (labels unshifted).

        Packed rows come with `position_ids` restarting at each example and no `attention_mask`; from those
        transformers builds block-causal masks (SDPA/eager) or varlen calls (flash-attention).
        """
        # use_cache=False matters: with a cache object present transformers does not look for packed
        # sequences in position_ids, and examples packed in one row would attend to each other.
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                      **attention_kwargs)
        with nested_graph_breaks() if self.compiled else contextlib.nullcontext():
            if self.cross_entropy == "full":
                return token_loss_sum(self.model(**inputs).logits, labels)[0]
            lm = self.causal_lm()
            hidden = lm.get_decoder()(**inputs).last_hidden_state
        targets = shifted_targets(labels)
        supervised = targets != IGNORE_INDEX
        hidden, targets = hidden[supervised], targets[supervised]  # the head runs on trained positions only
        weight = lm.get_output_embeddings().weight
        if self.cross_entropy == "liger":
            return self.liger(weight, hidden, targets)
        return linear_cross_entropy_sum(hidden, weight, targets, self.chunk_tokens)
