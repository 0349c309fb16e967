"""Stage 6 of prepare: copy the kept examples from the chunk files into sharded split dirs (train rows
repeated as the mix says), and write a ledger entry for every example removed by dedup or decontamination.

Chunks are read one at a time, so memory is bounded by the chunk size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sftpipe.config.schema import DataConfig
from sftpipe.data.prepare.dedup import CONTAM_NEAR, CONTAM_NGRAM, KEPT, NEAR_DUP, REASONS, Removals, against
from sftpipe.data.prepare.ledger import Ledger, Rejection
from sftpipe.data.prepare.scan import LocationStore, read_chunk
from sftpipe.data.prepare.shards import ShardWriter
from sftpipe.data.prepare.split import SPLIT_NAMES
from sftpipe.data.records import EXCERPT_CHARS

if TYPE_CHECKING:
    from pathlib import Path

    from sftpipe.data.prepare.results import ScanTable


def write_splits(out: Path, table: ScanTable, *, split: np.ndarray, removals: Removals, repeat: np.ndarray,
                 ledger: Ledger, locations: LocationStore, data: DataConfig, template: dict[str, dict]
                 ) -> dict[str, int]:
    """Write `out/<split>/` for every split; returns the number of shards of each."""
    writers = {code: ShardWriter(out / name, data.shard_size) for code, name in SPLIT_NAMES.items()}
    for first, path in table.chunks:
        chunk = read_chunk(path)
        rows = first + np.arange(len(chunk))
        status = removals.status[rows]
        removed = np.flatnonzero(status != KEPT)
        if len(removed):
            sources = chunk.column("source").to_pylist()
            where = chunk.column("location").to_pylist()
            messages = chunk.column("messages").to_pylist()
            for local in removed.tolist():
                ledger.add(_removal(int(rows[local]), sources[local], where[local], messages[local], split,
                                    removals, locations, data))
        for code, writer in writers.items():
            local = np.flatnonzero((split[rows] == code) & (status == KEPT))
            local = np.repeat(local, repeat[rows[local]])
            if len(local):
                writer.write(chunk.take(local), table.digest[rows[local]].tobytes())
    return {SPLIT_NAMES[code]: writer.close(template) for code, writer in writers.items()}


def _removal(row: int, source: str, location: str, messages: str, split: np.ndarray, removals: Removals,
             locations: LocationStore, data: DataConfig) -> Rejection:
    code = int(removals.status[row])
    stage, reason = REASONS[code]
    target, other, eval_location = against(removals, split, row)
    other_location = eval_location if other is None else locations[other]
    extra: dict = {"against": target, "duplicate_of": other_location}
    if code in (NEAR_DUP, CONTAM_NEAR):
        similarity = float(removals.similarity[row])
        extra["similarity"] = round(similarity, 4)
        detail = (f"near duplicate (estimated Jaccard {similarity:.2f} >= data.dedup.threshold "
                  f"{data.dedup.threshold}) of {other_location} in {target}")
    elif code == CONTAM_NGRAM:
        detail = f"shares a {data.decontam.ngram}-word sequence with {other_location} in {target}"
    else:
        detail = f"same normalised text as {other_location} in {target}"
    return Rejection(source, location, stage, reason, detail, messages[:EXCERPT_CHARS], extra)
