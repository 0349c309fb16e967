"""Which examples each micro-batch holds: best-fit-decreasing packing, length grouping, fixed-size batches.

The algorithms are pure functions of example lengths (no tokens), so a plan is cheap to rebuild from the
seed on every start: that is what keeps the data position of a resumed run exact. Nothing here ever cuts an
example: over-long examples were dropped or truncated (and counted) by `prepare`; an example longer than a
row is an error here, not a silent truncation.

Three layouts, one plan interface (`micro_batches_per_epoch`, `rows(global_micro_batch)`):

- packed: examples are packed best-fit-decreasing into rows of `pack_length` tokens (`TokenBudgetPlan` of
  packed rows, collated by `collate_packed`, or `collate_flat` for a varlen attention).
- grouped: one example per row, rows of similar length together, as many as fit a token budget
  (`TokenBudgetPlan` of length groups, collated by `collate_padded`).
- padded: `micro_batch_size` examples per micro-batch (`FixedSizePlan`, collated by `collate_padded`).

Rows (packed) or groups (grouped) are built once from the example lengths and a seed; each epoch shuffles
them with (seed, epoch). A micro-batch is thus a pure function of its global index, which is the whole
data position a checkpoint needs, and every example is used exactly once per epoch.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from sftpipe.config.schema import TrainConfig
from sftpipe.data.batches.collate import MicroBatch, TokenStore, collate_flat, collate_packed, collate_padded
from sftpipe.data.batches.order import epoch_order, tie_break_order
from sftpipe.errors import SftpipeError


@dataclass(frozen=True)
class PackingStats:
    """Real tokens versus token slots of a set of rows (slots = rows x the length they are padded to)."""

    rows: int
    examples: int
    real_tokens: int
    slots: int

    @property
    def efficiency(self) -> float:
        return self.real_tokens / self.slots if self.slots else 1.0


def longest_first(lengths: np.ndarray, tie_order: Sequence[int] | None) -> list[int]:
    """Example indices, longest first; examples of equal length in their order in `tie_order` (default: index)."""
    tie = np.arange(lengths.size) if tie_order is None else np.asarray(tie_order)
    rank = np.empty_like(tie)
    rank[tie] = np.arange(tie.size)
    return np.lexsort((rank, -lengths)).tolist()


def pack_best_fit(lengths: Sequence[int], capacity: int, tie_order: Sequence[int] | None = None) -> list[list[int]]:
    """Best-fit-decreasing bin packing of examples into rows of `capacity` tokens.

    Examples are taken longest first; each goes into the open row whose free space is the smallest that
    still fits it, or opens a new row. Rows keep their examples in insertion order.

    Args:
        lengths: token count of every example.
        capacity: tokens per row.
        tie_order: a permutation of the example indices that orders examples of equal length (a seeded
            shuffle gives different, still deterministic, rows for different seeds). Default: index order.

    Returns:
        rows, each a list of example indices; every index appears in exactly one row.

    Raises:
        ValueError: an example is longer than `capacity` (it is never cut here).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size and int(lengths.max()) > capacity:
        raise ValueError(f"an example has {int(lengths.max())} tokens, more than the row capacity {capacity}")
    rows: list[list[int]] = []
    # free space -> rows with exactly that much space left; `sizes` is the sorted list of keys present,
    # so the best fit is one bisect away (the number of distinct free sizes is at most capacity + 1).
    by_free: dict[int, list[int]] = {}
    sizes: list[int] = []
    for index in longest_first(lengths, tie_order):
        need = int(lengths[index])
        at = bisect.bisect_left(sizes, need)
        if at < len(sizes):
            free = sizes[at]
            row = by_free[free].pop()
            if not by_free[free]:
                del by_free[free]
                sizes.pop(at)
        else:
            free, row = capacity, len(rows)
            rows.append([])
        rows[row].append(index)
        left = free - need
        if left > 0:
            if left not in by_free:
                by_free[left] = []
                bisect.insort(sizes, left)
            by_free[left].append(row)
    return rows


