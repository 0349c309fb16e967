"""Stage 2 of prepare: a deterministic train/val/test split, made before dedup.

Each example's place in the order is `split_key(content hash, seed)`: a function of its normalised
content and the seed only, so the split does not depend on file order, chunking or `num_proc`, and exact
duplicates always land in the same split. The first round(n * val) keys go to val, the next
round(n * test) to test, the rest to train: the ratios are exact, as with a seeded permutation.
Only an array of keys (8 bytes per example) is held.
"""

from __future__ import annotations

import numpy as np

from sftpipe.config.schema import SplitConfig

TRAIN, VAL, TEST = 0, 1, 2
SPLIT_NAMES = {TRAIN: "train", VAL: "val", TEST: "test"}


def assign_splits(keys: np.ndarray, cfg: SplitConfig) -> np.ndarray:
    """Split code (TRAIN, VAL, TEST) of each example, as a uint8 array aligned with `keys`."""
    n = len(keys)
    n_val = round(n * cfg.val)
    n_test = round(n * cfg.test)
    order = np.argsort(keys, kind="stable")
    split = np.full(n, TRAIN, dtype=np.uint8)
    split[order[:n_val]] = VAL
    split[order[n_val : n_val + n_test]] = TEST
    return split
