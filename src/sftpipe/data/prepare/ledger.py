"""The ledger of removed records: every record that does not reach a split is counted by reason and
source, and written to `rejected.jsonl` with its location, stage, reason and an excerpt.

Entries are written as they come (nothing but the counts is kept in memory), so a run with millions of
rejections still runs in bounded memory.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sftpipe.data.records import EXCERPT_CHARS, RecordError
from sftpipe.errors import SftpipeError

# Stages whose rejections are errors in the data (stopped by data.on_error: raise); the others are policy.
ERROR_STAGES = ("read", "tokenize")


@dataclass
class Rejection:
    source: str
    location: str
    stage: str  # read, filter, tokenize, dedup, decontam
    reason: str
    detail: str
    excerpt: str
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. duplicate_of, against, similarity

    @classmethod
    def of(cls, source: str, location: str, stage: str, err: RecordError, excerpt: Any) -> Rejection:
        text = excerpt if isinstance(excerpt, str) else json.dumps(excerpt, ensure_ascii=False, default=str)
        return cls(source, location, stage, err.reason, err.detail, text[:EXCERPT_CHARS])

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(out.pop("extra"))
        return out


class Ledger:
    """Counts and records rejections; in strict mode the first data error stops the run."""

    def __init__(self, path: Path, strict: bool):
        self.strict = strict
        self.path = path
        self._fh = path.open("w", encoding="utf-8")
        self.by_reason: Counter[str] = Counter()
        self.by_stage: dict[str, Counter[str]] = defaultdict(Counter)
        self.by_source: dict[str, Counter[str]] = defaultdict(Counter)
        self.by_target: Counter[tuple[str, str]] = Counter()  # (reason, against) for dedup/decontam
        self.first: dict[str, Rejection] = {}  # the first of each reason, to show one in messages

    def add(self, item: Rejection) -> None:
        """Count and write one rejection.

        Raises:
            SftpipeError: strict mode (data.on_error: raise) and the rejection is a data error.
        """
        if self.strict and item.stage in ERROR_STAGES:
            raise SftpipeError(f"{item.location}: {item.reason}: {item.detail} (data.on_error is raise; set it to "
                               "skip to reject such records and continue)")
        self.by_reason[item.reason] += 1
        self.by_stage[item.stage][item.reason] += 1
        self.by_source[item.source][item.reason] += 1
        self.first.setdefault(item.reason, item)
        if "against" in item.extra:
            self.by_target[(item.reason, str(item.extra["against"]))] += 1
        self._fh.write(json.dumps(item.as_json(), ensure_ascii=False) + "\n")

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def close(self) -> None:
        self._fh.close()
