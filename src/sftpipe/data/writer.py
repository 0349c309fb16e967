"""The data dir's contract: the example features, manifest.json, and how later stages read a split.

`prepare` builds the dir under a temporary name and renames it into place, so a crash never leaves a
half-written data dir that `train` would accept.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import datasets

from sftpipe import __version__
from sftpipe.config.schema import Config
from sftpipe.errors import SftpipeError
from sftpipe.models.loading import tokenizer_sha256
from sftpipe.redact import redact

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from sftpipe.data.prepare.ledger import Ledger
    from sftpipe.data.prepare.results import PrepareResult

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


def build_manifest(cfg: Config, tokenizer: PreTrainedTokenizerBase, template: str, result: PrepareResult,
                   lengths: dict, ledger: Ledger) -> dict:
    """What the data dir holds and how it was made; `train` checks its tokenizer hash."""
    return {
        "kind": "sftpipe-data",
        "sftpipe_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tokenizer": {"name_or_path": cfg.model.tokenizer or cfg.model.name_or_path,
                      "sha256": tokenizer_sha256(tokenizer)},
        "template": {"name": cfg.data.template, "sha256": hashlib.sha256(template.encode()).hexdigest(),
                     "text": template},
        "max_length": cfg.data.max_length,
        "overlong": cfg.data.overlong,
        "records_read": result.records_read,
        "splits": {name: stats.__dict__ for name, stats in result.splits.items()},
        "sources": result.per_source,
        "rejected": dict(sorted(result.rejected.items())),
        "removed_by_stage": {stage: dict(sorted(c.items())) for stage, c in sorted(result.removed_by_stage.items())},
        "rejected_by_source": {name: dict(sorted(c.items())) for name, c in sorted(ledger.by_source.items())},
        "overlaps": [{"reason": reason, "against": target, "count": n}
                     for (reason, target), n in sorted(ledger.by_target.items())],
        "mixing": None if result.mixing is None else {
            "unit": cfg.data.mix.unit,
            "total": sum(m.achieved for m in result.mixing),
            "sources": [m.as_json() for m in result.mixing],
        },
        "lengths": lengths,
        "data_config": redact(cfg.data.model_dump(mode="json")),
    }


def read_manifest(data_dir: Path) -> dict:
    """The manifest of a prepared data dir.

    Raises:
        SftpipeError: the dir or its manifest is missing.
    """
    path = data_dir / MANIFEST
    if not path.is_file():
        raise SftpipeError(f"{data_dir}: not a prepared data dir (no {MANIFEST}); run `sftpipe prepare` first")
    return json.loads(path.read_text(encoding="utf-8"))


def load_split(data_dir: Path, split: str) -> datasets.Dataset:
    """One prepared split (all its shards), memory-mapped by `datasets`.

    Raises:
        SftpipeError: the split is missing.
    """
    path = data_dir / split
    if not path.is_dir():
        raise SftpipeError(f"{data_dir}: split {split!r} is missing; re-run `sftpipe prepare`")
    state = path / "state.json"
    if state.is_file() and not json.loads(state.read_text(encoding="utf-8")).get("_data_files"):
        # datasets saves an empty split (e.g. data.split.val = 0) without any Arrow file and cannot load it back
        return datasets.Dataset.from_dict({name: [] for name in FEATURES}, features=FEATURES)
    return datasets.load_from_disk(str(path))
