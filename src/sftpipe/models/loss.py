"""Loss as a token SUM, so that callers can normalise by the supervised tokens of a whole optimizer step; and
the teacher-forced metrics (`LossMetrics`) that validation during training and the eval stage report.

A mean per micro-batch (then averaged over micro-batches) weights a 3-token answer like a 300-token one;
summing here and dividing once by the step's token count is what an unaccumulated large batch computes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from sftpipe.data.records import IGNORE_INDEX



@dataclass
class LossMetrics:
    """Token-weighted loss and accuracies of a model on a split (see `sftpipe.evaluate.metrics.evaluate_loss`)."""

    loss: float
    perplexity: float
    token_accuracy: float
    sequence_accuracy: float
    tokens: int
    examples: int

    def as_dict(self, prefix: str = "") -> dict[str, float | int]:
        return {f"{prefix}{k}": v for k, v in asdict(self).items()}


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """Targets aligned with logits: position t predicts labels[t + 1]; the last position predicts nothing."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed cross-entropy over supervised tokens.

    Args:
        logits: (batch, seq, vocab), any float dtype (upcast to fp32 inside the loss).
        labels: (batch, seq) unshifted labels with IGNORE_INDEX on unsupervised positions.

    Returns:
        (loss_sum, num_tokens, num_correct): loss_sum is differentiable; the counts are int64 tensors.
    """
    targets = shifted_targets(labels)
    flat_logits = logits.reshape(-1, logits.size(-1)).float()
    flat_targets = targets.reshape(-1)
    loss_sum = F.cross_entropy(flat_logits, flat_targets, ignore_index=IGNORE_INDEX, reduction="sum")
    supervised = flat_targets != IGNORE_INDEX
    with torch.no_grad():
        correct = (flat_logits.argmax(dim=-1) == flat_targets) & supervised
    return loss_sum, supervised.sum(), correct.sum()


# Bytes of fp32 logits one chunk of the chunked cross-entropy may hold (rows = budget / (4 * vocab)).
CHUNK_LOGITS_BYTES = 256 * 2**20


def linear_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                             chunk_tokens: int = 0) -> torch.Tensor:
    """Summed cross-entropy of `hidden @ weight.T` against `targets`, never holding more than one chunk of logits.

    The LM head is applied to `chunk_tokens` rows at a time and the gradients with respect to `hidden` and
    `weight` are computed chunk by chunk inside the forward pass, so neither the forward nor the backward
    ever holds the (tokens x vocab) fp32 logits at once, and nothing is recomputed. Liger's fused linear
    cross-entropy does the same with Triton kernels on GPU; this is the portable version (CPU, any GPU).

    Args:
        hidden: (tokens, hidden) final hidden states of the supervised positions only.
        weight: (vocab, hidden) LM head weight (no bias).
        targets: (tokens,) target ids; no ignore index (select supervised positions before calling).
        chunk_tokens: rows per chunk; 0 picks the largest chunk whose fp32 logits fit in CHUNK_LOGITS_BYTES.

    Returns:
        the loss sum, an fp32 scalar (fp64 for fp64 inputs); differentiable in `hidden` and `weight`.
    """
    if chunk_tokens <= 0:
        chunk_tokens = max(1, CHUNK_LOGITS_BYTES // (4 * weight.size(0)))
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    if not needs_grad:
        return _chunked_loss_sum(hidden, weight, targets, chunk_tokens)
    return _LinearCrossEntropySum.apply(hidden, weight, targets, chunk_tokens)


@torch.no_grad()
def _chunked_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    acc = torch.promote_types(hidden.dtype, torch.float32)
    total = torch.zeros((), dtype=acc, device=hidden.device)
    w = weight.to(hidden.dtype)
    for start in range(0, hidden.size(0), chunk):
        logits = (hidden[start : start + chunk] @ w.T).to(acc)
        total += _softmax_cross_entropy_(logits, targets[start : start + chunk])[0]
        del logits  # before the next chunk's logits exist: one chunk at a time
    return total


def _softmax_cross_entropy_(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, softmax) of one chunk, computed in place over `logits`.

    torch.logsumexp and softmax would each allocate chunk-sized temporaries; this holds the chunk alone.
    """
    shift = logits.amax(-1, keepdim=True)
    target = logits.gather(1, targets[:, None]).squeeze(1)
    probs = logits.sub_(shift).exp_()
    sums = probs.sum(-1, keepdim=True)
    loss = (shift.squeeze(1) + sums.log().squeeze(1) - target).sum()
    return loss, probs.div_(sums)


class _LinearCrossEntropySum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk):  # noqa: ANN001 - autograd signature
        need_h, need_w = hidden.requires_grad, weight.requires_grad
        # Matmuls run in the hidden states' dtype (what autocast would pick); softmax and sums in fp32.
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            w = weight.to(hidden.dtype)
            acc = torch.promote_types(hidden.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
            total = torch.zeros((), dtype=acc, device=hidden.device)
            grad_h = torch.empty_like(hidden) if need_h else None
            grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
            for start in range(0, hidden.size(0), chunk):
                h = hidden[start : start + chunk]
                t = targets[start : start + chunk]
                logits = (h @ w.T).to(acc)
                loss, probs = _softmax_cross_entropy_(logits, t)
                total += loss
                # d(sum CE)/d logits = softmax - onehot, in place over the chunk
                probs[torch.arange(t.numel(), device=t.device), t] -= 1.0
                probs = probs.to(h.dtype)
                if need_h:
                    grad_h[start : start + chunk] = probs @ w
                if need_w:
                    grad_w.addmm_(probs.T.to(acc), h.to(acc))  # accumulated in fp32 across chunks
                del logits, probs  # before the next chunk's logits exist: one chunk at a time
        # Kept on ctx, not through save_for_backward: backward drops ctx's reference before handing them out,
        # so autograd can take the head's gradient as the parameter's .grad instead of copying it.
        ctx.grads = (grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001 - autograd signature
        # The gradients were computed in the forward pass and are scaled in place here (no copy of the head's
        # vocab x hidden gradient), so they can be handed out once only: a second backward through the same
        # graph (retain_graph=True) is an error, never the scaled gradients again.
        if ctx.grads is None:
            raise RuntimeError("linear_cross_entropy_sum: backward ran twice through the same graph; its gradients "
                               "are computed in the forward pass and given out once (do not use retain_graph=True)")
        grad_h, grad_w = ctx.grads
        ctx.grads = None
        if grad_h is not None:
            grad_h.mul_(grad_out.to(grad_h.dtype))
        if grad_w is not None:
            grad_w = grad_w.mul_(grad_out).to(ctx.weight_dtype)  # no copy when the weight is fp32
        return grad_h, grad_w, None, None
