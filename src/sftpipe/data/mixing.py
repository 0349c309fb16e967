"""Weighted mixing of sources, up- and down-sampled to target shares, deterministically: prepare's mix stage
(sources of one data dir, written out as rows) and train-time mixing of several data dirs (`train.data`,
`data/batches/mix.py`) both plan with `plan_mix`.

Each source s gets the target T_s = total * w_s / sum(w) in the configured unit (examples, tokens or
trained tokens). It contributes every kept example floor(T_s / A_s) times (A_s: what it has), plus a
seeded random subset for the remainder: for examples, exactly the remainder (largest-remainder rounding
makes the targets sum to the total); for tokens, examples are taken in seeded order whenever they still
fit, so each source ends within one example's length of its target. The plan is a repeat count per
example: prepare writes it out as repeated rows, train repeats the example indices.
"""

from __future__ import annotations

import hashlib

import numpy as np

from sftpipe.config.data_sections import MixConfig
from sftpipe.contracts.data_dir import SourceMix
from sftpipe.errors import SftpipeError


def plan_mix(names: list[str], weights: list[float], source: np.ndarray, amount: np.ndarray, cfg: MixConfig
             ) -> tuple[np.ndarray, list[SourceMix]]:
    """Repeat count per train example (aligned with `source` / `amount`) and the per-source report.

    Args:
        names, weights: per source index.
        source: source index of each kept train example.
        amount: each example's size in the mixing unit (1 for samples).

    Raises:
        SftpipeError: a weighted source has no train examples left.
    """
    available = np.bincount(source, weights=amount, minlength=len(names)).astype(np.int64)
    empty = [names[s] for s in range(len(names)) if available[s] == 0]
    if empty:
        raise SftpipeError(f"data.sources: {', '.join(empty)} has no train examples left after filtering, dedup "
                           "and the split, so its mixing weight cannot be met; remove its weight or the source")
    total = cfg.total if cfg.total is not None else int(available.sum())
    shares = np.array(weights, dtype=np.float64) / sum(weights)
    targets = shares * total
    if cfg.unit == "samples":
        targets = _largest_remainder(targets, total)
    counts = np.zeros(len(source), dtype=np.int64)
    for s, name in enumerate(names):
        rows = np.flatnonzero(source == s)
        order = rows[np.random.Generator(np.random.PCG64(_seed(cfg.seed, name))).permutation(len(rows))]
        copies, remainder = divmod(int(round(targets[s])), int(available[s]))
        counts[rows] = copies
        counts[_fill(order, amount, remainder)] += 1
    achieved = np.bincount(source, weights=amount * counts, minlength=len(names)).astype(np.int64)
    grand = max(int(achieved.sum()), 1)
    mixes = [
        SourceMix(source=name, weight=float(weights[s]), available=int(available[s]),
                  available_examples=int((source == s).sum()), target=float(targets[s]), achieved=int(achieved[s]),
                  examples=int(counts[source == s].sum()), target_share=float(shares[s]),
                  achieved_share=float(achieved[s] / grand))
        for s, name in enumerate(names)
    ]
    return counts, mixes


def _fill(order: np.ndarray, amount: np.ndarray, budget: int) -> np.ndarray:
    """Rows of `order` taken in turn whenever their amount still fits the budget (all 1s: the first `budget`)."""
    sizes = amount[order]
    if np.all(sizes == 1):
        return order[:budget]
    taken = []
    left = budget
    for row, size in zip(order.tolist(), sizes.tolist()):
        if left <= 0:
            break
        if size <= left:
            taken.append(row)
            left -= size
    return np.array(taken, dtype=np.int64)


def _largest_remainder(targets: np.ndarray, total: int) -> np.ndarray:
    floors = np.floor(targets)
    short = total - int(floors.sum())
    order = np.argsort(-(targets - floors), kind="stable")
    floors[order[:short]] += 1
    return floors


def _seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}\x1f{name}".encode(), digest_size=8).digest(), "little")
