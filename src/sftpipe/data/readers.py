"""Read raw records from files or datasets, each with its location ("file:line") for error reports.

Readers yield `(location, record)`; a record that cannot even be parsed (bad JSON, bad bytes) is yielded
as a `RecordError` in place of the record, so the caller counts it instead of crashing or losing it.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sftpipe.config.schema import SourceConfig
from sftpipe.data.records import EXCERPT_CHARS, RecordError
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
    reader = _FILE_READERS.get(path.suffix.lower())
    if reader is None:
        raise SftpipeError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(SUFFIXES)}")
    yield from reader(path)


def read_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """`(location, record)` for every record of a file that a command reads as its input (infer's prompts,
    eval's problems): a .json array, a .csv or .parquet file, else JSON lines.

    The same reading as `read_source` (BOMs, bytes that are not UTF-8, duplicate keys), but with no
    rejection count to put a bad record in, the first record that cannot be read stops the command.

    Raises:
        SftpipeError: the first record that cannot be read, with its file and line (or index).
    """
    if not path.is_file():
        raise SftpipeError(f"{path}: no such file")
    suffix = path.suffix.lower()
    reader = _FILE_READERS[suffix] if suffix in (".json", ".csv", ".parquet") else _read_jsonl
    for where, record in reader(path):
        if isinstance(record, RecordError):
            problem = f"invalid JSON ({record.detail})" if record.reason == "invalid_json" else record.detail
            raise SftpipeError(f"{where}: {problem}")
        yield where, record


def _read_jsonl(path: Path) -> Iterator[RawRecord]:
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"{path}:{lineno}"
            try:
                # a BOM can start any line: files concatenated with `cat` keep each one's BOM; without the line
                # ending, an error at the end of the line is placed there, not at column 1 of a next line
                line = raw.decode("utf-8").removeprefix("\ufeff").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                yield where, RecordError("not_utf8", f"bytes that are not UTF-8 at column {exc.start + 1}",
                                         raw[:EXCERPT_CHARS].decode("utf-8", "replace").rstrip("\r\n"))
                continue
            if not line.strip():
                continue
            try:
                value = loads(line)
            except json.JSONDecodeError as exc:
                yield where, RecordError("invalid_json", _json_problem(exc.msg, lineno, exc.colno),
                                         line[:EXCERPT_CHARS])
                continue
            except (RecursionError, ValueError) as exc:  # nesting too deep; integers over 4300 digits
                yield where, RecordError("invalid_json", f"cannot parse: {_short(exc)}", line[:EXCERPT_CHARS])
                continue
            yield where, _as_object(value, line)


def _read_json(path: Path) -> Iterator[RawRecord]:
    """A .json file holding one array of records (or `{"key": [...]}`), streamed: one record in memory at a time."""
    with path.open("rb") as fh:
        stream = _JsonStream(path, fh)
        try:
            yield from _json_array_records(path, stream)
        except json.JSONDecodeError as exc:
            line, column = stream.position(exc.pos)
            raise SftpipeError(f"{path}:{line}: invalid JSON ({_json_problem(exc.msg, line, column)}); a .json file "
                               "must hold one array of records (use .jsonl for one record per line)") from None
        except (RecursionError, ValueError) as exc:  # nesting too deep; integers over 4300 digits
            raise SftpipeError(f"{path}: cannot parse JSON ({_short(exc)})") from None


def _json_array_records(path: Path, stream: _JsonStream) -> Iterator[RawRecord]:
    not_array = f"{path}: expected a JSON array of records, got "
    first = stream.peek()
    wrapped = first == "{"
    if wrapped:  # {"data": [...]}: exactly one key, whose value is the array
        stream.take("{")
        if stream.peek() != '"' or not isinstance(stream.value(), str) or not stream.take(":") \
                or stream.peek() != "[":
            raise SftpipeError(not_array + "dict")
    elif first != "[":
        raise SftpipeError(not_array + type(stream.value()).__name__)
    stream.take("[")
    index = 0
    if not stream.take("]"):  # an empty array holds no records
        while True:
            yield f"{path}[{index}]", _as_object(stream.value(), None)
            index += 1
            if stream.take("]"):
                break
            if not stream.take(","):
                stream.fail("Expecting ',' delimiter")
    if wrapped and not stream.take("}"):
        raise SftpipeError(not_array + "dict (with more than one key)")
    if stream.peek():
        stream.fail("Extra data")


class _JsonStream:
    """A JSON file decoded in chunks; values are parsed one at a time by the standard library's decoder.

    Only the chunks not yet consumed are held. A value cut by a chunk boundary fails to parse (or, for a
    number, parses short), so a value is only taken once the text after it is read too; the read size
    doubles while one value stays unparsed, so a huge record costs linear time.
    """

    CHUNK = 1 << 20
    WHITESPACE = re.compile(r"[ \t\n\r]*")
    NUMBER_TAIL = re.compile(r"[0-9.eE+\-]*")

    def __init__(self, path: Path, fh):  # noqa: ANN001 - a binary file object
        self.path, self.fh = path, fh
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.json = json.JSONDecoder(object_pairs_hook=_object_pairs)
        self.buf, self.pos, self.bytes_read, self.eof = "", 0, 0, False
        self.line, self.column = 1, 0  # where buf[0] is in the file (column counted from 0)

    def _more(self, size: int) -> bool:
        """Append up to `size` bytes more (dropping what is consumed); False at the end of the file."""
        if self.eof:
            return False
        raw = self.fh.read(size)
        try:
            text = self.decoder.decode(raw, final=not raw)
        except UnicodeDecodeError as exc:  # exc.object: this read, less a BOM, plus bytes held from the last
            offset = self.bytes_read + len(raw) - (len(exc.object) - exc.start)
            raise SftpipeError(f"{self.path}: not UTF-8 (byte {offset}); re-encode the file as UTF-8") from None
        self.bytes_read += len(raw)
        self.eof = not raw
        self.line, self.column = self.position(self.pos)
        self.column -= 1
        self.buf, self.pos = self.buf[self.pos :] + text, 0
        return True

    def position(self, pos: int) -> tuple[int, int]:
        """Line and column (both from 1) in the file of `buf[pos]`."""
        newline = self.buf.rfind("\n", 0, pos)
        column = pos - newline if newline >= 0 else self.column + pos + 1
        return self.line + self.buf.count("\n", 0, pos), column

    def fail(self, message: str) -> None:
        raise json.JSONDecodeError(message, self.buf, self.pos)

    def peek(self) -> str:
        """The next character after whitespace, '' at the end of the file."""
        while True:
            self.pos = self.WHITESPACE.match(self.buf, self.pos).end()
            if self.pos < len(self.buf) or not self._more(self.CHUNK):
                return self.buf[self.pos : self.pos + 1]

    def take(self, char: str) -> bool:
        """Consume `char` if it comes next (after whitespace)."""
        if self.peek() == char:
            self.pos += 1
            return True
        return False

    def value(self) -> Any:
        self.peek()
        size = self.CHUNK
        while True:
            try:
                value, end = self.json.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError:
                if self._more(size):
                    size *= 2
                    continue
                raise
            # a number is only complete once a character that cannot continue it follows ("1|2", "0|.5", "1|e3")
            if self.NUMBER_TAIL.match(self.buf, end).end() < len(self.buf) or not self._more(size):
                self.pos = end
                return value
            size *= 2


def _read_csv(path: Path) -> Iterator[RawRecord]:
    # undecodable bytes become lone surrogates, so one bad row is rejected instead of the whole file
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        lines = _RowLines(fh)
        reader = csv.DictReader(lines, strict=True)
        try:
            reader.fieldnames  # noqa: B018 - reads the header now, so the first row's lines are its own
        except csv.Error as exc:  # without a header no row can be read: rows would be taken for it
            raise SftpipeError(f"{path}:1: the header row cannot be read ({exc}); fix its quoting") from None
        while True:
            lines.start_row()
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # the reader resynchronises at the next line
                start = lines.row_start
                yield f"{path}:{start}", RecordError("bad_csv", f"{exc} (lines {start}-{lines.lineno})",
                                                     _printable(lines.row_text.rstrip("\r\n")[:EXCERPT_CHARS]))
                continue
            where = f"{path}:{lines.lineno}"
            text = _printable(lines.row_text.rstrip("\r\n")[:EXCERPT_CHARS])
            if any(_BAD_BYTES.search(v) for v in row.values() if isinstance(v, str)):
                yield where, RecordError("not_utf8", "bytes that are not UTF-8 in this row", text)
            elif None in row:
                yield where, RecordError("ragged_row", f"{len(row[None]) + len(reader.fieldnames or [])} cells, "
                                         f"header has {len(reader.fieldnames or [])}", text)
            elif any(v is None for v in row.values()):
                yield where, RecordError("ragged_row", f"fewer cells than the {len(row)} header columns", text)
            else:
                yield where, dict(row)


class _RowLines:
    """The lines of a CSV file as the csv reader pulls them, with the number and text of the line each row
    starts on: the reader keeps neither, and a row it cannot parse (an unclosed quote runs on to the end of
    the file) is reported where it starts, with that line's text."""

    def __init__(self, fh: Iterator[str]):
        self.fh = fh
        self.lineno, self.row_start, self.row_text = 0, 1, ""
        self._new_row = True

    def __iter__(self) -> _RowLines:
        return self

    def __next__(self) -> str:
        line = next(self.fh)
        self.lineno += 1
        # the reader skips empty lines between rows: the row starts on the line after them
        if self._new_row or self.row_text in ("\n", "\r\n", "\r"):
            self.row_start, self.row_text, self._new_row = self.lineno, line, False
        return line

    def start_row(self) -> None:
        """The next line pulled starts a row."""
        self._new_row = True


def _printable(text: str) -> str:
    """Text read with surrogateescape, with each byte that is not UTF-8 shown as U+FFFD (writable as UTF-8)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


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
    """Plain text: one record per paragraph (blocks separated by blank lines), read line by line."""
    lineno, start, block = 0, 1, []
    with path.open(encoding="utf-8-sig", errors="surrogateescape") as fh:
        # str.splitlines on each line: the same line breaks (form feed, U+2028...) as splitting the whole text
        for line in (part for physical in fh for part in physical.splitlines()):
            lineno += 1
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
        return RecordError("not_utf8", "bytes that are not UTF-8 in this paragraph", _printable(text[:EXCERPT_CHARS]))
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


def _as_object(value: Any, text: str | None) -> dict[str, Any] | RecordError:
    """`value` if it is a usable record, else the problem with the record's text (`text`, or `value` re-encoded)."""
    problem = (RecordError("not_an_object", f"expected a JSON object, got {type(value).__name__}")
               if not isinstance(value, dict) else _value_problem(value))
    if problem is None:
        return value
    # ensure_ascii: a lone surrogate in a re-encoded value stays an escape that rejected.jsonl can hold
    problem.excerpt = (text if text is not None else json.dumps(value, ensure_ascii=True))[:EXCERPT_CHARS]
    return problem


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


_FILE_READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet,
                 ".txt": _read_text}
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_BAD_BYTES = re.compile(r"[\udc80-\udcff]")  # what surrogateescape makes of bytes that are not UTF-8


def _json_problem(message: str, line: int, column: int) -> str:
    """json's message with the place in the file (some of its messages end in "at", before a position)."""
    return f"{message.removesuffix(' at')} at line {line}, column {column}"


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) < 160 else text[:157] + "..."
