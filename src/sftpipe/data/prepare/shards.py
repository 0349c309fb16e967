"""Sharded split directories in the layout of `datasets.Dataset.save_to_disk`, written as a stream.

Rows arrive in batches; every `shard_size` rows a new `data-XXXXX-of-NNNNN.arrow` file (Arrow stream,
written by datasets' own `ArrowWriter`) is started. `state.json` and `dataset_info.json` are taken from
what `save_to_disk` writes for an empty dataset with the same features, with the shard list filled in,
so `datasets.load_from_disk(split_dir)` (and `DataDir.load_split`) reads the result, while
no example is held in memory or copied twice.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import datasets
import pyarrow as pa
from datasets.arrow_writer import ArrowWriter

from sftpipe.contracts.data_dir import FEATURES


class ShardWriter:
    """Writes one split directory shard by shard."""

    def __init__(self, split_dir: Path, shard_size: int):
        self.dir = split_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.rows = 0
        self._shards: list[Path] = []
        self._writer: ArrowWriter | None = None
        self._in_shard = 0
        self._fingerprint = hashlib.blake2b(split_dir.name.encode(), digest_size=8)

    def write(self, table: pa.Table, digests: bytes) -> None:
        """Append rows (a table with the FEATURES schema); `digests` are their content hashes, folded into
        the split's fingerprint."""
        self._fingerprint.update(digests)
        start = 0
        while start < len(table):
            if self._writer is None or self._in_shard >= self.shard_size:
                self._open_shard()
            assert self._writer is not None
            take = min(len(table) - start, self.shard_size - self._in_shard)
            self._writer.write_table(table.slice(start, take))
            self._in_shard += take
            self.rows += take
            start += take

    def _open_shard(self) -> None:
        self._close_shard()
        path = self.dir / f"shard-{len(self._shards):05d}.arrow"
        self._shards.append(path)
        self._writer = ArrowWriter(features=FEATURES, path=str(path))
        self._in_shard = 0

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.finalize()
            self._writer.close()
            self._writer = None

    def close(self, template: dict[str, dict]) -> int:
        """Finish the last shard, name the shards and write the metadata; returns the number of shards."""
        if not self._shards:
            self._open_shard()  # an empty split still has one (empty) shard, as load_from_disk expects
        self._close_shard()
        total = len(self._shards)
        names = []
        for i, path in enumerate(self._shards):
            name = f"data-{i:05d}-of-{total:05d}.arrow"
            path.rename(self.dir / name)
            names.append(name)
        state = dict(template["state"])
        state["_data_files"] = [{"filename": name} for name in names]
        state["_fingerprint"] = self._fingerprint.hexdigest()
        (self.dir / "state.json").write_text(json.dumps(state, indent=2), encoding="utf-8")
        (self.dir / "dataset_info.json").write_text(json.dumps(template["info"], indent=2), encoding="utf-8")
        return total


def metadata_template() -> dict[str, dict]:
    """The state.json and dataset_info.json that `save_to_disk` writes for an empty dataset of FEATURES."""
    with tempfile.TemporaryDirectory(prefix="sftpipe-meta-") as tmp:
        datasets.Dataset.from_dict({name: [] for name in FEATURES}, features=FEATURES).save_to_disk(tmp)
        return {
            "state": json.loads((Path(tmp) / "state.json").read_text(encoding="utf-8")),
            "info": json.loads((Path(tmp) / "dataset_info.json").read_text(encoding="utf-8")),
        }
