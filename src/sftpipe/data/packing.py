"""Group examples into rows and micro-batches by length: best-fit-decreasing packing and length grouping.

Pure functions of example lengths (no tokens, no torch), so a plan is cheap to rebuild from the seed on
every start: that is what keeps the data position of a resumed run exact. Nothing here ever cuts an
example: over-long examples were dropped or truncated (and counted) by `prepare`; an example longer
than a row is an error here, not a silent truncation.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


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
