"""Config sections of `data` for data at scale: quality filters, dedup, decontamination, mixing.

Defaults keep every record that is usable (filters off except junk checks), remove exact and near
duplicates, and never drop a record without counting it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sftpipe.config.base import Section


class FilterConfig(Section):
    """Per-record quality filters. The prompt is the user turns, the response the assistant turns."""

    min_prompt_chars: int = Field(0, ge=0, description="Drop records whose prompt has fewer characters.")
    max_prompt_chars: int | None = Field(None, gt=0, description="Drop records whose prompt has more characters.")
    min_response_chars: int = Field(0, ge=0, description="Drop records whose response has fewer characters.")
    max_response_chars: int | None = Field(
        None, gt=0, description="Drop records whose response has more characters."
    )
    min_prompt_tokens: int = Field(0, ge=0, description="Drop records with fewer untrained (prompt) tokens.")
    max_prompt_tokens: int | None = Field(None, gt=0, description="Drop records with more untrained (prompt) tokens.")
    min_response_tokens: int = Field(0, ge=0, description="Drop records with fewer trained (response) tokens.")
    max_response_tokens: int | None = Field(
        None, gt=0, description="Drop records with more trained (response) tokens."
    )
    urls: Literal["keep", "drop_response", "drop_any"] = Field(
        "keep", description="URL filter: keep; drop records whose response has a URL; or whose any message has one."
    )
    code_blocks: Literal["any", "require", "forbid"] = Field(
        "any", description="Fenced code blocks in the response: any; require one; or forbid them."
    )
    max_repeated_line_fraction: float = Field(
        0.5, gt=0, le=1,
        description="Junk check: drop a response when more than this share of its lines (of 10+ characters, "
        "at least 4 of them) repeat an earlier line. 1.0 disables it.",
    )
    require_alphanumeric: bool = Field(
        True, description="Junk check: drop records whose response has no letter or digit (e.g. only '...')."
    )

    @model_validator(mode="after")
    def _min_below_max(self) -> "FilterConfig":
        for what in ("prompt_chars", "response_chars", "prompt_tokens", "response_tokens"):
            low, high = getattr(self, f"min_{what}"), getattr(self, f"max_{what}")
            if high is not None and low > high:
                raise ValueError(f"min_{what} ({low}) is above max_{what} ({high})")
        return self


class DedupConfig(Section):
    """Duplicate removal over all sources and splits (system messages are not compared).

    A record is removed when it duplicates a kept record of the same or a more protected split
    (test, then val, then train), so near-duplicates never straddle train and test.
    """

    exact: bool = Field(True, description="Remove exact duplicates (after Unicode, case and whitespace normalisation).")
    near: bool = Field(True, description="Remove near-duplicates found by MinHash LSH (datasketch).")
    threshold: float = Field(0.85, gt=0, lt=1, description="Jaccard similarity of word shingles at which two "
                             "records are near-duplicates.")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations (more: more exact, slower).")
    shingle_words: int = Field(3, ge=1, le=16, description="Words per shingle for near-duplicate detection.")


class EvalSetConfig(Section):
    """A benchmark or other evaluation set that training records must not overlap."""

    path: str = Field(description="File with the eval records (jsonl, json, csv, parquet, or txt: one per paragraph).")
    fields: list[str] = Field(
        default_factory=list,
        description="Fields whose text is protected, e.g. [prompt]; empty: every string field of each record.",
    )
    name: str | None = Field(None, description="Name used in reports; defaults to the file name.")


class DecontamConfig(Section):
    """Remove training records that overlap evaluation data by word n-grams."""

    eval_sets: list[EvalSetConfig] = Field(
        default_factory=list, description="Eval sets (e.g. a benchmark's prompts) that train must not overlap."
    )
    ngram: int = Field(13, ge=3, le=64, description="Length in words of a shared sequence that counts as overlap "
                       "(an eval text shorter than this must appear whole).")
    ngram_against_splits: bool = Field(
        False, description="Also remove train records sharing an n-gram with val/test records (exact and near "
        "duplicates of val/test are always removed when dedup is on). Off by default: boilerplate shared by "
        "every record of a source would remove them all.",
    )


class MixConfig(Section):
    """Weighted mixing of sources in the train split (set `weight` on every source to enable it)."""

    unit: Literal["samples", "tokens", "trained_tokens"] = Field(
        "samples", description="What the weights share: examples, all tokens, or trained (assistant) tokens."
    )
    total: int | None = Field(
        None, gt=0, description="Size of the mixed train split in `unit`; default: the train split's own size. "
        "Sources are up-sampled (repeated) or down-sampled to meet their share of it.",
    )
    seed: int = Field(0, description="Seed of the deterministic choice of which records are repeated or dropped.")