def group_by_length(lengths: Sequence[int], token_budget: int, tie_order: Sequence[int] | None = None
                    ) -> list[list[int]]:
    """Split examples into groups of similar length whose padded size (rows x longest) fits `token_budget`.

    The unpacked path: each example stays its own row, padded to the longest of its group, and sorting by
    length first keeps that padding small while the batch size adapts to the lengths.

    Raises:
        ValueError: an example alone is longer than `token_budget`.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size and int(lengths.max()) > token_budget:
        raise ValueError(f"an example has {int(lengths.max())} tokens, more than the token budget {token_budget}")
    groups: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in longest_first(lengths, tie_order):
        need = int(lengths[index])
        # sorted longest first, so the first member of a group is its longest
        if current and (len(current) + 1) * max(longest, need) > token_budget:
            groups.append(current)
            current, longest = [], 0
        current.append(index)
        longest = max(longest, need)
    if current:
        groups.append(current)
    return groups


def rows_stats(rows: Sequence[Sequence[int]], lengths: Sequence[int], padded_to: int | None = None) -> PackingStats:
    """Efficiency of `rows`, each padded to `padded_to` tokens (default: to the longest row)."""
    used = [sum(int(lengths[i]) for i in row) for row in rows]
    width = padded_to if padded_to is not None else max(used, default=0)
    return PackingStats(rows=len(rows), examples=sum(len(r) for r in rows), real_tokens=sum(used),
                        slots=width * len(rows))


class FixedSizePlan:
    """`micro_batch_size` examples per micro-batch, each rank taking every `world_size`-th example of the epoch.

    Args:
        num_examples: examples in the split.
        micro_batch_size: examples per micro-batch.
        seed: seeds the order of every epoch (see `epoch_order`).
        world_size, rank: processes of the run and this one's index.
        shuffle: False visits the examples in index order every epoch.
    """

    def __init__(self, num_examples: int, micro_batch_size: int, seed: int, world_size: int = 1, rank: int = 0,
                 shuffle: bool = True):
        self.num_examples, self.micro_batch_size = num_examples, micro_batch_size
        self.seed, self.world_size, self.rank, self.shuffle = seed, world_size, rank, shuffle

    @property
    def micro_batches_per_epoch(self) -> int:
        per_rank = math.ceil(self.num_examples / self.world_size)
        return max(1, math.ceil(per_rank / self.micro_batch_size))

    def indices(self, global_micro_batch: int) -> tuple[list[int], bool]:
        """Example indices of a micro-batch on this rank, and whether they are real.

        When the data does not split evenly over ranks, a rank may run out one micro-batch early; it then
        gets a stand-in batch (`real` False) whose labels the collation masks, so every rank still takes part
        in the collective steps while contributing zero loss and zero tokens.
        """
        epoch, index = divmod(global_micro_batch, self.micro_batches_per_epoch)
        shard = epoch_order(self.num_examples, self.seed, epoch, self.shuffle)[self.rank :: self.world_size]
        chunk = shard[index * self.micro_batch_size : (index + 1) * self.micro_batch_size]
        if chunk:
            return chunk, True
        return shard[:1] or [0], False

    def rows(self, global_micro_batch: int) -> tuple[list[list[int]], bool]:
        """`indices` in the row interface of `TokenBudgetPlan`: one example per row."""
        indices, real = self.indices(global_micro_batch)
        return [[i] for i in indices], real


class TokenBudgetPlan:
    """Micro-batches made of fixed units (packed rows or length groups), shuffled per epoch, sharded by rank.

    Args:
        units: each unit is a list of rows, each row a list of example indices.
        units_per_batch: units concatenated into one micro-batch.
        seed, world_size, rank, shuffle: as for `FixedSizePlan`; rank r takes micro-batches r, r + W, ... of an
            epoch.
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
        """The order of the units in `epoch` (kept for the current epoch: every micro-batch asks for it)."""
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, epoch_order(len(self.units), self.seed, epoch, self.shuffle))
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


Plan = FixedSizePlan | TokenBudgetPlan
# rows of example indices -> model inputs: (store, rows, pad_id, real) -> MicroBatch
Collate = Callable[[TokenStore, list[list[int]], int, bool], MicroBatch]


@dataclass(frozen=True)
class Layout:
    """How a plan's rows become model inputs (`collate`), and the figures a run logs about its batches."""

    name: str  # packed | grouped | padded: the `batching` figure of the run's speed record (for logs only)
    collate: Collate
    pack_length: int = 0  # row capacity of the packed layout
    rows_per_batch: int = 0  # packed rows per micro-batch
    planned_efficiency: float = float("nan")  # real tokens / token slots over one epoch, as planned

    def describe(self) -> dict:
        planned = None if math.isnan(self.planned_efficiency) else round(self.planned_efficiency, 5)
        return {"batching": self.name, "flat_rows": self.collate is collate_flat, "pack_length": self.pack_length,
                "rows_per_batch": self.rows_per_batch, "planned_packing_efficiency": planned}


def build_plan(tc: TrainConfig, lengths: np.ndarray, data_max_length: int, world_size: int, rank: int,
               flat: bool = False) -> tuple[Plan, Layout]:
    """The micro-batch plan `tc` asks for over examples of `lengths`, and how to collate it.

    Args:
        flat: packed rows of a micro-batch go into one padding-free row (for a varlen attention).

    Raises:
        SftpipeError: a row or token budget smaller than the longest example (examples are never cut here).
    """
    longest = int(lengths.max())
    ties = tie_break_order(len(lengths), tc.seed)
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
        rows = pack_best_fit(lengths, pack_length, ties)
        rows_per_batch = budget // pack_length
        efficiency = 1.0 if flat else rows_stats(rows, lengths, pack_length).efficiency
        plan = TokenBudgetPlan([[row] for row in rows], rows_per_batch, tc.seed, world_size, rank)
        return plan, Layout("packed", collate_flat if flat else collate_packed, pack_length, rows_per_batch,
                            efficiency)
    if tc.tokens_per_batch:
        if longest > tc.tokens_per_batch:
            raise SftpipeError(f"train.tokens_per_batch={tc.tokens_per_batch}: the longest train example has "
                               f"{longest} tokens; raise the budget to at least {longest}")
        groups = group_by_length(lengths, tc.tokens_per_batch, ties)
        slots = sum(len(g) * int(lengths[g].max()) for g in groups)
        plan = TokenBudgetPlan([[[i] for i in g] for g in groups], 1, tc.seed, world_size, rank)
        return plan, Layout("grouped", collate_padded, planned_efficiency=float(lengths.sum()) / slots)
    plan = FixedSizePlan(len(lengths), tc.micro_batch_size, tc.seed, world_size, rank)
    return plan, Layout("padded", collate_padded)
