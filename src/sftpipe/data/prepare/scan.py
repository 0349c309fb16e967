"""Stage 1 of prepare: stream the sources through per-record work on all cores.

The main process reads records and hands out chunks of `CHUNK_RECORDS`; a worker converts each record to
a conversation, runs the quality filters and syntax check, runs the code of sources with `verify: tests`
against its tests (`verify.py`, the whole chunk at once), tokenizes the chunk in batched calls, and
fingerprints each example for the split, dedup and decontamination stages. A worker writes its
examples to one Arrow file per chunk and returns only rejections and fixed-size per-example figures,
so the main process never holds records or tokens: memory stays bounded whatever the input size.
Chunks are processed in order with a bounded number in flight, so the output is the same for any
`num_proc`.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from sftpipe.config.schema import Config, SourceConfig
from sftpipe.contracts.data_dir import FEATURES
from sftpipe.data.prepare.fingerprint import Signer, compared_turns, content_hash, split_key, words_of
from sftpipe.data.filters import check_quality, check_token_lengths
from sftpipe.data.formats import detect_format, to_conversation
from sftpipe.data.prepare.ledger import Rejection
from sftpipe.data.readers import read_source
from sftpipe.data.records import Conversation, RecordError
from sftpipe.data.prepare.spill import SpillFile
from sftpipe.data.prepare.verify import Verifier, VerifyTally, verified_sources
from sftpipe.data.syntax import check_syntax
from sftpipe.data.tokenize import ConversationTokenizer, TokenizedExample
from sftpipe.errors import SftpipeError

CHUNK_RECORDS = 512
# Conversations per batched render + tokenizer call. The Rust encodings and Python offset lists of a batch
# are transient but large (~20 KB per example), so batches stay small to keep the peak low.
TOKENIZE_BATCH = 64
SCHEMA = FEATURES.arrow_schema


@dataclass
class Chunk:
    index: int
    items: list[tuple[int, str, Any, str | None]]  # (source index, location, record or RecordError, format)


@dataclass
class ChunkResult:
    """What a worker returns for one chunk: rejections, and per kept example (in file order) its figures."""

    index: int
    records: int
    rejections: list[Rejection]
    path: str | None  # the chunk's Arrow file, None when nothing was kept
    source: np.ndarray  # uint16 source index
    digest: np.ndarray  # uint64 content hash (exact duplicates share it)
    key: np.ndarray  # uint64 split key
    tokens: np.ndarray  # int32 input_ids length
    trained: np.ndarray  # int32 trained (label != -100) tokens
    truncated: np.ndarray  # bool
    locations: list[str]
    signatures: np.ndarray | None  # uint32 [kept, num_perm] MinHash signatures, when near dedup is on
    verify: VerifyTally | None = None  # when a source has verify: tests

    @property
    def kept(self) -> int:
        return len(self.source)


@dataclass
class _Worker:
    cfg: Config
    encode: ConversationTokenizer
    signer: Signer | None
    work_dir: Path
    verifier: Verifier | None


_WORKER: _Worker | None = None


def init_worker(cfg: Config, tokenizer: Any, template: str, work_dir: str, processes: int = 1) -> None:
    """Per-process state: the tokenizer (inherited when forked), the encoder, the MinHash signer and the
    verifier, whose execution threads share eval.code.workers (default: the cores) among `processes`."""
    global _WORKER
    dedup = cfg.data.dedup
    signer = Signer(dedup.num_perm, dedup.shingle_words) if dedup.near else None
    encode = ConversationTokenizer(tokenizer, template, cfg.data.max_length, cfg.data.overlong)
    verifier = None
    if verified_sources(cfg):
        verifier = Verifier(cfg, workers=max(1, (cfg.eval.code.workers or available_cores()) // processes))
    _WORKER = _Worker(cfg, encode, signer, Path(work_dir), verifier)


def scan_chunk(chunk: Chunk) -> ChunkResult:
    """Convert, filter, tokenize and fingerprint one chunk; write its examples to an Arrow file.

    Records go through in batches of TOKENIZE_BATCH, each written out before the next is tokenized, so
    only one batch of token lists is alive at a time.
    """
    worker = _WORKER
    assert worker is not None, "init_worker() first"
    data = worker.cfg.data
    out = _ChunkOutput(worker, str(worker.work_dir / f"chunk-{chunk.index:07d}.arrow"))
    names = [source.display_name for source in data.sources]
    ready: list[tuple[int, int, Conversation]] = []  # (position in chunk, source index, conversation)
    for pos, (src, location, record, fmt) in enumerate(chunk.items):
        source = data.sources[src]
        try:
            if isinstance(record, RecordError):
                raise record
            conv = to_conversation(record, fmt or detect_format(record, source), source, location, data.system_prompt,
                                   names[src])
        except RecordError as err:
            excerpt = record.excerpt if isinstance(record, RecordError) else record
            out.rejections.append((pos, Rejection.of(names[src], location, "read", err, excerpt)))
            continue
        try:
            check_quality(conv, data.filters)
            if source.syntax_check != "none":
                check_syntax(conv, source.syntax_check)
        except RecordError as err:
            out.rejections.append((pos, Rejection.of(names[src], location, "filter", err, conv.messages)))
            continue
        ready.append((pos, src, conv))
    if worker.verifier is not None:
        ready = out.verify(worker.verifier, ready)
    for start in range(0, len(ready), TOKENIZE_BATCH):
        out.add_batch(ready[start:start + TOKENIZE_BATCH])
    return out.finish(chunk)


class _ChunkOutput:
    """The examples of one chunk as they are produced: Arrow record batches on disk, figures in lists."""

    def __init__(self, worker: _Worker, path: str):
        self.worker = worker
        self.path = path
        self.rejections: list[tuple[int, Rejection]] = []
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None
        self.figures: dict[str, list] = {k: [] for k in ("source", "digest", "key", "tokens", "trained", "truncated",
                                                         "locations", "signatures")}
        self.tally: VerifyTally | None = None

    def verify(self, verifier: Verifier, ready: list[tuple[int, int, Conversation]]
               ) -> list[tuple[int, int, Conversation]]:
        """Judge the records of verified sources; the records that go on to tokenization, in order."""
        sources = self.worker.cfg.data.sources
        self.tally = VerifyTally()
        items = [(pos, conv, sources[src].code_language) for pos, src, conv in ready if sources[src].verify == "tests"]
        rejected = verifier.run(items, self.tally)
        self.rejections += rejected
        gone = {pos for pos, _ in rejected}
        return [item for item in ready if item[0] not in gone]

    def add_batch(self, batch: list[tuple[int, int, Conversation]]) -> None:
        filters = self.worker.cfg.data.filters
        kept: list[tuple[int, Conversation, TokenizedExample]] = []
        for (pos, src, conv), example in zip(batch, self.worker.encode.encode_batch([c for _, _, c in batch])):
            stage = "tokenize"
            try:
                if isinstance(example, RecordError):
                    raise example
                stage = "filter"
                check_token_lengths(example, filters)
            except RecordError as err:
                self.rejections.append((pos, Rejection.of(conv.source, conv.location, stage, err, conv.messages)))
                continue
            kept.append((src, conv, example))
        if kept:
            self._fingerprint(kept)
            self._write(kept)

    def _fingerprint(self, kept: list[tuple[int, Conversation, TokenizedExample]]) -> None:
        seed, signer, f = self.worker.cfg.data.split.seed, self.worker.signer, self.figures
        for src, conv, example in kept:
            turns = compared_turns(conv)
            digest = content_hash(turns)
            f["source"].append(src)
            f["digest"].append(digest)
            f["key"].append(split_key(digest, seed))
            f["tokens"].append(len(example.input_ids))
            f["trained"].append(example.num_trained)
            f["truncated"].append(example.truncated)
            f["locations"].append(conv.location)
            if signer is not None:
                f["signatures"].append(signer(words_of(turns)))

    def _write(self, kept: list[tuple[int, Conversation, TokenizedExample]]) -> None:
        columns = {
            "input_ids": [ex.input_ids for _, _, ex in kept],
            "labels": [ex.labels for _, _, ex in kept],
            "source": [conv.source for _, conv, _ in kept],
            "location": [conv.location for _, conv, _ in kept],
            "messages": [json.dumps(conv.messages, ensure_ascii=False) for _, conv, _ in kept],
            "meta": [json.dumps(conv.meta, ensure_ascii=False, default=str) for _, conv, _ in kept],
        }
        if self._writer is None:
            self._writer = pa.ipc.new_stream(self.path, SCHEMA)
        self._writer.write_batch(pa.record_batch(columns, schema=SCHEMA))

    def finish(self, chunk: Chunk) -> ChunkResult:
        if self._writer is not None:
            self._writer.close()
        f = self.figures
        self.rejections.sort(key=lambda item: item[0])
        return ChunkResult(
            index=chunk.index,
            records=len(chunk.items),
            rejections=[r for _, r in self.rejections],
            path=self.path if self._writer is not None else None,
            source=np.array(f["source"], dtype=np.uint16),
            digest=np.array(f["digest"], dtype=np.uint64),
            key=np.array(f["key"], dtype=np.uint64),
            tokens=np.array(f["tokens"], dtype=np.int32),
            trained=np.array(f["trained"], dtype=np.int32),
            truncated=np.array(f["truncated"], dtype=bool),
            locations=f["locations"],
            signatures=np.stack(f["signatures"]) if f["signatures"] else None,
            verify=self.tally,
        )


def read_chunk(path: str, columns: list[str] | None = None) -> pa.Table:
    with pa.ipc.open_stream(pa.OSFile(path)) as reader:  # a plain read, not a memory map
        table = reader.read_all()
    return table.select(columns) if columns else table


def read_chunks(cfg: Config, counts: dict[str, dict[str, int]]) -> Iterator[Chunk]:
    """Read every source in order into chunks; the format of a source is detected from its first record.

    Raises:
        SftpipeError: a source has no records.
    """
    items: list[tuple[int, str, Any, str | None]] = []
    index = 0
    for src, source in enumerate(cfg.data.sources):
        name = source.display_name
        counts.setdefault(name, {"read": 0, "kept": 0, "rejected": 0})
        fmt: str | None = None
        before = counts[name]["read"]
        for location, record in read_source(source):
            counts[name]["read"] += 1
            if fmt is None and not isinstance(record, RecordError):
                fmt = _try_detect(record, source)
            items.append((src, location, record, fmt))
            if len(items) == CHUNK_RECORDS:
                yield Chunk(index, items)
                index, items = index + 1, []
        if counts[name]["read"] == before:
            raise SftpipeError(f"data source {name!r} ({source.path or source.hf_dataset}) has no records")
    if items:
        yield Chunk(index, items)


def _try_detect(record: dict[str, Any], source: SourceConfig) -> str | None:
    try:
        return detect_format(record, source)
    except RecordError:
        return None  # the worker rejects this record with the same error; the next one may tell


class LocationStore(SpillFile):
    """Locations of the scanned examples, one line each in a file, read back by row (see `SpillFile`)."""

    def __init__(self, path: Path):
        super().__init__(path)
        self._offsets = [np.zeros(1, dtype=np.int64)]
        self._end = 0

    def extend(self, locations: list[str]) -> None:
        encoded = [loc.replace("\n", " ").encode() for loc in locations]
        sizes = np.fromiter((len(e) + 1 for e in encoded), dtype=np.int64, count=len(encoded))
        self._offsets.append(self._end + np.cumsum(sizes))
        self._end += int(sizes.sum())
        self.write(b"".join(e + b"\n" for e in encoded))

    def finish_writing(self) -> None:
        super().finish_writing()
        self._offsets = [np.concatenate(self._offsets)]

    def __getitem__(self, row: int) -> str:
        start, stop = int(self._offsets[0][row]), int(self._offsets[0][row + 1])
        return self.pread(stop - start - 1, start).decode()


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def run_chunks(chunks: Iterator[Chunk], num_proc: int, init_args: tuple[Any, ...]) -> Iterator[ChunkResult]:
    """Scan chunks in order: in this process when there is one chunk or one worker, else in a pool.

    At most 2 x num_proc chunks are in flight, so reading never runs ahead of the workers unboundedly.
    """
    first = next(chunks, None)
    if first is None:
        return
    second = next(chunks, None)
    workers = num_proc or available_cores()
    if second is None or workers <= 1:
        init_worker(*init_args, 1)
        yield scan_chunk(first)
        if second is not None:
            yield scan_chunk(second)
            for chunk in chunks:
                yield scan_chunk(chunk)
        return
    methods = multiprocessing.get_all_start_methods()
    # fork: workers inherit the loaded tokenizer and libraries instead of importing them again.
    # ProcessPoolExecutor (not Pool): a worker that dies raises BrokenProcessPool here instead of hanging.
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=init_worker,
                             initargs=(*init_args, workers)) as pool:
        pending: deque[Future[ChunkResult]] = deque([pool.submit(scan_chunk, first), pool.submit(scan_chunk, second)])
        try:
            for chunk in chunks:
                pending.append(pool.submit(scan_chunk, chunk))
                while len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool as exc:
            raise SftpipeError("a prepare worker process died (killed for memory?); re-run with --set "
                               "data.num_proc=1 to see the failure in one process") from exc
        finally:
            for future in pending:  # on an error (or a strict-mode stop), do not wait for chunks nobody reads
                future.cancel()
