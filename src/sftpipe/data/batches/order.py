"""The order examples are visited in: a permutation per epoch, seeded by (seed, epoch) alone.

Every plan shuffles through `epoch_order`, so any micro-batch can be found again from its global index:
that index is the whole data position a checkpoint needs to store.
"""

from __future__ import annotations

import numpy as np
import torch


def epoch_order(size: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """A permutation of `range(size)` for `epoch` (the identity when not `shuffle`)."""
    if not shuffle:
        return list(range(size))
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(size, generator=gen).tolist()


def tie_break_order(size: int, seed: int) -> np.ndarray:
    """A seeded permutation of `range(size)` that orders examples of equal length when packing or grouping."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed)).numpy()
