"""The data dir `prepare` writes and `train` and `eval` read: the example features, manifest.json, the splits.

`prepare` builds the dir under a temporary name and renames it into place, so a crash never leaves a
half-written data dir that `train` would accept. The manifest pins the tokenizer by a hash of everything that
decides token ids: data tokenized with another tokenizer is refused, since its ids would mean other tokens.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import datasets
from pydantic import model_serializer

from sftpipe.contracts.files import FORMAT_VERSION, Record, read_json, read_record, to_json, write_record
from sftpipe.errors import SftpipeError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
FEATURES = datasets.Features(
    {
        "input_ids": datasets.Sequence(datasets.Value("int32")),
        "labels": datasets.Sequence(datasets.Value("int32")),
        "source": datasets.Value("string"),
        "location": datasets.Value("string"),
        "messages": datasets.Value("string"),  # JSON: the canonical conversation, for generation and eval
        "meta": datasets.Value("string"),  # JSON: id, tests, entry_point, ...
    }
)


class TokenizerInfo(Record):
    name_or_path: str  # what model.tokenizer (or model.name_or_path) said when the data was prepared
    sha256: str  # `tokenizer_sha256` of that tokenizer


class TemplateInfo(Record):
    name: str  # data.template
    sha256: str  # of `text`
    text: str  # the Jinja template every example was rendered with


class SplitStats(Record):
    """One split as written (train rows counted as often as mixing repeats them)."""

    examples: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    truncated: int = 0
    max_tokens: int = 0
    shards: int = 0


class SourceCounts(Record):
    """Records of one source: read, kept in some split (before mixing), rejected with a reason."""

    read: int
    kept: int
    rejected: int


class Overlap(Record):
    """Records removed as duplicates of, or overlapping with, `against` (a split or an eval set)."""

    reason: str
    against: str
    count: int


class SourceMix(Record):
    """How one source's share of the train split was met by weighted mixing (amounts in the mixing unit)."""

    source: str
    weight: float
    available: int  # kept train examples before mixing
    available_examples: int
    target: float
    achieved: int
    examples: int  # rows in the mixed train split
    target_share: float
    achieved_share: float


class Mixing(Record):
    unit: str  # data.mix.unit
    total: int  # achieved, summed over sources
    sources: list[SourceMix]


class SplitLengths(Record):
    """Token lengths of one split's examples; the figures are absent (None) when it has none."""

    examples: int
    min: int | None = None
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    max: int | None = None
    histogram: list[int]

    @model_serializer(mode="wrap")
    def _leave_out_absent(self, handler: Any) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class LengthFigures(Record):
    bin_edges: list[int]  # shared by every split's histogram
    splits: dict[str, SplitLengths]


class FigureSummary(Record):
    """One code-quality figure over the records that passed verification: summary and histogram."""

    records: int  # records it was measured on
    integer: bool = False  # every value is a whole number: bins [a, b) hold the integers a .. b-1
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    max: float | None = None
    bin_edges: list[float]
    histogram: list[int]


class Verification(Record):
    """What `verify: tests` did: records judged against their own tests, their verdicts, cache hits, records
    without tests, and the code-quality figures of the passing ones (before dedup)."""

    sources: list[str]  # the sources with verify: tests
    verified: int  # records with tests, judged (run, or their verdict found in the cache)
    passed: int
    cached: int  # of `verified`: verdicts taken from the cache or shared with an identical record (nothing run)
    verdicts: dict[str, int]  # verdict -> records, pass included
    untested: int  # records without tests
    untested_policy: str  # data.verify.untested: keep or drop
    quality: dict[str, FigureSummary]  # figure -> summary
    skipped_figures: dict[str, str]  # figure -> why it was not measured (a missing tool, named)
    tools: dict[str, str] = {}  # language runner or quality tool -> its version (what the figures depend on)


