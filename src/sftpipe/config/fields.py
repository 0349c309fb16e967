"""The config schema as data: every field's dotted key, type, default and help text, section by section.

`sftpipe show-config --help-fields` prints it, and config errors use it to say where a key put in the wrong
section belongs. It reads the pydantic models only (no torch), so both stay fast.
"""

from __future__ import annotations

import textwrap
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from sftpipe.config.schema import Config


@dataclass(frozen=True)
class FieldDoc:
    key: str  # dotted; a field of each item of a list of sections is written data.sources[].path
    type: str  # e.g. "int | null", "lora | full"
    default: str  # as it would be written in YAML; "required" when there is none
    help: str


@dataclass(frozen=True)
class SectionDoc:
    key: str  # dotted, e.g. "data.split"; items of a list of sections: "data.sources[]"
    help: str  # the section's docstring, "" when it has none
    fields: list[FieldDoc]


def config_sections(model: type[BaseModel] = Config, prefix: str = "", help: str = "") -> Iterator[SectionDoc]:
    """Each section of `model` (depth first, in schema order) with its own fields, sections left out."""
    own, subsections = [], []
    for name, field in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        sub = model_in(field.annotation)
        if sub is None:
            own.append(FieldDoc(key, type_name(field.annotation), default_text(field), field.description or ""))
        else:
            subsections.append((f"{key}[]" if _is_list(field.annotation) else key, sub, field.description or ""))
    if prefix:
        doc = (model.__dict__.get("__doc__") or "").split("\n\n")[0]
        yield SectionDoc(prefix, help or " ".join(doc.split()), own)
    for key, sub, sub_help in subsections:
        yield from config_sections(sub, key, sub_help)


def all_fields() -> list[FieldDoc]:
    """Every leaf field of the config, as `config_sections` orders them."""
    return [f for section in config_sections() for f in section.fields]


def model_in(annotation: Any) -> type[BaseModel] | None:
    """The section model inside an annotation (`X`, `list[X]`, `X | None`), or None for a plain value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) is dict:  # keys are data (hpo.search_space), not fields
        return None
    for arg in typing.get_args(annotation):
        found = model_in(arg)
        if found is not None:
            return found
    return None


def _is_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) is list


def type_name(annotation: Any) -> str:
    """A field's type as a config author reads it: `int | null`, `auto | sdpa`, `list[str]`."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return type_name(typing.get_args(annotation)[0])
    if origin is Literal:
        return " | ".join(str(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    if origin is not None:
        return f"{origin.__name__}[{', '.join(type_name(a) for a in typing.get_args(annotation))}]"
    return getattr(annotation, "__name__", str(annotation))


def default_text(field: FieldInfo) -> str:
    """The default as YAML would write it (flow style), or "required"."""
    if field.default_factory is not None:
        return yaml_flow(field.default_factory())  # type: ignore[call-arg]
    if field.default is PydanticUndefined:
        return "required"
    return yaml_flow(field.default)


def yaml_flow(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_flow(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {yaml_flow(v)}" for k, v in value.items()) + "}"
    return repr(value)


def fields_help(width: int = 100) -> str:
    """Every config field, section by section: dotted key, type and default, then its help text."""
    lines = textwrap.wrap("Config fields, section by section: dotted key: type = default, then its help. "
                          "--set takes the dotted keys; fields of list items (data.sources[].path) are set in "
                          "the file. A file may also name a preset with a top-level `preset:` key.", width)
    for section in config_sections():
        lines.append("")
        lines.append(f"[{section.key}]" + (f"  {section.help}" if section.help else ""))
        for f in section.fields:
            lines.append(f"  {f.key}: {f.type} = {f.default}")
            if f.help:
                lines.extend(textwrap.wrap(f.help, width, initial_indent=" " * 6, subsequent_indent=" " * 6,
                                           break_on_hyphens=False, break_long_words=False))
    return "\n".join(lines) + "\n"
