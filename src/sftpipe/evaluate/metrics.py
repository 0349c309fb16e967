"""Teacher-forced metrics on a prepared split: loss, perplexity, token and sequence accuracy."""

from __future__ import annotations

import math

import torch
from datasets import Dataset

from sftpipe.data.batches.collate import TokenStore, collate_padded
from sftpipe.data.records import IGNORE_INDEX
from sftpipe.models.loss import LossMetrics, shifted_targets

__all__ = ["LossMetrics", "evaluate_loss"]


@torch.no_grad()
def evaluate_loss(
    model: torch.nn.Module,
    dataset: Dataset,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    reduce=None,
) -> LossMetrics:
    """Token-weighted metrics over `dataset` (this rank's shard; `reduce` sums tensors over ranks).

    Sequence accuracy: fraction of examples whose every supervised token is predicted correctly (greedy).
    """
    was_training = model.training
    model.eval()
    totals = torch.zeros(5, dtype=torch.float64, device=device)  # loss, tokens, correct, exact, examples
    indices = list(range(rank, len(dataset), world_size))
    store = TokenStore(dataset) if len(dataset) else None
    # Every rank runs the same number of forward passes (a rank short of a batch runs a stand-in that is not
    # counted): a sharded (FSDP) model gathers each layer's weights from all ranks in every forward.
    passes = math.ceil(math.ceil(len(dataset) / world_size) / batch_size)
    for start in range(0, passes * batch_size, batch_size):
        rows = [[i] for i in indices[start : start + batch_size]]
        batch = {k: v.to(device) for k, v in collate_padded(store, rows or [[0]], pad_id).inputs.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        if not rows:
            continue
        targets = shifted_targets(batch["labels"])
        supervised = targets != IGNORE_INDEX
        token_loss = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
        )
        correct = (logits.argmax(-1) == targets) & supervised
        totals[0] += token_loss.sum().double()
        totals[1] += supervised.sum()
        totals[2] += correct.sum()
        totals[3] += (correct.sum(1) == supervised.sum(1)).sum()
        totals[4] += len(rows)
    if reduce is not None:
        totals = reduce(totals)
    model.train(was_training)
    loss_sum, tokens, correct, exact, examples = totals.tolist()
    loss = loss_sum / tokens if tokens else float("nan")
    return LossMetrics(
        loss=loss,
        perplexity=math.exp(min(loss, 50.0)) if tokens else float("nan"),
        token_accuracy=correct / tokens if tokens else float("nan"),
        sequence_accuracy=exact / examples if examples else float("nan"),
        tokens=int(tokens),
        examples=int(examples),
    )
