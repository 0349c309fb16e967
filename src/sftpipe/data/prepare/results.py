"""What the prepare stages hand on and what `run` returns: plain records of figures, below the code that
fills them (this module imports nothing from the pipeline, so every stage, and the data dir's manifest
writer, can name these types without an import circle). The split and mixing figures are the data dir's
manifest types."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sftpipe.contracts.data_dir import SourceMix, SplitStats, Verification


@dataclass
class ScanTable:
    """Per-example figures of the scanned examples (rows in chunk order), a few dozen bytes each."""

    source: np.ndarray
    digest: np.ndarray
    key: np.ndarray
    tokens: np.ndarray
    trained: np.ndarray
    truncated: np.ndarray
    chunks: list[tuple[int, str]]  # (first row, Arrow file)

    def __len__(self) -> int:
        return len(self.source)


@dataclass
class PrepareResult:
    output_dir: Path
    records_read: int
    splits: dict[str, SplitStats]
    rejected: Counter[str] = field(default_factory=Counter)
    first_rejected: dict[str, str] = field(default_factory=dict)  # reason -> "location: reason: detail" of the first
    per_source: dict[str, dict[str, int]] = field(default_factory=dict)
    removed_by_stage: dict[str, dict[str, int]] = field(default_factory=dict)
    mixing: list[SourceMix] | None = None
    verification: Verification | None = None  # when a source has verify: tests
    wall_s: float = 0.0
