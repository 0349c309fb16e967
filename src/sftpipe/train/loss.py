"""Loss as a token SUM, so that callers can normalise by the supervised tokens of a whole optimizer step.

A mean per micro-batch (then averaged over micro-batches) weights a 3-token answer like a 300-token one;
summing here and dividing once by the step's token count is what an unaccumulated large batch computes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sftpipe.data.tokenize import IGNORE_INDEX


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
