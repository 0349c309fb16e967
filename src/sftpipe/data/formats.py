"""Turn raw records of each supported format into canonical `Conversation`s.

Field names are mapped by config (`SourceConfig.fields`: canonical name -> name in the data), so the same
converter serves every dataset that has the shape, whatever its column names.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from sftpipe.config.schema import SourceConfig
from sftpipe.data.records import Conversation, RecordError, validate_messages

# Fields that identify each format; the first format whose fields are all present wins in auto mode.
FORMAT_FIELDS: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "qa": ("question", "answer"),
    "prompt_completion": ("prompt", "completion"),
    "code": ("code",),
    "text": ("text",),
}
META_FIELDS = ("id", "tests", "entry_point", "topic")
FORMAT_META_FIELDS: dict[str, tuple[str, ...]] = {"qa": ("source",)}  # kept as metadata for that format only
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def detect_format(record: dict[str, Any], source: SourceConfig) -> str:
    """The format named in config, or the first whose identifying fields the record has."""
    if source.format != "auto":
        return source.format
    for fmt, required in FORMAT_FIELDS.items():
        if all(source.fields.get(name, name) in record for name in required):
            return fmt
    raise RecordError(
        "unknown_format",
        f"fields {sorted(record)} match no known format; set data.sources[].format and map field names "
        "with data.sources[].fields",
    )


def to_conversation(
    record: dict[str, Any], fmt: str, source: SourceConfig, location: str, system_prompt: str | None,
    name: str | None = None,
) -> Conversation:
    """Convert one raw record; `name` is the source's display name (pass it to skip recomputing it).

    Raises:
        RecordError: missing or mistyped fields, bad role order, empty response.
    """
    name = name or source.display_name
    get = _FieldGetter(record, source.fields)
    if fmt == "text":
        text = get.text("text")
        if not text.strip():
            raise RecordError("empty_content", f"field {get.name('text')!r} is empty")
        return Conversation([{"role": "assistant", "content": text}], name, location, kind="text")
    messages = _CONVERTERS[fmt](get, source)
    system = source.system_prompt or system_prompt or _default_system_prompt(fmt, source)
    if system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    validate_messages(messages)
    fields = META_FIELDS + FORMAT_META_FIELDS.get(fmt, ())
    meta = {field: record[get.name(field)] for field in fields if get.name(field) in record}
    return Conversation(messages, name, location, meta)


def _default_system_prompt(fmt: str, source: SourceConfig) -> str | None:
    """The system prompt a format brings: the last resort, after the source's and data.system_prompt."""
    default = _DEFAULT_SYSTEM_PROMPTS.get(fmt)
    return None if default is None else default(source)


class _FieldGetter:
    """Reads canonical fields through the configured mapping, with typed errors naming the data's field."""

    def __init__(self, record: dict[str, Any], mapping: dict[str, str]):
        self.record = record
        self.mapping = mapping

    def name(self, canonical: str) -> str:
        return self.mapping.get(canonical, canonical)

    def raw(self, canonical: str) -> Any:
        name = self.name(canonical)
        if name not in self.record:
            raise RecordError("missing_field", f"field {name!r} is missing (present: {sorted(self.record)})")
        return self.record[name]

    def text(self, canonical: str, optional: bool = False) -> str:
        name = self.name(canonical)
        if optional and self.record.get(name) is None:
            return ""
        value = self.raw(canonical)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise RecordError("wrong_type", f"field {name!r} is {value}, not text")
            return str(value)  # CSV-like numeric answers are legitimate text
        if not isinstance(value, str):
            raise RecordError("wrong_type", f"field {name!r} must be a string, got {type(value).__name__}")
        return value


def _alpaca(get: _FieldGetter, source: SourceConfig) -> list[dict[str, str]]:
    instruction = get.text("instruction")
    extra = get.text("input", optional=True)
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages = []
    system = get.text("system", optional=True)
    if system.strip():
        messages.append({"role": "system", "content": system})
    return messages + [{"role": "user", "content": user}, {"role": "assistant", "content": get.text("output")}]


def _messages(get: _FieldGetter, source: SourceConfig) -> list[dict[str, str]]:
    return _message_list(get, "messages", role_key="role", content_key="content", roles=None)


def _sharegpt(get: _FieldGetter, source: SourceConfig) -> list[dict[str, str]]:
    return _message_list(get, "conversations", role_key="from", content_key="value", roles=SHAREGPT_ROLES)


def _message_list(
    get: _FieldGetter, field: str, role_key: str, content_key: str, roles: dict[str, str] | None
) -> list[dict[str, str]]:
    value = get.raw(field)
    name = get.name(field)
    if not isinstance(value, list):
        raise RecordError("wrong_type", f"field {name!r} must be a list of messages, got {type(value).__name__}")
    messages = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or role_key not in msg or content_key not in msg:
            raise RecordError("bad_message", f"{name}[{i}] must be an object with {role_key!r} and {content_key!r}")
        role, content = msg[role_key], msg[content_key]
        if not isinstance(role, str) or not isinstance(content, str):
            raise RecordError("wrong_type", f"{name}[{i}]: {role_key} and {content_key} must be strings")
        if roles is not None:
            if role not in roles:
                raise RecordError("unknown_role", f"{name}[{i}] has {role_key}={role!r}; expected one of {sorted(roles)}")
            role = roles[role]
        messages.append({"role": role, "content": content})
    return messages


def _qa(get: _FieldGetter, source: SourceConfig) -> list[dict[str, str]]:
    return [{"role": "user", "content": get.text("question")}, {"role": "assistant", "content": get.text("answer")}]


def _prompt_completion(get: _FieldGetter, source: SourceConfig) -> list[dict[str, str]]:
    return [{"role": "user", "content": get.text("prompt")}, {"role": "assistant", "content": get.text("completion")}]


def _code(get: _FieldGetter, source: SourceConfig) -> list[dict[str, str]]:
    """Code records: the code becomes a fenced answer; without an instruction, a generic one is used."""
    language = source.code_language
    code = get.text("code").strip("\n")
    instruction = get.text("instruction", optional=True) or f"Write idiomatic {language.capitalize()} code."
    return [{"role": "user", "content": instruction}, {"role": "assistant", "content": f"```{language}\n{code}\n```"}]


def _code_system_prompt(source: SourceConfig) -> str:
    return f"You are an expert {source.code_language.capitalize()} programmer. Answer with code in a fenced block."


_CONVERTERS: dict[str, Callable[[_FieldGetter, SourceConfig], list[dict[str, str]]]] = {
    "alpaca": _alpaca,
    "messages": _messages,
    "sharegpt": _sharegpt,
    "qa": _qa,
    "prompt_completion": _prompt_completion,
    "code": _code,
}
_DEFAULT_SYSTEM_PROMPTS: dict[str, Callable[[SourceConfig], str]] = {"code": _code_system_prompt}
