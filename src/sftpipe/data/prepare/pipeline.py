"""The prepare orchestrator: `run(cfg)` checks the inputs, runs the stages in order (see `sftpipe.data.prepare`)
and moves the finished data dir into place.

The dir is built under `<output_dir>.tmp` and renamed, so a crash never leaves a half-written data dir. A run
that keeps nothing, or leaves the train split empty where the split asks for one, is an error, not a data dir:
its reports are kept in `<output_dir>.failed/` for the user to read.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from sftpipe.config.schema import Config
from sftpipe.contracts.data_dir import DataDir
from sftpipe.data.prepare.card import data_card, length_figures, write_histogram_svg
from sftpipe.data.prepare.decontam import find_ngram_overlaps
from sftpipe.data.prepare.dedup import KEPT, find_duplicates
from sftpipe.data.prepare.fingerprint import SignatureStore
from sftpipe.data.prepare.ledger import Ledger
from sftpipe.data.mixing import plan_mix
from sftpipe.data.prepare.results import PrepareResult, ScanTable, SourceMix, SplitStats
from sftpipe.data.prepare.scan import LocationStore, read_chunks, run_chunks
from sftpipe.data.prepare.shards import metadata_template
from sftpipe.data.prepare.verify import (
    VerifyTally,
    check_verify_inputs,
    skipped_figures,
    verification_figures,
    verified_sources,
)
from sftpipe.data.prepare.split import SPLIT_NAMES, TRAIN, assign_splits
from sftpipe.data.prepare.write import write_splits
from sftpipe.data.syntax import require_checker
from sftpipe.data.templates import check_template, resolve_template
from sftpipe.data.prepare.manifest import build_manifest
from sftpipe.errors import SftpipeError
from sftpipe.models.loading import load_tokenizer


def run(cfg: Config) -> PrepareResult:
    """Prepare the data dir described by `cfg.data` with the tokenizer of `cfg.model`.

    Raises:
        SftpipeError: missing inputs, a broken template, a data error in strict mode, an unmeetable mix, no
            record kept, or an empty train split where data.split.train > 0 (e.g. all kept ones in val).
    """
    t0 = time.perf_counter()
    check_inputs(cfg)
    tokenizer = load_tokenizer(cfg.model)
    template = resolve_template(cfg.data, tokenizer)
    check_template(tokenizer, template, cfg.data.template)
    out = Path(cfg.data.output_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "_work").mkdir(parents=True)
    try:
        result = _prepare(cfg, tokenizer, template, out, tmp)
        shutil.rmtree(tmp / "_work")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # never leave a half-written data dir behind
        raise
    failed = out.with_name(out.name + ".failed")
    shutil.rmtree(failed, ignore_errors=True)  # the reports of an earlier failed run no longer apply
    if _nothing_to_train(result, cfg.data.split.train):
        for name in SPLIT_NAMES.values():
            shutil.rmtree(tmp / name)
        tmp.rename(failed)
        raise _empty_train_error(result, failed)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    result.wall_s = time.perf_counter() - t0
    return result


def _nothing_to_train(result: PrepareResult, train_share: float) -> bool:
    """Nothing kept at all, or no train example where the split asks for some (train: 0 makes eval-only data)."""
    kept = sum(stats.examples for stats in result.splits.values())
    return kept == 0 or (train_share > 0 and result.splits["train"].examples == 0)


def _empty_train_error(result: PrepareResult, reports: Path) -> SftpipeError:
    """What left the train split empty, counted by reason, with the first rejection of the commonest reason
    (its detail says what to change) and what to do. A data dir without training examples would only fail
    later, in `train`, far from its cause."""
    val, test = result.splits["val"].examples, result.splits["test"].examples
    if val + test == 0:
        what = f"prepare kept none of the {result.records_read} records read"
        todo = "fix what the rejections name and run prepare again"
    else:
        what = f"the train split is empty: of {result.records_read} records read, {val} went to val and {test} to test"
        todo = ("add records, or lower data.split.val and data.split.test (exact duplicates always share a split, "
                "and dedup keeps one of them)")
    counts = ", ".join(f"{reason} {n}" for reason, n in result.rejected.most_common()) or "none"
    first = f" First {result.first_rejected[result.rejected.most_common(1)[0][0]]}." if result.rejected else ""
    return SftpipeError(f"{what}; rejected: {counts}.{first} Every rejection is in {reports / 'rejected.jsonl'} "
                        f"(summary: {reports / 'DATA_CARD.md'}); {todo}")


def check_inputs(cfg: Config) -> None:
    """Fail before any work on missing sources, eval sets or syntax checkers, naming each field."""
    data = cfg.data
    if not data.sources:
        raise SftpipeError("data.sources is empty: add at least one source, e.g. sources: [{path: train.jsonl}]")
    problems = [f"data.sources[{i}].path: {s.path!r} not found" for i, s in enumerate(data.sources)
                if s.path is not None and not Path(s.path).exists()]
    problems += [f"data.decontam.eval_sets[{i}].path: {e.path!r} not found"
                 for i, e in enumerate(data.decontam.eval_sets) if not Path(e.path).exists()]
    if problems:
        raise SftpipeError("; ".join(problems))
    for i, source in enumerate(data.sources):
        require_checker(source.syntax_check, f"data.sources[{i}].syntax_check")
    check_verify_inputs(cfg)
    names = [s.display_name for s in data.sources]
    if data.sources[0].weight is not None and len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise SftpipeError(f"data.sources: several sources are named {', '.join(twice)}; mixing reports each "
                           "source by name, so give each one a distinct `name`")


def _prepare(cfg: Config, tokenizer, template: str, out: Path, tmp: Path) -> PrepareResult:
    data = cfg.data
    work = tmp / "_work"
    ledger = Ledger(tmp / "rejected.jsonl", strict=data.on_error == "raise")
    signatures = SignatureStore(work / "signatures.u32", data.dedup.num_perm) if data.dedup.near else None
    locations = LocationStore(work / "locations.txt")
    try:
        counts: dict[str, dict[str, int]] = {}
        tally = VerifyTally()
        table = _scan(cfg, tokenizer, template, work, ledger=ledger, signatures=signatures, locations=locations,
                      counts=counts, tally=tally)
        split = assign_splits(table.key, data.split)
        if signatures is not None:
            signatures.finish_writing()
        locations.finish_writing()
        removals = find_duplicates(table.digest, split, signatures, data.dedup, work)
        find_ngram_overlaps(removals, split, table.chunks, data.decontam)
        repeat = (removals.status == KEPT).astype(np.int64)
        mixes = _mix(cfg, table, split, repeat)
        shards = write_splits(tmp, table, split=split, removals=removals, repeat=repeat, ledger=ledger,
                              locations=locations, data=data, template=metadata_template())
    finally:
        ledger.close()
        locations.close()
        if signatures is not None:
            signatures.close()
    for name, c in counts.items():
        c["rejected"] = sum(ledger.by_source[name].values())
        c["kept"] = c["read"] - c["rejected"]
    splits, lengths = _split_stats(table, split, removals.status == KEPT, repeat, shards)
    first = {reason: f"{r.location}: {reason}: {r.detail}" for reason, r in ledger.first.items()}
    result = PrepareResult(out, sum(c["read"] for c in counts.values()), splits, rejected=Counter(ledger.by_reason),
                           first_rejected=first, per_source=counts,
                           removed_by_stage={stage: dict(c) for stage, c in ledger.by_stage.items()}, mixing=mixes)
    if verified_sources(cfg):
        result.verification = verification_figures(cfg, tally, skipped_figures(cfg))
    figures = length_figures(lengths, data.max_length)
    manifest = build_manifest(cfg, tokenizer, template, result, figures, ledger)
    DataDir(tmp).write_manifest(manifest)
    write_histogram_svg(tmp / "length_histogram.svg", figures)
    (tmp / "DATA_CARD.md").write_text(data_card(manifest), encoding="utf-8")
    return result


def _split_stats(table: ScanTable, split: np.ndarray, kept: np.ndarray, repeat: np.ndarray, shards: dict[str, int]
                 ) -> tuple[dict[str, SplitStats], dict[str, np.ndarray]]:
    """Figures of each split as written (train rows counted as often as the mix repeats them)."""
    stats, lengths = {}, {}
    for code, name in SPLIT_NAMES.items():
        sel = (split == code) & kept
        rep = repeat[sel]
        tokens = np.repeat(table.tokens[sel].astype(np.int64), rep)
        stats[name] = SplitStats(
            examples=int(rep.sum()), tokens=int(tokens.sum()),
            trained_tokens=int((table.trained[sel].astype(np.int64) * rep).sum()),
            truncated=int((table.truncated[sel] * rep).sum()), max_tokens=int(tokens.max(initial=0)),
            shards=shards[name],
        )
        lengths[name] = tokens
    return stats, lengths


def _scan(cfg: Config, tokenizer, template: str, work: Path, *, ledger: Ledger, signatures: SignatureStore | None,
          locations: LocationStore, counts: dict[str, dict[str, int]], tally: VerifyTally) -> ScanTable:
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("source", "digest", "key", "tokens", "trained", "truncated")}
    chunks: list[tuple[int, str]] = []
    rows = 0
    # The bar appears only for inputs that take more than a few seconds (and only on a terminal).
    with tqdm(desc="prepare", unit=" records", delay=3, disable=None, dynamic_ncols=True) as bar:
        init_args = (cfg, tokenizer, template, str(work))
        for res in run_chunks(read_chunks(cfg, counts), cfg.data.num_proc, init_args):
            for rejection in res.rejections:
                ledger.add(rejection)
            if res.verify is not None:
                tally.add(res.verify)
            if res.kept:
                assert res.path is not None
                chunks.append((rows, res.path))
                for name in parts:
                    parts[name].append(getattr(res, name))
                if signatures is not None:
                    assert res.signatures is not None
                    signatures.append(res.signatures)
                locations.extend(res.locations)
                rows += res.kept
            bar.update(res.records)
    dtypes = {"source": np.uint16, "digest": np.uint64, "key": np.uint64, "tokens": np.int32, "trained": np.int32,
              "truncated": bool}
    arrays = {name: np.concatenate(p) if p else np.zeros(0, dtype=dtypes[name]) for name, p in parts.items()}
    return ScanTable(chunks=chunks, **arrays)


def _mix(cfg: Config, table: ScanTable, split: np.ndarray, repeat: np.ndarray) -> list[SourceMix] | None:
    data = cfg.data
    if not data.sources or data.sources[0].weight is None:
        return None
    rows = np.flatnonzero((split == TRAIN) & (repeat > 0))
    amount = {"samples": np.ones(len(rows), dtype=np.int64), "tokens": table.tokens[rows].astype(np.int64),
              "trained_tokens": table.trained[rows].astype(np.int64)}[data.mix.unit]
    names = [s.display_name for s in data.sources]
    weights = [float(s.weight or 0) for s in data.sources]
    counts, mixes = plan_mix(names, weights, table.source[rows].astype(np.int64), amount, data.mix)
    repeat[rows] = counts
    return mixes
