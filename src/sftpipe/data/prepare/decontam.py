"""Stage 3 of prepare: remove duplicates and contamination, after the split.

Examples are visited test first, then val, then train (each in input order). An example is removed when
it is an exact or near duplicate of an example already kept: a duplicate within its own split is
`exact_duplicate` / `near_duplicate`; a near duplicate of a more protected split (train of val or test,
val of test) is contamination (`contamination_near`), so near-duplicates never straddle train and test:
the train copy goes. (Exact duplicates share their split key, so the split never separates them.)
Then train examples sharing a word n-gram with an eval set (and, if asked, with val/test) are removed
as `contamination_ngram`.

Memory: only examples that can have a duplicate enter the indexes (a repeated content hash; an LSH band
shared with another example), so the exact index (~100 bytes an entry) and datasketch's LSH (~3.5 KB an
entry at the defaults) grow with the duplicates, not the input; signatures and locations stay on disk.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sftpipe.config.data_sections import DecontamConfig, DedupConfig, EvalSetConfig
from sftpipe.config.schema import SourceConfig
from sftpipe.data.prepare.fingerprint import (
    WORD_RE,
    NearDuplicateIndex,
    NgramIndex,
    SignatureStore,
    compared_turns,
    normalize,
    repeated,
    words_of,
)
from sftpipe.data.readers import read_source
from sftpipe.data.records import Conversation, RecordError
from sftpipe.data.prepare.split import SPLIT_NAMES, TEST, TRAIN, VAL
from sftpipe.errors import SftpipeError

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


def find_ngram_overlaps(removals: Removals, split: np.ndarray, chunks: list[tuple[int, str]],
                        cfg: DecontamConfig) -> None:
    """Mark kept train examples sharing a word n-gram with an eval set (or val/test, if configured).

    `chunks` are (first row, Arrow file) of the scanned examples, in row order.
    """
    if not cfg.eval_sets and not cfg.ngram_against_splits:
        return
    from sftpipe.data.prepare.scan import read_chunk

    index = NgramIndex(cfg.ngram)
    for k, (name, location, text) in enumerate(read_eval_sets(cfg.eval_sets)):
        removals.eval_items.append((name, location))
        index.add(WORD_RE.findall(normalize(text)), -1 - k)

    def kept_rows(codes: tuple[int, ...]) -> Iterator[tuple[int, list[str]]]:
        for first, path in chunks:
            messages = read_chunk(path, ["messages"]).column("messages").to_pylist()
            for local, text in enumerate(messages):
                row = first + local
                if split[row] in codes and removals.status[row] == KEPT:
                    conv = Conversation(json.loads(text), "", "")
                    yield row, words_of(compared_turns(conv))

    if cfg.ngram_against_splits:
        for row, words in kept_rows((VAL, TEST)):
            index.add(words, row)
    if not len(index):
        return
    for row, words in kept_rows((TRAIN,)):
        other = index.find(words)
        if other is not None:
            removals.mark(row, CONTAM_NGRAM, other)


def against(removals: Removals, split: np.ndarray, row: int) -> tuple[str, int | None, str | None]:
    """What example `row` collides with: (split name or 'eval:<set>', its row or None, eval location)."""
    other = int(removals.other[row])
    if other < 0:
        name, location = removals.eval_items[-1 - other]
        return f"eval:{name}", None, location
    return SPLIT_NAMES[int(split[other])], other, None


def read_eval_sets(sets: list[EvalSetConfig]) -> Iterator[tuple[str, str, str]]:
    """(set name, location, protected text) of every eval record.

    Raises:
        SftpipeError: an eval file is missing or unreadable, or a record lacks a configured field.
    """
    for i, spec in enumerate(sets):
        field_name = f"data.decontam.eval_sets[{i}]"
        if not Path(spec.path).exists():
            raise SftpipeError(f"{field_name}.path: {spec.path!r} not found")
        name = spec.name or Path(spec.path).name
        count = 0
        for location, record in read_source(SourceConfig(path=spec.path)):
            if isinstance(record, RecordError):
                raise SftpipeError(f"{location}: {record.reason}: {record.detail} (eval set {field_name})")
            yield name, location, _protected_text(record, spec, location, field_name)
            count += 1
        if count == 0:
            raise SftpipeError(f"{field_name}: {spec.path} has no records")


def _protected_text(record: dict, spec: EvalSetConfig, location: str, field_name: str) -> str:
    if not spec.fields:
        return "\n".join(v for v in record.values() if isinstance(v, str))
    parts = []
    for key in spec.fields:
        value = record.get(key)
        if not isinstance(value, str):
            raise SftpipeError(f"{location}: eval record has no text field {key!r} (present: {sorted(record)}); "
                               f"fix {field_name}.fields")
        parts.append(value)
    return "\n".join(parts)
