"""Read raw records from files or datasets, each with its location ("file:line") for error reports.

Readers yield `(location, record)`; a record that cannot even be parsed (bad JSON, bad bytes) is yielded
as a `RecordError` in place of the record, so the caller counts it instead of crashing or losing it.
"""

from __future__ import annotations

import csv
import json
import re
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
                # a BOM can start any line: files concatenated with `cat` keep each one's BOM
                line = raw.decode("utf-8").removeprefix("\ufeff")
            except UnicodeDecodeError as exc:
                yield where, RecordError("not_utf8", f"bytes that are not UTF-8 at column {exc.start + 1}")
                continue
            if not line.strip():
                continue
            try:
                value = loads(line)
            except json.JSONDecodeError as exc:
                yield where, RecordError("invalid_json", f"{exc.msg} at column {exc.colno}")
                continue
            except (RecursionError, ValueError) as exc:  # nesting too deep; integers over 4300 digits
                yield where, RecordError("invalid_json", f"cannot parse: {_short(exc)}")
                continue
            yield where, _as_object(value)


def _read_json(path: Path) -> Iterator[RawRecord]:
    try:
        value = loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise SftpipeError(f"{path}: not UTF-8 (byte {exc.start}); re-encode the file as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise SftpipeError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg}); a .json file must hold one array "
                           "of records (use .jsonl for one record per line)") from None
    except (RecursionError, ValueError) as exc:
        raise SftpipeError(f"{path}: cannot parse JSON ({_short(exc)})") from None
    if isinstance(value, dict) and len(value) == 1 and isinstance(next(iter(value.values())), list):
        value = next(iter(value.values()))  # {"data": [...]} wrappers
    if not isinstance(value, list):
        raise SftpipeError(f"{path}: expected a JSON array of records, got {type(value).__name__}")
    for index, item in enumerate(value):
        yield f"{path}[{index}]", _as_object(item)


def _read_csv(path: Path) -> Iterator[RawRecord]:
    # undecodable bytes become lone surrogates, so one bad row is rejected instead of the whole file
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        reader = csv.DictReader(fh, strict=True)
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # the reader resynchronises at the next line
                yield f"{path}:{start}", RecordError("bad_csv", f"{exc} (lines {start}-{reader.line_num})")
                continue
            where = f"{path}:{reader.line_num}"
            if any(_BAD_BYTES.search(v) for v in row.values() if isinstance(v, str)):
                yield where, RecordError("not_utf8", "bytes that are not UTF-8 in this row")
            elif None in row:
                yield where, RecordError("ragged_row", f"{len(row[None]) + len(reader.fieldnames or [])} cells, "
                                         f"header has {len(reader.fieldnames or [])}")
            elif any(v is None for v in row.values()):
                yield where, RecordError("ragged_row", f"fewer cells than the {len(row)} header columns")
            else:
                yield where, dict(row)


def _read_parquet(path: Path) -> Iterator[RawRecord]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    index = 0
    try:
        table = pq.ParquetFile(path)
        for batch in table.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                yield f"{path}[{index}]", row
                index += 1
    except (pa.ArrowException, OSError) as exc:
        raise SftpipeError(f"{path}: not a readable Parquet file (after {index} rows: {_short(exc)})") from None


def _read_text(path: Path) -> Iterator[RawRecord]:
    """Plain text: one record per paragraph (blocks separated by blank lines)."""
    text = path.read_bytes().decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    lineno, start, block = 0, 1, []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            if not block:
                start = lineno
            block.append(line)
        elif block:
            yield f"{path}:{start}", _paragraph("\n".join(block))
            block = []
    if block:
        yield f"{path}:{start}", _paragraph("\n".join(block))


def _paragraph(text: str) -> dict[str, Any] | RecordError:
    if _BAD_BYTES.search(text):
        return RecordError("not_utf8", "bytes that are not UTF-8 in this paragraph")
    return {"text": text}


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


class _JsonObject(dict):
    """A parsed JSON object that remembers keys it was given more than once (plain json keeps the last)."""

    duplicates: tuple[str, ...] = ()


def _object_pairs(pairs: list[tuple[str, Any]]) -> _JsonObject:
    obj = _JsonObject(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        obj.duplicates = tuple(sorted({k for k, _ in pairs if k in seen or seen.add(k)}))
    return obj


def loads(text: str) -> Any:
    """`json.loads` that keeps track of duplicate keys (checked per record by `_as_object`)."""
    return json.loads(text, object_pairs_hook=_object_pairs)


def _as_object(value: Any) -> dict[str, Any] | RecordError:
    if not isinstance(value, dict):
        return RecordError("not_an_object", f"expected a JSON object, got {type(value).__name__}")
    return _value_problem(value) or value


def _value_problem(value: Any) -> RecordError | None:
    """The first duplicate key or lone surrogate anywhere in a parsed record (iteratively: no depth limit)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item, _JsonObject) and item.duplicates:
                return RecordError("duplicate_key", f"key {item.duplicates[0]!r} is given more than once in one "
                                   "object; which value is meant is ambiguous")
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and _SURROGATE.search(item):
            return RecordError("invalid_unicode", "a \\ud800-\\udfff escape that is not a valid character "
                               "(lone UTF-16 surrogate)")
    return None


_SURROGATE = re.compile(r"[\ud800-\udfff]")
_BAD_BYTES = re.compile(r"[\udc80-\udcff]")  # what surrogateescape makes of bytes that are not UTF-8


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) < 160 else text[:157] + "..."
