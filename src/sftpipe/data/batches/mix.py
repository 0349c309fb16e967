"""The train data of a run: one prepared data dir (`data.output_dir`) or several mixed by weight (`train.data`).

Each dir is prepared once, with its own template and filters; mixing happens here, at train time, so
changing the weights needs no new prepare. Every dir keeps its own memory-mapped `TokenStore` (nothing is
concatenated into memory). The mix is a list of (dir, example) pairs planned by `plan_mix` from (seed, dirs,
weights, unit) alone: examples of a dir below its share are repeated, a seeded subset of a dir above it is
taken. `MixedStore` shows those pairs to the plans of `plan.py` as one store, so packing mixes dirs within
rows exactly as it mixes examples of one dir (position ids restart and attention never crosses examples),
and a checkpoint's data position is still one micro-batch index: resuming a mix is as exact as one dir.

An epoch is as large as all dirs together in `train.mix_unit` (the sum of their train splits' examples,
tokens or trained tokens); a dir's share of it is its weight over the sum of the weights, met exactly for
examples and within one example's length for tokens. The same pairs make every epoch, in a new order each
epoch: a subsampled dir trains on the same subset every epoch (another `train.seed` draws another one).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sftpipe.config.data_sections import MixConfig
from sftpipe.config.schema import Config, TrainConfig
from sftpipe.contracts.data_dir import DataDir, DataManifest, tokenizer_sha256
from sftpipe.contracts.run_dir import MixedDataDir, TrainDataMix
from sftpipe.data.batches.collate import TokenStore
from sftpipe.data.batches.plan import Plan
from sftpipe.data.mixing import plan_mix
from sftpipe.errors import SftpipeError

log = logging.getLogger(__name__)


class MixedStore:
    """Several `TokenStore`s seen as one: example i is example `local[i]` of store `source[i]`.

    Args:
        stores: one per data dir.
        source, local: per mixed example, its store and its index there (an example may appear many times).
    """

    def __init__(self, stores: list[TokenStore], source: np.ndarray, local: np.ndarray):
        self.stores, self.source, self.local = stores, source, local
        self.lengths = np.empty(len(source), dtype=np.int64)
        for s, store in enumerate(stores):
            mine = source == s
            self.lengths[mine] = store.lengths[local[mine]]

    def __len__(self) -> int:
        return len(self.lengths)

    def example(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.stores[self.source[index]].example(int(self.local[index]))


@dataclass(frozen=True)
class TrainData:
    """What the loop trains on: its data dirs, one store over their train splits, and the mix (None: one dir)."""

    dirs: list[DataDir]
    manifest: DataManifest  # of the first dir: its template and tokenizer go into final/ and checkpoints
    store: TokenStore | MixedStore
    mix: TrainDataMix | None
    names: list[str]  # one per dir (train.data's names; empty for a single data.output_dir)

    @property
    def paths(self) -> list[Path]:
        return [d.path for d in self.dirs]

    @property
    def fingerprint_dirs(self) -> Path | list[Path]:
        """What the resume fingerprint hashes: the one data dir, or the mix's dirs in order."""
        return self.paths if self.mix is not None else self.dirs[0].path

    @property
    def max_length(self) -> int:
        """The longest data.max_length of the dirs: the default packed row length."""
        return max(d.manifest.max_length for d in self.dirs)


def open_train_data(cfg: Config, tokenizer: Any, loaded_from: str) -> TrainData:
    """The train split(s) `cfg` trains on, checked against the model's tokenizer, mixed as `train.data` says.

    Args:
        loaded_from: where `tokenizer` came from (model.tokenizer or model.name_or_path), for messages.

    Raises:
        SftpipeError: a dir is not prepared, was tokenized with another tokenizer (every dir is named with its
            hash), or has an empty train split.
    """
    tc = cfg.train
    if not tc.data:
        data_dir = DataDir(Path(cfg.data.output_dir))
        data_dir.check_tokenizer(tokenizer, loaded_from)
        store = TokenStore(data_dir.load_split("train"))
        if len(store) == 0:
            raise SftpipeError(f"{data_dir.path}/train is empty: every record was rejected or split away (see "
                               "DATA_CARD.md)")
        return TrainData(dirs=[data_dir], manifest=data_dir.manifest, store=store, mix=None, names=[])
    dirs = [DataDir(Path(entry.dir)) for entry in tc.data]
    check_mix_dirs(tc, dirs, tokenizer_sha256(tokenizer), loaded_from)
    stores = [TokenStore(d.load_split("train")) for d in dirs]
    empty = [f"train.data[{i}] {d.path}" for i, (d, s) in enumerate(zip(dirs, stores)) if len(s) == 0]
    if empty:
        raise SftpipeError(f"{', '.join(empty)}: the train split is empty (every record was rejected or split "
                           "away, see its DATA_CARD.md); remove the entry or prepare it again")
    store, counts = mix_stores(tc, stores)
    mix = describe_mix(tc, dirs, stores, counts)
    templates = {d.manifest.template.name for d in dirs}
    if len(templates) > 1:
        log.info("train.data mixes templates %s (baked into each dir's tokens); final/ carries %s's template "
                 "for chat and infer", sorted(templates), tc.data[0].label)
    return TrainData(dirs=dirs, manifest=dirs[0].manifest, store=store, mix=mix, names=[e.label for e in tc.data])


