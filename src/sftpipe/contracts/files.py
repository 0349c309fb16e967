"""Reading and writing the JSON files of the contracts: versions checked, every failure naming the file."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from sftpipe.errors import SftpipeError

FORMAT_VERSION = 1  # the version every contract file is written with, and the newest one read


class Record(BaseModel):
    """A JSON object a stage writes: unknown keys are errors (a new key is a new format_version), immutable."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())


R = TypeVar("R")  # a Record, or a pydantic dataclass (the trainer state, which the loop updates in place)


@cache
def _adapter(model: type) -> TypeAdapter:
    return TypeAdapter(model)


def read_json(path: Path) -> Any:
    """Parse a JSON file; any failure is an `SftpipeError` naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SftpipeError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SftpipeError(f"{path}: unreadable or corrupt ({type(exc).__name__}: {exc})") from None


def format_version(path: Path, values: Any, what: str) -> int:
    """The format_version of a contract file's parsed `values`: 1 when absent (written before versions existed).

    Raises:
        SftpipeError: `values` is not a JSON object, or its version is not one this sftpipe reads.
    """
    if not isinstance(values, dict):
        raise SftpipeError(f"{path}: not {what} (a JSON object was expected, found {type(values).__name__})")
    version = values.get("format_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SftpipeError(f"{path}: format_version {version!r} is not a version number")
    if version > FORMAT_VERSION:
        raise SftpipeError(f"{path}: {what} of format_version {version}, but this sftpipe reads format_version "
                           f"{FORMAT_VERSION} at most; upgrade sftpipe to read it, or write it again with this one")
    return version


def read_record(path: Path, model: type[R], what: str, fix: str) -> R:
    """Read the contract file `path` as `model`.

    Args:
        what: what the file is, for messages ("a data manifest").
        fix: what to do when it cannot be read ("re-run `sftpipe prepare`").

    Raises:
        SftpipeError: the file is missing, not JSON, of a newer format_version, or not of `model`'s shape; the
            message names the file and the fields that do not fit.
    """
    values = read_json(path)
    version = format_version(path, values, what)
    try:
        return _adapter(model).validate_python({**values, "format_version": version})
    except ValidationError as exc:
        raise SftpipeError(f"{path}: not {what} ({describe(exc)}); {fix}") from None


def describe(exc: ValidationError, limit: int = 3) -> str:
    """The first few problems of a validation error, each as `dotted.field: message`."""
    problems = [f"{'.'.join(str(p) for p in err['loc']) or '<top level>'}: {err['msg']}" for err in exc.errors()]
    more = f"; and {len(problems) - limit} more" if len(problems) > limit else ""
    return "; ".join(problems[:limit]) + more


def to_json(record: Any) -> Any:
    """`record` (a Record or pydantic dataclass) as the JSON value written for it."""
    return _adapter(type(record)).dump_python(record, mode="json")


def write_record(path: Path, record: Any, indent: int = 2) -> None:
    """Write `record` as JSON (NaN stays NaN, as `json` writes it; non-ASCII text as it is)."""
    path.write_text(json.dumps(to_json(record), indent=indent, ensure_ascii=False), encoding="utf-8")
