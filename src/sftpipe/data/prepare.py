"""The `prepare` stage: read -> canonical conversations -> split -> tokenize with masks -> data dir.

Every record read is accounted for: it ends up in a split or in `rejected.jsonl` with a reason, and the
counts per reason are in the manifest, the data card and the CLI output.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftpipe.config.schema import Config
from sftpipe.data.formats import detect_format, to_conversation
from sftpipe.data.readers import read_source
from sftpipe.data.records import Conversation, RecordError
from sftpipe.data.templates import check_template, resolve_template
from sftpipe.data.tokenize import ConversationTokenizer, TokenizedExample
from sftpipe.data.writer import SPLITS, write_data_dir
from sftpipe.errors import SftpipeError
from sftpipe.models.loading import load_tokenizer


@dataclass
class Rejection:
    source: str
    location: str
    stage: str  # "read" or "tokenize"
    reason: str
    detail: str
    excerpt: str

    def as_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass
class SplitStats:
    examples: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    truncated: int = 0
    max_tokens: int = 0


@dataclass
class PrepareResult:
    output_dir: Path
    records_read: int
    splits: dict[str, SplitStats]
    rejected: Counter[str] = field(default_factory=Counter)
    per_source: dict[str, dict[str, int]] = field(default_factory=dict)


class Ledger:
    """Collects rejections; in strict mode (data.on_error: raise) the first one stops the run."""

    def __init__(self, strict: bool):
        self.strict = strict
        self.items: list[Rejection] = []

    def reject(self, conv_source: str, location: str, stage: str, err: RecordError, excerpt: Any) -> None:
        if self.strict:
            raise SftpipeError(f"{location}: {err.reason}: {err.detail} (data.on_error is raise; set it to skip "
                               "to reject such records and continue)")
        text = excerpt if isinstance(excerpt, str) else json.dumps(excerpt, ensure_ascii=False, default=str)
        self.items.append(Rejection(conv_source, location, stage, err.reason, err.detail, text[:500]))

    def counts(self) -> Counter[str]:
        return Counter(r.reason for r in self.items)


def run(cfg: Config) -> PrepareResult:
    """Prepare the data dir described by `cfg.data` with the tokenizer of `cfg.model`."""
    if not cfg.data.sources:
        raise SftpipeError("data.sources is empty: add at least one source, e.g. sources: [{path: train.jsonl}]")
    missing = [f"data.sources[{i}].path: {s.path!r} not found" for i, s in enumerate(cfg.data.sources)
               if s.path is not None and not Path(s.path).exists()]
    if missing:
        raise SftpipeError("; ".join(missing))
    tokenizer = load_tokenizer(cfg.model)
    template = resolve_template(cfg.data, tokenizer)
    check_template(tokenizer, template, cfg.data.template)
    ledger = Ledger(strict=cfg.data.on_error == "raise")

    conversations, per_source, records_read = read_conversations(cfg, ledger)
    split_convs = split_conversations(conversations, cfg)
    encode = ConversationTokenizer(tokenizer, template, cfg.data.max_length, cfg.data.overlong)
    tokenized: dict[str, list[tuple[Conversation, TokenizedExample]]] = {}
    for split, convs in split_convs.items():
        tokenized[split] = []
        for conv in convs:
            try:
                tokenized[split].append((conv, encode(conv)))
            except RecordError as err:
                ledger.reject(conv.source, conv.location, "tokenize", err, conv.messages)
                per_source[conv.source]["rejected"] += 1
                per_source[conv.source]["kept"] -= 1

    stats = {split: _stats(items) for split, items in tokenized.items()}
    out = Path(cfg.data.output_dir)
    result = PrepareResult(out, records_read, stats, ledger.counts(), per_source)
    write_data_dir(out, cfg, tokenizer, template, tokenized, result, [r.as_json() for r in ledger.items])
    return result


def read_conversations(cfg: Config, ledger: Ledger) -> tuple[list[Conversation], dict[str, dict[str, int]], int]:
    """Read every source into canonical conversations; bad records go to the ledger."""
    conversations: list[Conversation] = []
    per_source: dict[str, dict[str, int]] = {}
    records_read = 0
    for source in cfg.data.sources:
        name = source.display_name
        counts = per_source.setdefault(name, {"read": 0, "kept": 0, "rejected": 0})
        fmt: str | None = None
        for location, record in read_source(source):
            records_read += 1
            counts["read"] += 1
            try:
                if isinstance(record, RecordError):
                    raise record
                fmt = fmt or detect_format(record, source)
                conv = to_conversation(record, fmt, source, location, cfg.data.system_prompt)
            except RecordError as err:
                ledger.reject(name, location, "read", err, record if not isinstance(record, RecordError) else "")
                counts["rejected"] += 1
                continue
            conversations.append(conv)
            counts["kept"] += 1
        if counts["read"] == 0:
            raise SftpipeError(f"data source {name!r} ({source.path or source.hf_dataset}) has no records")
    return conversations, per_source, records_read


def split_conversations(conversations: list[Conversation], cfg: Config) -> dict[str, list[Conversation]]:
    """Deterministic split: a seeded permutation cut by the configured ratios (val and test rounded)."""
    order = list(range(len(conversations)))
    random.Random(cfg.data.split.seed).shuffle(order)
    n = len(order)
    n_val = round(n * cfg.data.split.val)
    n_test = round(n * cfg.data.split.test)
    cuts = {"val": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}
    return {split: [conversations[i] for i in sorted(cuts[split])] for split in SPLITS}


def _stats(items: list[tuple[Conversation, TokenizedExample]]) -> SplitStats:
    stats = SplitStats()
    for _, ex in items:
        stats.examples += 1
        stats.tokens += len(ex.input_ids)
        stats.trained_tokens += ex.num_trained
        stats.truncated += int(ex.truncated)
        stats.max_tokens = max(stats.max_tokens, len(ex.input_ids))
    return stats
