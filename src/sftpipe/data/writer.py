"""Write a self-describing data dir: Arrow splits, manifest.json, DATA_CARD.md, rejected.jsonl.

The dir is built under a temporary name and renamed into place, so a crash never leaves a half-written
data dir that `train` would accept.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets

from sftpipe import __version__
from sftpipe.config.schema import Config
from sftpipe.errors import SftpipeError
from sftpipe.models.loading import tokenizer_sha256

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from sftpipe.data.prepare import PrepareResult
    from sftpipe.data.records import Conversation
    from sftpipe.data.tokenize import TokenizedExample

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


def write_data_dir(
    out: Path,
    cfg: Config,
    tokenizer: PreTrainedTokenizerBase,
    template: str,
    tokenized: dict[str, list[tuple[Conversation, TokenizedExample]]],
    result: PrepareResult,
    rejected: list[dict[str, Any]],
) -> None:
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for split in SPLITS:
        rows = tokenized[split]
        ds = datasets.Dataset.from_dict(
            {
                "input_ids": [ex.input_ids for _, ex in rows],
                "labels": [ex.labels for _, ex in rows],
                "source": [conv.source for conv, _ in rows],
                "location": [conv.location for conv, _ in rows],
                "messages": [json.dumps(conv.messages, ensure_ascii=False) for conv, _ in rows],
                "meta": [json.dumps(conv.meta, ensure_ascii=False, default=str) for conv, _ in rows],
            },
            features=FEATURES,
        )
        ds.save_to_disk(str(tmp / split))
    with (tmp / "rejected.jsonl").open("w", encoding="utf-8") as fh:
        for item in rejected:
            fh.write(json.dumps(item, ensure_ascii=False) + "\n")
    manifest = build_manifest(cfg, tokenizer, template, result)
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    (tmp / "DATA_CARD.md").write_text(data_card(manifest), encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def build_manifest(cfg: Config, tokenizer: PreTrainedTokenizerBase, template: str, result: PrepareResult) -> dict:
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
        "data_config": cfg.data.model_dump(mode="json"),
    }


def data_card(manifest: dict) -> str:
    lines = [
        "# Data card",
        "",
        f"Made by sftpipe {manifest['sftpipe_version']} on {manifest['created']}.",
        f"Tokenizer `{manifest['tokenizer']['name_or_path']}`, SHA-256 `{manifest['tokenizer']['sha256']}`.",
        f"Template `{manifest['template']['name']}` (SHA-256 `{manifest['template']['sha256'][:16]}…`), "
        f"max_length {manifest['max_length']}, over-long policy `{manifest['overlong']}`.",
        "",
        "## Sources",
        "",
        "| source | read | kept | rejected |",
        "|---|---:|---:|---:|",
    ]
    for name, c in manifest["sources"].items():
        lines.append(f"| {name} | {c['read']} | {c['kept']} | {c['rejected']} |")
    lines += ["", "## Splits", "", "| split | examples | tokens | trained tokens | truncated | longest |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, s in manifest["splits"].items():
        lines.append(f"| {name} | {s['examples']} | {s['tokens']} | {s['trained_tokens']} | {s['truncated']} "
                     f"| {s['max_tokens']} |")
    lines += ["", "## Rejected records", ""]
    if manifest["rejected"]:
        lines += ["| reason | count |", "|---|---:|"]
        lines += [f"| {reason} | {count} |" for reason, count in manifest["rejected"].items()]
        lines += ["", "Each one is listed with its file, line and reason in `rejected.jsonl`."]
    else:
        lines.append("None.")
    return "\n".join(lines) + "\n"


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
    path = data_dir / split
    if not path.is_dir():
        raise SftpipeError(f"{data_dir}: split {split!r} is missing; re-run `sftpipe prepare`")
    state = path / "state.json"
    if state.is_file() and not json.loads(state.read_text(encoding="utf-8")).get("_data_files"):
        # datasets saves an empty split (e.g. data.split.val = 0) without any Arrow file and cannot load it back
        return datasets.Dataset.from_dict({name: [] for name in FEATURES}, features=FEATURES)
    return datasets.load_from_disk(str(path))
