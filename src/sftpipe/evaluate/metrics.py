"""Teacher-forced metrics on a prepared split: loss, perplexity, token and sequence accuracy."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch
from datasets import Dataset

from sftpipe.data.batches.collate import TokenStore, collate_padded
from sftpipe.data.records import IGNORE_INDEX
from sftpipe.models.loss import LossMetrics, shifted_targets

__all__ = ["LossMetrics", "SourceLossMetrics", "combine_loss", "evaluate_loss"]


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


@dataclass
class SourceLossMetrics(LossMetrics):
    """Metrics over several splits together (as if concatenated), with each split's own as `by_source`."""

    by_source: dict[str, LossMetrics] = field(default_factory=dict)

    def as_dict(self, prefix: str = "") -> dict[str, float | int]:
        """The overall figures, plus `<prefix>loss/<name>` and `<prefix>tokens/<name>` per source."""
        figures = {f"{prefix}{f.name}": getattr(self, f.name) for f in fields(LossMetrics)}
        for name, metrics in self.by_source.items():
            figures[f"{prefix}loss/{name}"] = metrics.loss
            figures[f"{prefix}tokens/{name}"] = metrics.tokens
        return figures


def combine_loss(by_source: dict[str, LossMetrics]) -> SourceLossMetrics:
    """The metrics of the splits taken together: token-weighted (sequence accuracy: example-weighted).

    Sources without supervised tokens add nothing (their loss is NaN and weighs 0).
    """
    parts = [m for m in by_source.values() if m.tokens]
    tokens = sum(m.tokens for m in parts)
    examples = sum(m.examples for m in by_source.values())
    loss = sum(m.loss * m.tokens for m in parts) / tokens if tokens else float("nan")
    return SourceLossMetrics(
        loss=loss,
        perplexity=math.exp(min(loss, 50.0)) if tokens else float("nan"),
        token_accuracy=sum(m.token_accuracy * m.tokens for m in parts) / tokens if tokens else float("nan"),
        sequence_accuracy=(sum(m.sequence_accuracy * m.examples for m in parts) / examples if examples
                           else float("nan")),
        tokens=tokens,
        examples=examples,
        by_source=dict(by_source),
    )
