"""Stage 2 of prepare: a deterministic train/val/test split, made before dedup.

Each example's place in the order is `split_key(content hash, seed)`: a function of its normalised
content and the seed only, so the split does not depend on file order, chunking or `num_proc`, and exact
duplicates always land in the same split. The first round(n * val) keys go to val, the next
round(n * test) to test, the rest to train: the ratios are exact, as with a seeded permutation (a cut
that would separate equal keys moves past them, so exact duplicates are never split apart).
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
    order = np.argsort(keys, kind="stable")
    ranked = keys[order]
    val_end = _cut(ranked, round(n * cfg.val))
    test_end = _cut(ranked, max(val_end, round(n * cfg.val) + round(n * cfg.test)))
    split = np.full(n, TRAIN, dtype=np.uint8)
    split[order[:val_end]] = VAL
    split[order[val_end:test_end]] = TEST
    return split


def _cut(ranked: np.ndarray, at: int) -> int:
    """`at`, moved forward past keys equal to the one before it (exact duplicates stay together)."""
    while 0 < at < len(ranked) and ranked[at] == ranked[at - 1]:
        at += 1
    return at
