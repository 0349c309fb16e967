"""Read raw records from files or datasets, each with its location ("file:line") for error reports.

Readers yield `(location, record)`; a record that cannot even be parsed (bad JSON, bad bytes) is yielded
as a `RecordError` in place of the record, so the caller counts it instead of crashing or losing it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sftpipe.config.schema import SourceConfig
from sftpipe.data.records import RecordError
from sftpipe.errors import SftpipeError

RawRecord = tuple[str, "dict[str, Any] | RecordError"]
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")


def read_source(source: SourceConfig) -> Iterator[RawRecord]:
    """Yield `(location, record_or_error)` for every record of one configured source."""
    if source.hf_dataset is not None:
        yield from _read_hf(source)
        return
    path = Path(source.path or "")
    if path.is_dir():
        yield from _read_dataset_dir(path)
        return
    if not path.is_file():
        raise SftpipeError(f"data source {source.path!r} not found (set data.sources[].path to a file or directory)")
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet,
               ".txt": _read_text}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise SftpipeError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(SUFFIXES)}")
    yield from reader(path)


def _read_jsonl(path: Path) -> Iterator[RawRecord]:
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield where, RecordError("not_utf8", f"bytes that are not UTF-8 at column {exc.start + 1}")
                continue
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                yield where, RecordError("invalid_json", f"{exc.msg} at column {exc.colno}")
                continue
            yield where, _as_object(value)


def _read_json(path: Path) -> Iterator[RawRecord]:
    try:
        value = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise SftpipeError(f"{path}: not UTF-8 (byte {exc.start}); re-encode the file as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise SftpipeError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg}); a .json file must hold one array "
                           "of records (use .jsonl for one record per line)") from None
    if isinstance(value, dict) and len(value) == 1 and isinstance(next(iter(value.values())), list):
        value = next(iter(value.values()))  # {"data": [...]} wrappers
    if not isinstance(value, list):
        raise SftpipeError(f"{path}: expected a JSON array of records, got {type(value).__name__}")
    for index, item in enumerate(value):
        yield f"{path}[{index}]", _as_object(item)


def _read_csv(path: Path) -> Iterator[RawRecord]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if None in row:
                yield where, RecordError("ragged_row", f"{len(row[None]) + len(reader.fieldnames or [])} cells, "
                                         f"header has {len(reader.fieldnames or [])}")
            elif any(v is None for v in row.values()):
                yield where, RecordError("ragged_row", f"fewer cells than the {len(row)} header columns")
            else:
                yield where, dict(row)


def _read_parquet(path: Path) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path)
    index = 0
    for batch in table.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            yield f"{path}[{index}]", row
            index += 1


def _read_text(path: Path) -> Iterator[RawRecord]:
    """Plain text: one record per paragraph (blocks separated by blank lines)."""
    text = path.read_bytes().decode("utf-8-sig", errors="strict")
    lineno, start, block = 0, 1, []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            if not block:
                start = lineno
            block.append(line)
        elif block:
            yield f"{path}:{start}", {"text": "\n".join(block)}
            block = []
    if block:
        yield f"{path}:{start}", {"text": "\n".join(block)}


def _read_dataset_dir(path: Path) -> Iterator[RawRecord]:
    import datasets

    if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
        ds = datasets.load_from_disk(str(path))
    else:
        ds = datasets.load_dataset(str(path), split="train")
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"]
    for index, row in enumerate(ds):
        yield f"{path}[{index}]", row


def _read_hf(source: SourceConfig) -> Iterator[RawRecord]:
    import datasets

    try:
        ds = datasets.load_dataset(source.hf_dataset, source.hf_config, split=source.hf_split)
    except Exception as exc:  # the datasets library raises many types; all mean "cannot load"
        raise SftpipeError(
            f"data source hf_dataset={source.hf_dataset!r}: cannot load ({type(exc).__name__}: {exc}). "
            "Check the name, hf_config and hf_split, or download it and point `path` at a local copy."
        ) from None
    for index, row in enumerate(ds):
        yield f"{source.hf_dataset}[{index}]", row


def _as_object(value: Any) -> dict[str, Any] | RecordError:
    if isinstance(value, dict):
        return value
    return RecordError("not_an_object", f"expected a JSON object, got {type(value).__name__}")
