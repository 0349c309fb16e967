"""Stage 3 of prepare: remove exact and near duplicates, after the split.

Examples are visited test first, then val, then train (each in input order). An example is removed when
it is an exact or near duplicate of an example already kept: a duplicate within its own split is
`exact_duplicate` / `near_duplicate`; a near duplicate of a more protected split (train of val or test,
val of test) is contamination (`contamination_near`), so near-duplicates never straddle train and test:
the train copy goes. (Exact duplicates share their split key, so the split never separates them.)
`Removals` records what this stage and the next (`decontam.py`) remove, and what each removal collides with.

Memory: only examples that can have a duplicate enter the indexes (a repeated content hash; an LSH band
shared with another example), so the exact index (~100 bytes an entry) and datasketch's LSH (~3.5 KB an
entry at the defaults) grow with the duplicates, not the input; signatures and locations stay on disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sftpipe.config.data_sections import DedupConfig
from sftpipe.data.prepare.fingerprint import NearDuplicateIndex, SignatureStore, repeated
from sftpipe.data.prepare.split import SPLIT_NAMES, TEST, TRAIN, VAL

KEPT, EXACT_DUP, NEAR_DUP, CONTAM_NEAR, CONTAM_NGRAM = range(5)
REASONS = {
    EXACT_DUP: ("dedup", "exact_duplicate"),
    NEAR_DUP: ("dedup", "near_duplicate"),
    CONTAM_NEAR: ("decontam", "contamination_near"),
    CONTAM_NGRAM: ("decontam", "contamination_ngram"),
}
BLOCK_ROWS = 8192


@dataclass
class Removals:
    """Per example: status (KEPT or a removal code), the example or eval item it collides with, similarity."""

    status: np.ndarray  # uint8
    other: np.ndarray  # int64: the row it collides with (>= 0), or -1 - k for eval item k; unused when kept
    similarity: np.ndarray  # float32, NaN unless near duplicate
    eval_items: list[tuple[str, str]] = field(default_factory=list)  # (eval set name, location)

    @classmethod
    def none(cls, n: int) -> Removals:
        return cls(np.zeros(n, dtype=np.uint8), np.full(n, np.iinfo(np.int64).min, dtype=np.int64),
                   np.full(n, np.nan, dtype=np.float32))

    def mark(self, row: int, code: int, other: int, similarity: float = float("nan")) -> None:
        self.status[row] = code
        self.other[row] = other
        self.similarity[row] = similarity


def find_duplicates(digest: np.ndarray, split: np.ndarray, signatures: SignatureStore | None,
                    cfg: DedupConfig, work: Path) -> Removals:
    """Exact and near duplicates, test first, then val, then train (see the module docstring).

    Only examples that can have a duplicate are indexed: those whose content hash occurs more than once
    (exact), and those sharing an LSH band with another example (near). Finding them takes a sort of
    8-byte values per example, so the indexes hold candidates, not the whole input.
    """
    n = len(digest)
    removals = Removals.none(n)
    exact = repeated(digest) if cfg.exact else np.zeros(n, dtype=bool)
    near = NearDuplicateIndex(cfg.threshold, cfg.num_perm, signatures) if cfg.near and signatures is not None else None
    near_rows = near.colliding_rows(n, work) if near is not None else np.zeros(n, dtype=bool)
    seen: dict[int, int] = {}
    for code in (TEST, VAL, TRAIN):
        for start in range(0, n, BLOCK_ROWS):
            stop = min(n, start + BLOCK_ROWS)
            in_split = split[start:stop] == code
            rows = np.flatnonzero(in_split & (exact[start:stop] | near_rows[start:stop]))
            if not len(rows):
                continue
            block = signatures.read(start, stop - start) if near is not None and signatures is not None else None
            for local in rows.tolist():
                row = start + local
                d = int(digest[row])
                if exact[row] and d in seen:
                    other = seen[d]
                    assert split[other] == code, "the split keeps exact duplicates together"
                    removals.mark(row, EXACT_DUP, other)
                    continue
                if near is not None and block is not None and near_rows[row]:
                    hit = near.find(block[local])
                    if hit is not None:
                        other, similarity = hit
                        removals.mark(row, NEAR_DUP if split[other] == code else CONTAM_NEAR, other, similarity)
                        continue
                    near.add(row, block[local])
                if exact[row]:
                    seen[d] = row
    return removals


def against(removals: Removals, split: np.ndarray, row: int) -> tuple[str, int | None, str | None]:
    """What example `row` collides with: (split name or 'eval:<set>', its row or None, eval location)."""
    other = int(removals.other[row])
    if other < 0:
        name, location = removals.eval_items[-1 - other]
        return f"eval:{name}", None, location
    return SPLIT_NAMES[int(split[other])], other, None
