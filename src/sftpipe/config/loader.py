"""Load a config: built-in defaults < preset < YAML/JSON file < `--set a.b=c` overrides.

All problems are gathered into one `ConfigError` that names, for each, where the value came from (file,
preset or --set), the dotted field, the bad value, and the nearest valid key when a key is unknown.
"""

from __future__ import annotations

import copy
import difflib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from sftpipe.config.fields import all_fields, model_in
from sftpipe.config.foreign_keys import FOREIGN_KEYS
from sftpipe.config.hpo_section import PARAM_TYPES
from sftpipe.config.schema import Config
from sftpipe.config.search_space import refused_values, unknown_keys
from sftpipe.errors import SftpipeError
from sftpipe.redact import REDACTED, is_secret_key, redact

PRESETS = ("default", "fast_test", "full_training", "low_memory")
# Fields that say one thing two ways. A layer that sets either of them replaces both as the layers below it
# set them, so a file's warmup_steps is not refused because its preset gives a warmup_ratio; one layer that
# sets both is refused by the schema.
ALTERNATIVES = (("train", ("warmup_steps", "warmup_ratio")),)


class ConfigError(SftpipeError):
    """One or more config problems; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid config:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class _Layer:
    origin: str  # shown in errors: a file path, "preset 'x'" or "--set"
    values: dict[str, Any]


def load_config(
    path: str | Path | None = None,
    preset: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> Config:
    """Build the resolved config.

    Args:
        path: YAML or JSON config file; it may name a preset with a top-level `preset:` key.
        preset: preset name; overrides the file's `preset:` key.
        overrides: `dotted.key=value` strings; values are parsed as YAML scalars/lists.

    Returns:
        The validated `Config`.

    Raises:
        ConfigError: every problem found, at once.
    """
    layers: list[_Layer] = []
    file_values: dict[str, Any] = {}
    if path is not None:
        file_values = _read_file(Path(path))
        preset = preset or file_values.pop("preset", None)
    if preset is not None:
        layers.append(_Layer(f"preset '{preset}'", _read_preset(preset)))
    if path is not None:
        layers.append(_Layer(str(path), file_values))
    if overrides:
        layers.append(_Layer("--set", parse_overrides(overrides)))

    merged: dict[str, Any] = {}
    for layer in layers:
        merged = deep_merge(_without_alternatives(merged, layer.values), layer.values)
    cfg, problems = None, []
    try:
        cfg = Config.model_validate(merged)
    except ValidationError as exc:
        problems = [_describe(err, layers) for err in exc.errors()]
    space = merged.get("hpo", {}).get("search_space") if isinstance(merged.get("hpo"), dict) else None
    found = unknown_keys(list(space)) if isinstance(space, dict) else {}
    found |= refused_values(cfg) if cfg is not None else {}
    problems += [f"{_origin_of(('hpo', 'search_space', key), layers)}: hpo.search_space.{key}: {problem}"
                 for key, problem in found.items()]
    if problems:
        raise ConfigError(problems)
    assert cfg is not None
    return cfg


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError([f"{path}: config file not found" + (" (it is a directory)" if path.is_dir() else "")])
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 (byte {exc.start}); save the config as UTF-8"]) from None
    try:
        values = json.loads(text, object_pairs_hook=_unique_pairs) if path.suffix == ".json" else \
            yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError([f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}"]) from None
    except _DuplicateKey as exc:
        raise ConfigError([f"{path}: {exc}; keep one of them"]) from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of sections, got {type(values).__name__}"])
    return values


class _DuplicateKey(Exception):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML silently keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _DuplicateKey(f"line {key_node.start_mark.line + 1}: key {key!r} is given twice")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise _DuplicateKey(f"key {key!r} is given twice in one object")
    return dict(pairs)


def _read_preset(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        hint = difflib.get_close_matches(name, PRESETS, n=1)
        raise ConfigError(
            [f"preset '{name}' does not exist; choose one of {', '.join(PRESETS)}"
             + (f" (did you mean '{hint[0]}'?)" if hint else "")]
        )
    text = resources.files("sftpipe.config").joinpath("presets", f"{name}.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text) or {}


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Turn `["train.lr=1e-4", "lora.target_modules=[q_proj,v_proj]"]` into a nested dict.

    A part that is a number indexes a list of the layers below: `data.sources.0.path=x` sets the path of the
    first source (an int key here; `deep_merge` applies it to that list item).
    """
    result: dict[str, Any] = {}
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"--set {item!r}: expected dotted.key=value, e.g. --set train.lr=1e-4")
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = result
        parts: list[str | int] = [int(p) if p.isdigit() else p for p in key.strip().split(".")]
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                problems.append(f"--set {item!r}: {part} is set to a value and used as a section")
                break
        else:
            node[parts[-1]] = value
    if problems:
        raise ConfigError(problems)
    return result