def check_mix_dirs(tc: TrainConfig, dirs: list[DataDir], model_sha256: str | None, loaded_from: str) -> None:
    """Refuse a mix whose dirs are not prepared or were tokenized with another tokenizer than the model's.

    Every problem is reported at once; a tokenizer mismatch lists every dir with its tokenizer hash.

    Args:
        model_sha256: the model tokenizer's `tokenizer_sha256`; None checks only that the dirs are prepared.
    """
    missing = [f"train.data[{i}].dir {d.path}: not a prepared data dir (no manifest); run `sftpipe prepare` "
               "with its config" for i, d in enumerate(dirs) if not d.is_prepared()]
    if missing:
        raise SftpipeError("\n".join(missing))
    hashes = [d.manifest.tokenizer for d in dirs]
    if model_sha256 is None or all(h.sha256 == model_sha256 for h in hashes):
        return
    lines = [f"  train.data[{i}] {entry.label} ({d.path}): tokenized with {h.name_or_path!r}, tokenizer SHA-256 "
             f"{h.sha256[:12]}…{'' if h.sha256 == model_sha256 else '  <- differs'}"
             for i, (entry, d, h) in enumerate(zip(tc.data, dirs, hashes))]
    raise SftpipeError(
        f"train.data: every data dir must be tokenized with the model's tokenizer ({loaded_from!r}, SHA-256 "
        f"{model_sha256[:12]}…), since token ids mean other tokens under another tokenizer:\n" + "\n".join(lines)
        + "\nPrepare the differing dirs again with this model's config, or set model.name_or_path to the model "
        "they were prepared for.")


def unit_amounts(store: TokenStore, unit: str) -> np.ndarray:
    """Each example's size in the mix unit."""
    if unit == "samples":
        return np.ones(len(store), dtype=np.int64)
    return store.lengths if unit == "tokens" else store.trained_lengths()


def mix_stores(tc: TrainConfig, stores: list[TokenStore]) -> tuple[MixedStore, np.ndarray]:
    """The mixed store of `stores` under `tc.data`'s weights and `tc.mix_unit`, and each dir's repeat count
    per example (aligned with the dirs' examples in order)."""
    names = [entry.label for entry in tc.data]
    weights = [entry.weight for entry in tc.data]
    amounts = np.concatenate([unit_amounts(store, tc.mix_unit) for store in stores])
    source = np.concatenate([np.full(len(store), s, dtype=np.int64) for s, store in enumerate(stores)])
    counts, _ = plan_mix(names, weights, source, amounts, MixConfig(unit=tc.mix_unit, seed=tc.seed))
    starts = np.cumsum([0] + [len(store) for store in stores])
    picked = np.repeat(np.arange(len(source)), counts)  # in dir order; the plans shuffle
    return MixedStore(stores, source[picked], picked - starts[source[picked]]), counts


def describe_mix(tc: TrainConfig, dirs: list[DataDir], stores: list[TokenStore], counts: np.ndarray
                 ) -> TrainDataMix:
    """What the mix achieved per dir, measured on the repeat counts, for the run manifest and the logs."""
    starts = np.cumsum([0] + [len(store) for store in stores])
    mine = [counts[starts[s] : starts[s + 1]] for s in range(len(stores))]
    achieved = np.array([float((unit_amounts(store, tc.mix_unit) * n).sum()) for store, n in zip(stores, mine)])
    weights = np.array([entry.weight for entry in tc.data])
    described = []
    for s, (entry, data_dir, store) in enumerate(zip(tc.data, dirs, stores)):
        manifest = data_dir.manifest
        described.append(MixedDataDir(
            name=entry.label, dir=str(entry.dir), weight=entry.weight, template=manifest.template.name,
            template_sha256=manifest.template.sha256, data_manifest_sha256=manifest.sha256,
            available_examples=len(store), examples=int(mine[s].sum()), tokens=int((store.lengths * mine[s]).sum()),
            trained_tokens=int((store.trained_lengths() * mine[s]).sum()), epochs=float(mine[s].sum() / len(store)),
            target_share=float(weights[s] / weights.sum()), achieved_share=float(achieved[s] / achieved.sum())))
    return TrainDataMix(unit=tc.mix_unit, seed=tc.seed, dirs=described)


def mix_figures(mix: TrainDataMix) -> dict[str, dict[str, float | int]]:
    """The per-dir figures a run logs once at its start (the run manifest has the rest)."""
    return {d.name: {"examples": d.examples, "tokens": d.tokens, "trained_tokens": d.trained_tokens,
                     "epochs": round(d.epochs, 4), "target_share": round(d.target_share, 6),
                     "achieved_share": round(d.achieved_share, 6)} for d in mix.dirs}


class SourceTokens:
    """Real (non-padding) train tokens per dir in the run's first micro-batches, all processes together.

    Like everything else about the batches it is a function of the plan, so a resumed run counts what the
    uninterrupted one did with nothing more in the checkpoint; kept as a running count.

    Args:
        plan: this process's plan; the other processes' plans are the same with their rank.
    """

    def __init__(self, plan: Plan, world_size: int, store: MixedStore, names: list[str]):
        self.plans = []
        for rank in range(world_size):
            other = copy.copy(plan)
            other.rank = rank
            self.plans.append(other)
        self.store, self.names = store, names
        self.counted = 0
        self.tokens = np.zeros(len(names), dtype=np.int64)

    def upto(self, micro_batch: int) -> dict[str, int]:
        """`train_tokens/<name>` of every dir over micro-batches 0 .. `micro_batch` - 1 of every process."""
        for g in range(self.counted, micro_batch):
            for plan in self.plans:
                rows, real = plan.rows(g)
                if real:
                    picked = np.fromiter((i for row in rows for i in row), dtype=np.int64)
                    self.tokens += np.bincount(self.store.source[picked], weights=self.store.lengths[picked],
                                               minlength=len(self.names)).astype(np.int64)
        self.counted = max(self.counted, micro_batch)
        return {f"train_tokens/{name}": int(n) for name, n in zip(self.names, self.tokens)}
