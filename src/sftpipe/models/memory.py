"""Memory of a training step per device, estimated before a single weight is loaded.

Parameters are counted on a meta-device build of the model (with its LoRA layers), so their number and dtype
are exact. Activations follow from what autograd saves for backward in a decoder layer of the Llama family
(Llama, Mistral, Qwen2/3, ...): each tensor a backward needs, per token, by dtype (see `layer_bytes_per_token`).
The rules were read off `torch.autograd.graph.saved_tensors_hooks` on transformers' Llama layer and are
checked against torch's own accounting in tests/unit/test_memory_estimate.py. What the estimate does not know:
kernels' workspaces, the CUDA context (a fixed allowance) and fragmentation (a fraction of the rest).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from sftpipe.config.schema import Config
from sftpipe.errors import SftpipeError

if TYPE_CHECKING:
    import torch

GiB = 2**30
CUDA_CONTEXT_BYTES = GiB // 2  # CUDA context + cuBLAS/NCCL workspaces, outside torch's allocator
ALLOCATOR_SLACK = 0.05  # the caching allocator's fragmentation, as a fraction of what tensors hold
NF4_BLOCK = 64  # weights per 4-bit block (one absmax constant each)
DOUBLE_QUANT_BLOCK = 256  # absmax constants per second-level block with double quantization
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CHUNK_LOGITS_BYTES = 256 * 2**20  # the chunked cross-entropy's logits budget (models/loss.py)


@dataclass(frozen=True)
class DecoderShape:
    """The sizes of a Llama-family decoder that decide its activations."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def of(cls, config: Any) -> DecoderShape:
        """From a transformers config of the Llama family (the names Llama, Mistral and Qwen use)."""
        try:
            heads = config.num_attention_heads
            head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
            return cls(layers=config.num_hidden_layers, hidden=config.hidden_size,
                       intermediate=config.intermediate_size, heads=heads,
                       kv_heads=getattr(config, "num_key_value_heads", None) or heads, head_dim=head_dim,
                       vocab=config.vocab_size)
        except AttributeError as exc:
            raise SftpipeError(f"the memory estimate knows decoders of the Llama family (hidden_size, "
                               f"intermediate_size, num_attention_heads, ...); {config.model_type} lacks {exc.name}"
                               ) from None


@dataclass(frozen=True)
class Parameters:
    """What the model's parameters take on one device, by role."""

    total: int  # parameters (a 4-bit weight counts as the parameters it stands for)
    trainable: int
    weights_bytes: int
    gradient_bytes: int
    optimizer_bytes: int  # AdamW: two states per trainable parameter, in its dtype
    head_trainable: bool
    norms_trainable: bool


@dataclass(frozen=True)
class ActivationSettings:
    """What decides the bytes a decoder layer saves per token."""

    element_bytes: int  # 2 under bf16/fp16 weights or autocast, 4 in fp32
    trainable_base: bool  # full fine-tune: every linear saves its input, norms their normalised input
    adapted: tuple[str, ...]  # linear layers with a LoRA adapter
    rank: int
    dropout: bool  # LoRA dropout saves its mask and its output per adapted layer
    mask_bytes: int  # dropout mask element: bool on CUDA, the activation dtype on CPU
    checkpointing: bool
    eager_attention: bool  # eager attention saves the (heads x length) probabilities per token


@dataclass
class MemoryEstimate:
    """Bytes per device of one training step, by part; `total` is what tensors hold at the peak (what
    torch.cuda.max_memory_allocated reports), `reserved` adds the CUDA context and the allocator's slack.

    The loss's buffers are freed before backward starts, when the recomputed layer's appear, so the peak holds
    the larger of the two; gradients are counted whole (a bound: early layers' activations are freed before
    their gradients exist).
    """

    weights: int
    gradients: int
    optimizer: int
    activations: int  # kept for backward at the end of the forward pass
    recompute: int  # the layer recomputed in backward with checkpointing
    loss: int  # the chunked cross-entropy's buffers, at the end of the forward pass
    tokens: int  # tokens of the micro-batch (padding included)
    rows: int
    row_length: int
    checkpointing: bool
    devices: int
    sharded: bool
    total_params: int
    trainable_params: int
    cuda: bool

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + max(self.loss, self.recompute)

    @property
    def overhead(self) -> int:
        return (CUDA_CONTEXT_BYTES + int(ALLOCATOR_SLACK * self.total)) if self.cuda else 0

    @property
    def reserved(self) -> int:
        return self.total + self.overhead

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total, "overhead": self.overhead, "reserved": self.reserved}


