"""Micro-batches for the loop: packed rows, length-grouped rows, or fixed-size padded batches.

Three layouts, one plan interface (`micro_batches_per_epoch`, `rows(global_micro_batch)`):

- packed: examples are packed best-fit-decreasing into rows of `pack_length` tokens, `position_ids` restart
  at each example and there is no attention mask, so transformers builds block-causal masks (SDPA/eager);
  with a varlen attention (flash-attention 2, or sftpipe's sdpa_varlen) the rows of a micro-batch are
  concatenated into one padding-free row with its sequence boundaries (`flat`).
- grouped: one example per row, rows of similar length together, as many as fit a token budget.
- padded: `micro_batch_size` examples per row batch (`BatchPlan`, the behaviour before packing existed).

Rows (packed) or groups (grouped) are built once from the example lengths and a seed; each epoch shuffles
them with (seed, epoch). A micro-batch is thus a pure function of its global index, which is the whole
data position a checkpoint needs, and every example is used exactly once per epoch.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import NamedTuple

import datasets
import numpy as np
import torch

from sftpipe.config.schema import TrainConfig
from sftpipe.data.packing import group_by_length, pack_best_fit, rows_stats
from sftpipe.data.tokenize import IGNORE_INDEX
from sftpipe.errors import SftpipeError
from sftpipe.train.batching import BatchPlan

log = logging.getLogger(__name__)


class TokenStore:
    """`input_ids` and `labels` of a split as flat int32 arrays plus offsets, read once from Arrow.

    Slicing these is what collation does for every micro-batch; going through `Dataset.select` instead
    costs more than a forward pass of a small model.
    """

    def __init__(self, dataset: datasets.Dataset):
        table = dataset.with_format("arrow")[:]
        ids = table.column("input_ids").combine_chunks()
        labels = table.column("labels").combine_chunks()
        self.offsets = ids.offsets.to_numpy().astype(np.int64)
        if not np.array_equal(self.offsets, labels.offsets.to_numpy()):
            raise SftpipeError("data dir: input_ids and labels differ in length for some example; re-run prepare")
        self.input_ids = ids.values.to_numpy(zero_copy_only=False)
        self.labels = labels.values.to_numpy(zero_copy_only=False)
        self.lengths = np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.lengths)

    def example(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        start, end = self.offsets[index], self.offsets[index + 1]
        return self.input_ids[start:end], self.labels[start:end]


class TokenBudgetPlan:
    """Micro-batches made of fixed units (packed rows or length groups), shuffled per epoch, sharded by rank.

    Args:
        units: each unit is a list of rows, each row a list of example indices.
        units_per_batch: units concatenated into one micro-batch.
        seed, world_size, rank: as for `BatchPlan`; rank r takes micro-batches r, r + W, ... of an epoch.
    """

    def __init__(self, units: list[list[list[int]]], units_per_batch: int, seed: int, world_size: int = 1,
                 rank: int = 0, shuffle: bool = True):
        self.units = units
        self.units_per_batch = units_per_batch
        self.seed, self.world_size, self.rank, self.shuffle = seed, world_size, rank, shuffle
        self.batches_per_epoch = math.ceil(len(units) / units_per_batch)
        self._epoch: tuple[int, list[int]] | None = None

    @property
    def micro_batches_per_epoch(self) -> int:
        """Micro-batches each rank runs per epoch (ranks with fewer real ones get stand-ins)."""
        return max(1, math.ceil(self.batches_per_epoch / self.world_size))

    def epoch_order(self, epoch: int) -> list[int]:
        if self._epoch is None or self._epoch[0] != epoch:
            if self.shuffle:
                gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                order = torch.randperm(len(self.units), generator=gen).tolist()
            else:
                order = list(range(len(self.units)))
            self._epoch = (epoch, order)
        return self._epoch[1]

    def rows(self, global_micro_batch: int) -> tuple[list[list[int]], bool]:
        """Rows (lists of example indices) of this rank's micro-batch, and whether they are real.

        A rank past the end of the epoch's micro-batches gets a stand-in (`real` False) whose labels the
        collation masks: it takes part in the collectives and contributes zero loss and zero tokens.
        """
        epoch, index = divmod(global_micro_batch, self.micro_batches_per_epoch)
        order = self.epoch_order(epoch)
        batch = index * self.world_size + self.rank
        real = batch < self.batches_per_epoch
        if not real:
            batch = 0
        picked = order[batch * self.units_per_batch : (batch + 1) * self.units_per_batch]
        return [row for unit in picked for row in self.units[unit]], real


@dataclass(frozen=True)
class Layout:
    """How the loop batches: which plan, how rows become tensors, and the figures to report."""

    kind: str  # packed | grouped | padded
    flat: bool  # packed rows concatenated into one padding-free row (varlen attention)
    pack_length: int  # row capacity of the packed layout (0 otherwise)
    rows_per_batch: int  # packed rows per micro-batch (0 otherwise)
    planned_efficiency: float  # real tokens / token slots over one epoch, as planned

    def describe(self) -> dict:
        planned = None if math.isnan(self.planned_efficiency) else round(self.planned_efficiency, 5)
        return {"batching": self.kind, "flat_rows": self.flat, "pack_length": self.pack_length,
                "rows_per_batch": self.rows_per_batch, "planned_packing_efficiency": planned}


def build_plan(tc: TrainConfig, lengths: np.ndarray, data_max_length: int, world_size: int, rank: int,
               flat: bool = False) -> tuple[TokenBudgetPlan | BatchPlan, Layout]:
    """The micro-batch plan `tc` asks for over examples of `lengths`.

    Raises:
        SftpipeError: a row or token budget smaller than the longest example (examples are never cut here).
    """
    longest = int(lengths.max())
    tie_order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(tc.seed)).numpy()
    if tc.packing:
        pack_length = tc.pack_length or data_max_length
        if longest > pack_length:
            raise SftpipeError(
                f"train.pack_length={pack_length}: the longest train example has {longest} tokens; set "
                f"train.pack_length >= {longest} (examples are never cut during training; data.max_length and "
                "data.overlong decide that in prepare)")
        budget = tc.tokens_per_batch or tc.micro_batch_size * pack_length
        if budget < pack_length:
            raise SftpipeError(f"train.tokens_per_batch={budget} is smaller than one packed row "
                               f"(train.pack_length={pack_length}); raise it to at least {pack_length}")
        rows = pack_best_fit(lengths, pack_length, tie_order)
        rows_per_batch = budget // pack_length
        stats = rows_stats(rows, lengths, None if flat else pack_length)
        efficiency = 1.0 if flat else stats.efficiency
        plan = TokenBudgetPlan([[row] for row in rows], rows_per_batch, tc.seed, world_size, rank)
        return plan, Layout("packed", flat, pack_length, rows_per_batch, efficiency)
    if tc.tokens_per_batch:
        if longest > tc.tokens_per_batch:
            raise SftpipeError(f"train.tokens_per_batch={tc.tokens_per_batch}: the longest train example has "
                               f"{longest} tokens; raise the budget to at least {longest}")
        groups = group_by_length(lengths, tc.tokens_per_batch, tie_order)
        slots = sum(len(g) * int(lengths[g].max()) for g in groups)
        plan = TokenBudgetPlan([[[i] for i in g] for g in groups], 1, tc.seed, world_size, rank)
        return plan, Layout("grouped", False, 0, 0, float(lengths.sum()) / slots)
    plan = BatchPlan(len(lengths), tc.micro_batch_size, tc.seed, world_size, rank)
    return plan, Layout("padded", False, 0, 0, float("nan"))


class MicroBatch(NamedTuple):
    """Model inputs of one micro-batch plus the figures the loop logs."""

    inputs: dict[str, torch.Tensor]
    real_tokens: int  # tokens that are not padding
    slots: int  # token positions computed (real + padding)
    real: bool


def collate_padded(store: TokenStore, rows: list[list[int]], pad_id: int, real: bool = True) -> MicroBatch:
    """One example per row, right-padded to the longest; padding masked by position (pad may equal eos)."""
    examples = [store.example(row[0]) for row in rows]
    width = max(len(ids) for ids, _ in examples)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    labels = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, (ids, lab) in enumerate(examples):
        input_ids[i, : len(ids)] = ids
        attention_mask[i, : len(ids)] = 1
        if real:
            labels[i, : len(ids)] = lab
    inputs = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
    return MicroBatch({k: torch.from_numpy(v) for k, v in inputs.items()}, int(attention_mask.sum()),
                      input_ids.size, real)


def collate_packed(store: TokenStore, rows: list[list[int]], pad_id: int, real: bool = True) -> MicroBatch:
    """Packed rows padded to the longest row; `position_ids` restart at 0 for every example.

    The first label of every example is ignored: unpacked, nothing predicts it (there is no token before);
    packed, the previous example's last token would. Row padding forms one more segment of its own
    (positions from 0 again, labels ignored), so no real token attends to it.
    """
    used = [sum(int(store.lengths[i]) for i in row) for row in rows]
    width = max(used)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    labels = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
    position_ids = np.zeros((len(rows), width), dtype=np.int64)
    ramp = np.arange(width)
    for r, row in enumerate(rows):
        at = 0
        for index in row:
            ids, lab = store.example(index)
            n = len(ids)
            input_ids[r, at : at + n] = ids
            position_ids[r, at : at + n] = ramp[:n]
            if real:
                labels[r, at + 1 : at + n] = lab[1:]
            at += n
        position_ids[r, at:] = ramp[: width - at]
    inputs = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
    return MicroBatch({k: torch.from_numpy(v) for k, v in inputs.items()}, sum(used), input_ids.size, real)


def collate_flat(store: TokenStore, rows: list[list[int]], pad_id: int, real: bool = True) -> MicroBatch:
    """All examples of the micro-batch in one row without padding, for varlen attention (flash, sdpa_varlen).

    Sequence boundaries are passed as `cu_seq_lens_*`/`max_length_*` so the model need not derive them
    from `position_ids` (which costs a device-to-host sync in every layer).
    """
    order = [i for row in rows for i in row]
    packed = collate_packed(store, [order], pad_id, real)
    lengths = torch.tensor([0] + [int(store.lengths[i]) for i in order])
    cu = torch.cumsum(lengths, 0, dtype=torch.int32)
    longest = int(lengths.max())
    inputs = dict(packed.inputs, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest)
    return MicroBatch(inputs, packed.real_tokens, packed.slots, real)


class MicroBatchSource(torch.utils.data.Dataset):
    """Map-style dataset over global micro-batch indices, so a DataLoader can build batches in workers."""

    def __init__(self, plan: TokenBudgetPlan | BatchPlan, layout: Layout, store: TokenStore, pad_id: int):
        self.plan, self.layout, self.store, self.pad_id = plan, layout, store, pad_id

    def __getitem__(self, global_micro_batch: int) -> MicroBatch:
        rows, real = self.plan.rows(global_micro_batch)
        if self.layout.kind != "packed":
            return collate_padded(self.store, rows, self.pad_id, real)
        if self.layout.flat:
            return collate_flat(self.store, rows, self.pad_id, real)
        return collate_packed(self.store, rows, self.pad_id, real)


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
