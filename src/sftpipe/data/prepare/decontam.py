"""Stage 4 of prepare: remove contamination by n-gram overlap, after dedup.

Kept train examples sharing a word n-gram with an eval set (and, if asked, with val/test) are removed as
`contamination_ngram`, recorded in the `Removals` of stage 3 (`dedup.py`). The eval sets' n-grams are held
as hashes (`NgramIndex`, 16 bytes an n-gram); examples are read back from the chunk files a chunk at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from sftpipe.config.data_sections import DecontamConfig, EvalSetConfig
from sftpipe.config.schema import SourceConfig
from sftpipe.data.prepare.dedup import CONTAM_NGRAM, KEPT, Removals
from sftpipe.data.prepare.fingerprint import WORD_RE, NgramIndex, compared_turns, normalize, words_of
from sftpipe.data.prepare.scan import read_chunk
from sftpipe.data.prepare.split import TEST, TRAIN, VAL
from sftpipe.data.readers import read_source
from sftpipe.data.records import Conversation, RecordError
from sftpipe.errors import SftpipeError


def find_ngram_overlaps(removals: Removals, split: np.ndarray, chunks: list[tuple[int, str]],
                        cfg: DecontamConfig) -> None:
    """Mark kept train examples sharing a word n-gram with an eval set (or val/test, if configured).

    `chunks` are (first row, Arrow file) of the scanned examples, in row order.
    """
    if not cfg.eval_sets and not cfg.ngram_against_splits:
        return
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