def layer_bytes_per_token(shape: DecoderShape, a: ActivationSettings) -> int:
    """Bytes one decoder layer keeps for backward per token of the micro-batch (no checkpointing).

    What autograd saves, as read off transformers' Llama layer:
      RMSNorm (x2): its input in fp32 and 1/rms (fp32); the normalised input when the norm weight trains.
      attention: rotated q and k, v, the output, and the kernel's log-sum-exp (fp32, one per head).
      MLP: the gate and up projections and the activated gate.
      linear layers: their input when their weight trains; a LoRA adapter its input (after dropout, with the
        dropout mask) and the rank-r output of A. Inputs saved twice are one tensor.
    """
    s, h, i = a.element_bytes, shape.hidden, shape.intermediate
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    inputs = {"q_proj": ("norm1", h), "k_proj": ("norm1", h), "v_proj": ("norm1", h), "o_proj": ("attn", q),
              "gate_proj": ("norm2", h), "up_proj": ("norm2", h), "down_proj": ("product", i)}
    norms = 2 * (4 * h + 4 + (s * h if a.trainable_base else 0))
    attention = s * (2 * q + 2 * kv) + 4 * shape.heads  # attn output (q) counted here: SDPA saves it
    mlp = 3 * s * i
    saved_inputs = {"attn"}  # input tensors kept once however many layers need them
    lora = 0
    for name, (tensor, width) in inputs.items():
        if a.trainable_base:
            saved_inputs.add(tensor)
        if name in a.adapted:
            lora += s * a.rank
            if a.dropout:
                lora += width * (s + a.mask_bytes)  # each adapter draws its own mask
            else:
                saved_inputs.add(tensor)
    widths = {"norm1": h, "norm2": h, "product": i}
    inputs_bytes = sum(s * widths[t] for t in saved_inputs if t != "attn")
    return norms + attention + mlp + inputs_bytes + lora


def activation_bytes(shape: DecoderShape, a: ActivationSettings, tokens: int, row_length: int) -> tuple[int, int]:
    """(bytes the decoder keeps for backward at the end of the forward pass of `tokens` tokens, bytes the layer
    being recomputed holds during backward with checkpointing (0 without)).

    With checkpointing each layer keeps only its input until its backward recomputes it.
    """
    per_layer = layer_bytes_per_token(shape, a)
    if a.eager_attention:
        per_layer += a.element_bytes * shape.heads * row_length * (2 if a.dropout else 1)
    final_norm = 4 * shape.hidden + 4 + (a.element_bytes * shape.hidden if a.trainable_base else 0)
    if a.checkpointing:
        return tokens * (shape.layers * a.element_bytes * shape.hidden + final_norm), tokens * per_layer
    return tokens * (shape.layers * per_layer + final_norm), 0