def _without_alternatives(merged: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`merged` less the ALTERNATIVES that `update` replaces (see ALTERNATIVES)."""
    out = copy.deepcopy(merged)
    for section, keys in ALTERNATIVES:
        given, below = update.get(section), out.get(section)
        if isinstance(given, dict) and isinstance(below, dict) and any(k in given for k in keys):
            for key in keys:
                below.pop(key, None)
    return out


def deep_merge(base: dict[str, Any], update: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Return `base` updated by `update`, merging nested mappings instead of replacing them.

    A mapping with int keys updates those items of the list it meets (see `parse_overrides`).
    """
    out = copy.deepcopy(base)
    for key, value in update.items():
        dotted = f"{where}{key}"
        if _is_index_update(value):
            out[key] = _merge_items(out.get(key), value, dotted)
        elif isinstance(value, dict) and isinstance(out.get(key, {}), dict):
            out[key] = deep_merge(out.get(key, {}), value, f"{dotted}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _is_index_update(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(k, int) for k in value)


def _merge_items(items: Any, update: dict[int, Any], dotted: str) -> list[Any]:
    if not isinstance(items, list):
        raise ConfigError([f"{dotted}.{next(iter(update))}: {dotted} is not a list in the config file or preset "
                           "below this override, so it has no item to set; give the whole value instead, e.g. "
                           f"--set '{dotted}=[...]'"])
    out = copy.deepcopy(items)
    for index, value in update.items():
        if index >= len(out):
            raise ConfigError([f"{dotted}.{index}: {dotted} has {len(out)} item(s) (0 to {len(out) - 1}); "
                               "an override can change an item, not add one"])
        if isinstance(value, dict) and isinstance(out[index], dict):
            out[index] = deep_merge(out[index], value, f"{dotted}.{index}.")
        else:
            out[index] = copy.deepcopy(value)
    return out


def _describe(err: dict[str, Any], layers: list[_Layer]) -> str:
    loc = tuple(err["loc"])
    dotted = ".".join(str(p) for p in loc) or "<top level>"
    origin = _origin_of(loc, layers)
    if err["type"] == "extra_forbidden":
        return f"{origin}: {dotted}: unknown key ({_unknown_key_hint(loc)})"
    value = err.get("input")
    secret = any(isinstance(p, str) and is_secret_key(p) for p in loc)
    shown = "" if isinstance(value, dict) else f" = {REDACTED}" if secret else f" = {value!r}"
    return f"{origin}: {dotted}{shown}: {err['msg']}"


def _origin_of(loc: tuple[Any, ...], layers: list[_Layer]) -> str:
    """The last layer that set the value at `loc` (or its nearest parent), for error messages."""
    for depth in range(len(loc), 0, -1):
        for layer in reversed(layers):
            node: Any = layer.values
            for part in loc[:depth]:
                if isinstance(node, dict) and part in node:
                    node = node[part]
                elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                    node = node[part]
                else:
                    break
            else:
                return layer.origin
    return "defaults"


def _unknown_key_hint(loc: tuple[Any, ...]) -> str:
    """What to write instead of the unknown key at `loc`: sftpipe's key for another tool's key, the same key in
    the section it belongs to, the nearest spelling in this section, or this section's keys."""
    key = str(loc[-1])
    if key in FOREIGN_KEYS:
        return FOREIGN_KEYS[key]
    elsewhere = [f.key for f in all_fields() if f.key.rsplit(".", 1)[-1] == key]
    if elsewhere:
        return f"sftpipe's key for it is {' or '.join(elsewhere)}"
    valid = _valid_keys(loc[:-1])
    hint = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    return f"did you mean '{hint[0]}'?" if hint else f"valid keys here: {', '.join(valid)}"


def _valid_keys(loc: tuple[Any, ...]) -> list[str]:
    if loc[:2] == ("hpo", "search_space") and len(loc) == 4:  # (..., dotted key, the spec's type)
        return sorted(PARAM_TYPES[loc[3]].model_fields) if loc[3] in PARAM_TYPES else []
    model: type[BaseModel] = Config
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        model = model_in(field.annotation) or model
    return sorted(model.model_fields)


def dump_config(cfg: BaseModel) -> str:
    """The resolved config as YAML, in section order, with secret-named values redacted (see `redact`)."""
    return yaml.safe_dump(redact(cfg.model_dump(mode="json")), sort_keys=False, allow_unicode=True)


def save_config(cfg: BaseModel, path: Path) -> None:
    path.write_text(dump_config(cfg), encoding="utf-8")