class DataManifest(Record):
    """manifest.json: what the data dir holds and how it was made."""

    format_version: int = FORMAT_VERSION
    kind: Literal["sftpipe-data"] = "sftpipe-data"
    sftpipe_version: str
    created: str  # ISO 8601, UTC
    tokenizer: TokenizerInfo
    template: TemplateInfo
    max_length: int
    overlong: str  # data.overlong
    records_read: int
    splits: dict[str, SplitStats]
    sources: dict[str, SourceCounts]
    rejected: dict[str, int]  # by reason
    removed_by_stage: dict[str, dict[str, int]]  # stage -> reason -> count
    rejected_by_source: dict[str, dict[str, int]]  # source -> reason -> count
    overlaps: list[Overlap]
    mixing: Mixing | None
    lengths: LengthFigures
    data_config: dict[str, Any]  # the data section it was prepared with, secrets redacted
    verification: Verification | None = None  # present only when a source sets verify: tests

    @model_serializer(mode="wrap")
    def _leave_out_no_verification(self, handler: Any) -> dict[str, Any]:
        # Without verification the file is what it was before the field existed, so older readers still read it.
        out = handler(self)
        if out.get("verification") is None:
            out.pop("verification", None)
        return out

    @property
    def sha256(self) -> str:
        """SHA-256 of the manifest's content (its JSON with sorted keys), recorded by the runs that read it."""
        return hashlib.sha256(json.dumps(to_json(self), sort_keys=True).encode()).hexdigest()


def tokenizer_sha256(tokenizer: PreTrainedTokenizerBase) -> str:
    """Hash of everything that decides token ids: vocab, merges, normalizer, pre-tokenizer, special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise SftpipeError(f"tokenizer {tokenizer.name_or_path!r} is a slow tokenizer; sftpipe needs a fast one")
    payload = {
        "backend": json.loads(backend.to_str()),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class DataDir:
    """A prepared data dir: `<path>/manifest.json` and one dir of Arrow shards per split."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))  # a str from the config works too

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def is_prepared(self) -> bool:
        """Whether `prepare` has written this dir (it has a manifest)."""
        return self.manifest_path.is_file()

    @cached_property
    def manifest(self) -> DataManifest:
        """The manifest, read once.

        Raises:
            SftpipeError: the dir is not prepared, or its manifest is unreadable or of a newer format_version.
        """
        if not self.is_prepared():
            raise SftpipeError(f"{self.path}: not a prepared data dir (no {MANIFEST}); run `sftpipe prepare` first")
        return read_record(self.manifest_path, DataManifest, "a data manifest", "re-run `sftpipe prepare`")

    def write_manifest(self, manifest: DataManifest) -> None:
        write_record(self.manifest_path, manifest)

    def load_split(self, split: str) -> datasets.Dataset:
        """One prepared split (all its shards), memory-mapped by `datasets`.

        Raises:
            SftpipeError: the split is missing.
        """
        path = self.path / split
        if not path.is_dir():
            raise SftpipeError(f"{self.path}: split {split!r} is missing; re-run `sftpipe prepare`")
        state = path / "state.json"
        if state.is_file() and not read_json(state).get("_data_files"):
            # datasets saves an empty split (e.g. data.split.val = 0) without any Arrow file and cannot load it back
            return datasets.Dataset.from_dict({name: [] for name in FEATURES}, features=FEATURES)
        return datasets.load_from_disk(str(path))

    def tokenizer_matches(self, tokenizer: PreTrainedTokenizerBase) -> bool:
        """Whether the data was tokenized with `tokenizer` (same `tokenizer_sha256`)."""
        return tokenizer_sha256(tokenizer) == self.manifest.tokenizer.sha256

    def check_tokenizer(self, tokenizer: PreTrainedTokenizerBase, loaded_from: str) -> None:
        """Refuse data tokenized with a different tokenizer: its ids would mean other tokens.

        Args:
            loaded_from: where `tokenizer` came from (model.tokenizer or model.name_or_path), for the message.
        """
        expected = self.manifest.tokenizer
        actual = tokenizer_sha256(tokenizer)
        if expected.sha256 != actual:
            raise SftpipeError(
                f"{self.manifest_path}: the data was tokenized with {expected.name_or_path!r} "
                f"(tokenizer SHA-256 {expected.sha256[:12]}…) but model {loaded_from!r} "
                f"has tokenizer SHA-256 {actual[:12]}…. Re-run `sftpipe prepare` with this model's config, or set "
                "model.name_or_path to the model the data was prepared for."
            )
