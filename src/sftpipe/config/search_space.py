"""The hpo search space checked against the config schema, and a config with sampled values set.

A key of `hpo.search_space` is a dotted config field (`train.lr`, `lora.r`); a typo is a config error that
names the nearest valid key, as an unknown key in the file is. Every bound and choice is tried on the config
(alone) so that a value the schema refuses (`lora.dropout` of 1.5) is an error before any trial runs, not a
failed trial an hour later. Combinations the schema refuses can still only fail their own trial.
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import ValidationError

from sftpipe.config.fields import all_fields
from sftpipe.config.hpo_section import CategoricalParam
from sftpipe.config.schema import Config

# Fields that say one thing two ways: setting one nulls the other (the loader's layers do the same, see
# `config.loader`); the schema refuses both set.
ALTERNATIVES = (("train", ("warmup_steps", "warmup_ratio")),)


def searchable_keys() -> list[str]:
    """Dotted keys a search space may name: every leaf field but the hpo section and fields of list items."""
    return [f.key for f in all_fields() if not f.key.startswith("hpo.") and "[]" not in f.key]


def unknown_keys(keys: list[str]) -> dict[str, str]:
    """Search-space key -> why it is not one (with the nearest valid key), for each key that is not a field."""
    valid = searchable_keys()
    problems = {}
    for key in keys:
        if key not in valid:
            hint = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
            problems[key] = "not a config field" + (f"; did you mean '{hint[0]}'?" if hint else
                                                     " (see `sftpipe show-config --help-fields`)")
    return problems


def refused_values(cfg: Config) -> dict[str, str]:
    """Search-space key -> the first bound or choice that the config refuses when set alone."""
    problems = {}
    for key in set(cfg.hpo.search_space) - set(unknown_keys(list(cfg.hpo.search_space))):
        spec = cfg.hpo.search_space[key]
        for value in spec.choices if isinstance(spec, CategoricalParam) else [spec.low, spec.high]:
            try:
                with_values(cfg, {key: value})
            except ValidationError as exc:
                problems[key] = f"the value {value!r} is refused by the config: {_first_message(exc)}"
                break
    return problems


def with_values(cfg: Config, values: dict[str, Any]) -> Config:
    """`cfg` with the dotted `values` set, validated as a whole.

    Raises:
        pydantic.ValidationError: the resulting config is invalid.
    """
    data = cfg.model_dump(mode="json")
    for key, value in values.items():
        *sections, leaf = key.split(".")
        node = data
        for part in sections:
            node = node[part]
        for section, pair in ALTERNATIVES:
            if sections == [section] and leaf in pair:
                for other in pair:
                    node[other] = None
        node[leaf] = value
    return Config.model_validate(data)


def _first_message(exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