def loss_bytes(shape: DecoderShape, supervised: int, element_bytes: int, head_trainable: bool,
               chunk_tokens: int = 0) -> int:
    """The chunked cross-entropy (models/loss.py): the supervised hidden states, their gradient, one chunk of
    fp32 logits (the softmax overwrites it in place) and, when the head trains, its fp32 gradient accumulator."""
    chunk = chunk_tokens or max(1, CHUNK_LOGITS_BYTES // (4 * shape.vocab))
    logits = min(chunk, supervised) * shape.vocab * 4
    hidden = 2 * supervised * shape.hidden * element_bytes
    return logits + hidden + (shape.vocab * shape.hidden * 4 if head_trainable else 0)


def quantized_bytes(numel: int, cfg: Config) -> int:
    """Bytes of one weight matrix quantized as model.quantization says (bitsandbytes' layout)."""
    qc = cfg.model.quantization
    if qc.bits == 8:
        return numel  # int8, plus a per-row scale counted by the caller's rounding: negligible
    blocks = math.ceil(numel / NF4_BLOCK)
    absmax = blocks + 4 * math.ceil(blocks / DOUBLE_QUANT_BLOCK) if qc.double_quant else 4 * blocks
    return math.ceil(numel / 2) + absmax


def count_parameters(model: torch.nn.Module, cfg: Config, weight_dtype: torch.dtype,
                     optimizer_states: int = 2) -> Parameters:
    """Bytes of weights, gradients and AdamW states of a meta-device build of the trainable model.

    Args:
        model: the model as `validate` builds it on the meta device (with peft's LoRA layers for lora/qlora).
        weight_dtype: the dtype the weights are loaded in.
    """
    import torch

    method = cfg.train.method
    weights = grads = trainable = total = 0
    head_trainable = norms_trainable = False
    for name, p in model.named_parameters():
        numel = p.numel()
        total += numel
        adapter = any(key in name for key in ("lora_", "modules_to_save"))
        quantized = (method == "qlora" and not adapter and p.ndim == 2 and name.endswith(".weight")
                     and any(f".{lin}." in name for lin in LINEARS))
        if quantized:
            nbytes = quantized_bytes(numel, cfg)
        elif adapter or method == "qlora":  # PEFT keeps adapters in fp32; k-bit preparation upcasts the rest
            nbytes = numel * 4
        else:
            nbytes = numel * torch.finfo(weight_dtype).bits // 8
        weights += nbytes
        trains = method == "full" or (adapter and p.requires_grad)
        if trains:
            trainable += numel
            grads += nbytes
            head_trainable |= "lm_head" in name
            norms_trainable |= "norm" in name
    return Parameters(total=total, trainable=trainable, weights_bytes=weights, gradient_bytes=grads,
                      optimizer_bytes=optimizer_states * grads, head_trainable=head_trainable,
                      norms_trainable=norms_trainable)


def activation_settings(cfg: Config, model: torch.nn.Module, weight_dtype: torch.dtype, cuda: bool,
                        checkpointing: bool | None = None) -> ActivationSettings:
    """The activation settings of `cfg` for the built (meta) model: which linears carry adapters, dtypes."""
    import torch

    sixteen = torch.finfo(weight_dtype).bits == 16 or cfg.train.precision == "bf16"
    s = 2 if sixteen else 4
    adapted = tuple(sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                            if hasattr(m, "lora_A") and name.rsplit(".", 1)[-1] in LINEARS}))
    return ActivationSettings(
        element_bytes=s, trainable_base=cfg.train.method == "full", adapted=adapted, rank=cfg.lora.r,
        dropout=cfg.train.method != "full" and cfg.lora.dropout > 0, mask_bytes=1 if cuda else s,
        checkpointing=cfg.model.gradient_checkpointing if checkpointing is None else checkpointing,
        eager_attention=cfg.model.attn_implementation == "eager")


def estimate(shape: DecoderShape, params: Parameters, a: ActivationSettings, *, rows: int, row_length: int,
             supervised_fraction: float = 1.0, devices: int = 1, sharded: bool = False, cuda: bool = True,
             chunk_tokens: int = 0) -> MemoryEstimate:
    """The memory of one training step of `rows` rows of `row_length` tokens per device.

    Args:
        supervised_fraction: share of the tokens with a label (the loss's head runs on those only).
        sharded: FSDP full sharding over `devices`: weights, gradients and optimizer states split evenly, plus
            two layers' weights gathered whole (the one computing and the one prefetched).
    """
    split = devices if sharded else 1
    tokens = rows * row_length
    supervised = max(1, int(tokens * supervised_fraction))
    activations, recompute = activation_bytes(shape, a, tokens, row_length)
    # FSDP gathers one layer's full weights for its forward and backward, and prefetches the next
    gathered = 2 * params.weights_bytes // shape.layers if sharded and devices > 1 else 0
    return MemoryEstimate(
        weights=math.ceil(params.weights_bytes / split) + gathered,
        gradients=math.ceil(params.gradient_bytes / split),
        optimizer=math.ceil(params.optimizer_bytes / split),
        activations=activations, recompute=recompute,
        loss=loss_bytes(shape, supervised, a.element_bytes, params.head_trainable, chunk_tokens),
        tokens=tokens, rows=rows, row_length=row_length, checkpointing=a.checkpointing, devices=devices,
        sharded=sharded, total_params=params.total, trainable_params=params.trainable, cuda=cuda)


def meta_model(cfg: Config, config: Any = None) -> torch.nn.Module:
    """The trainable model of `cfg` built on the meta device (no weights read): the base from its config (or
    `config`, a transformers config built in code), with peft's LoRA layers for lora and qlora."""
    import peft
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from sftpipe.models.adapters import lora_config

    if config is None:
        config = AutoConfig.from_pretrained(cfg.model.name_or_path, revision=cfg.model.revision,
                                            trust_remote_code=cfg.model.trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.model.trust_remote_code)
    if cfg.train.method != "full":
        model = peft.get_peft_model(model, lora_config(cfg))
    return model
