"""Micro-batches for the loop: a map-style dataset over global micro-batch indices, and its DataLoader."""

from __future__ import annotations

import torch

from sftpipe.data.batches.collate import MicroBatch, TokenStore
from sftpipe.data.batches.plan import Layout, Plan


class MicroBatchSource(torch.utils.data.Dataset):
    """Map-style dataset over global micro-batch indices, so a DataLoader can build batches in workers."""

    def __init__(self, plan: Plan, layout: Layout, store: TokenStore, pad_id: int):
        self.plan, self.layout, self.store, self.pad_id = plan, layout, store, pad_id

    def __getitem__(self, global_micro_batch: int) -> MicroBatch:
        rows, real = self.plan.rows(global_micro_batch)
        return self.layout.collate(self.store, rows, self.pad_id, real)


def _as_is(item: MicroBatch) -> MicroBatch:
    return item


def micro_batch_loader(source: MicroBatchSource, start: int, stop: int, num_workers: int, pin_memory: bool
                       ) -> torch.utils.data.DataLoader:
    """Micro-batches `start` .. `stop - 1` in order (a resumed run starts mid-epoch at its data position).

    The loader gets a generator of its own: by default starting its iterator draws a seed from the global
    torch RNG, which would shift dropout masks between an uninterrupted and a resumed run.
    """
    return torch.utils.data.DataLoader(
        source, sampler=range(start, stop), batch_size=None, collate_fn=_as_is, num_workers=num_workers,
        pin_memory=pin_memory, prefetch_factor=4 if num_workers else None, generator=torch.Generator())
