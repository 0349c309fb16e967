"""Deterministic micro-batch order and padding collation.

The order of epoch e is a permutation seeded by (seed, e), so any micro-batch can be found again from
its global index alone: that index is the whole data position a checkpoint needs to store.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sftpipe.data.tokenize import IGNORE_INDEX


@dataclass(frozen=True)
class BatchPlan:
    """Which examples each rank's micro-batches hold, for every epoch."""

    num_examples: int
    micro_batch_size: int
    seed: int
    world_size: int = 1
    rank: int = 0
    shuffle: bool = True

    @property
    def micro_batches_per_epoch(self) -> int:
        per_rank = math.ceil(self.num_examples / self.world_size)
        return max(1, math.ceil(per_rank / self.micro_batch_size))

    def epoch_order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_examples))
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_examples, generator=gen).tolist()

    def indices(self, global_micro_batch: int) -> tuple[list[int], bool]:
        """Example indices of a micro-batch on this rank, and whether they are real.

        When the data does not split evenly over ranks, a rank may run out one micro-batch early; it then
        gets a stand-in batch (`real` False) whose labels the caller masks, so every rank still takes part
        in the collective steps while contributing zero loss and zero tokens.
        """
        epoch, index = divmod(global_micro_batch, self.micro_batches_per_epoch)
        shard = self.epoch_order(epoch)[self.rank :: self.world_size]
        chunk = shard[index * self.micro_batch_size : (index + 1) * self.micro_batch_size]
        if chunk:
            return chunk, True
        return shard[:1] or [0], False

    def rows(self, global_micro_batch: int) -> tuple[list[list[int]], bool]:
        """`indices` in the row interface of the other plans (`TokenBudgetPlan`): one example per row."""
        indices, real = self.indices(global_micro_batch)
        return [[i] for i in indices], real


def collate(rows: list[dict], pad_id: int, real: bool = True) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row. Padding is masked by position, never by token id (pad may equal eos)."""
    longest = max(len(r["input_ids"]) for r in rows)
    input_ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        input_ids[i, :n] = torch.tensor(row["input_ids"])
        attention_mask[i, :n] = 1
        if real:
            labels[i, :n] = torch.tensor(row["labels"])
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
