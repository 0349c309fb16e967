"""Peak memory of the train-time mixed stream (`train.data`) at 1x and 10x data, side by side.

1x: 2 data dirs of N examples each; 10x: 5 dirs of 4N each (ten times the examples and tokens, more dirs).
Each scale runs in a fresh interpreter that opens the dirs' train splits as `TokenStore`s, plans a weighted
mix (`mix_stores`) and packed micro-batches (`build_plan`), and collates every micro-batch of one epoch,
as the loop's data source does. It prints, per scale, the peak of the process's anonymous memory (RssAnon,
sampled every 50 micro-batches: what the process itself holds) and the peak resident set (VmHWM, which also
counts the pages of the memory-mapped Arrow files that were read: page cache the kernel can drop), and the
10x / 1x ratios.

The same is measured with `--store copy`, stores that copy the tokens into memory as the TokenStore did
before it read the Arrow buffers in place: the control that shows the measurement sees growth when there is.

    python benchmarks/mix_memory.py                 # N = 10000 (1x: 4 M tokens, 10x: 40 M)
    python benchmarks/mix_memory.py --examples 2000 --store copy
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCALES = {"1x": (2, 1), "10x": (5, 4)}  # dirs, examples per dir in units of N


def make_dirs(root: Path, dirs: int, examples: int, seed: int) -> list[Path]:
    """`dirs` Arrow splits of `examples` random examples (40-360 tokens, the second half trained) each."""
    import datasets
    import numpy as np
    import pyarrow as pa

    from sftpipe.contracts.data_dir import FEATURES

    datasets.disable_progress_bars()
    paths = []
    for d in range(dirs):
        rng = np.random.default_rng(seed + d)
        lengths = rng.integers(40, 360, size=examples)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        ids = rng.integers(0, 32_000, size=int(offsets[-1]), dtype=np.int32)
        labels = ids.copy()
        for start, n in zip(offsets[:-1], lengths):
            labels[start : start + n // 2] = -100
        empty = pa.array([""] * examples)
        table = pa.table({"input_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids)),
                          "labels": pa.ListArray.from_arrays(pa.array(offsets), pa.array(labels)),
                          "source": empty, "location": empty, "messages": empty, "meta": empty})
        path = root / f"dir{d}"
        datasets.Dataset(table.cast(FEATURES.arrow_schema)).save_to_disk(str(path), max_shard_size="64MB")
        paths.append(path)
    return paths


def rss_anon_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0


def vm_hwm_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


class CopiedStore:
    """The control: a split's tokens copied into memory (one flat array per column), as before."""

    def __init__(self, dataset):
        import numpy as np

        table = dataset.with_format("arrow")[:]
        ids = table.column("input_ids").combine_chunks()
        labels = table.column("labels").combine_chunks()
        self.offsets = ids.offsets.to_numpy().astype(np.int64)
        self.input_ids = np.array(ids.values.to_numpy(zero_copy_only=False))
        self.labels = np.array(labels.values.to_numpy(zero_copy_only=False))
        self.lengths = np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.lengths)

    def example(self, index: int):
        start, end = self.offsets[index], self.offsets[index + 1]
        return self.input_ids[start:end], self.labels[start:end]

    def trained_lengths(self):
        import numpy as np

        return np.array([int((self.example(i)[1] != -100).sum()) for i in range(len(self))])


def measure(paths: list[str], store_kind: str) -> dict:
    """In this (fresh) process: open, mix, plan and collate one epoch; the peaks of memory while doing it."""
    import datasets
    import torch  # noqa: F401 - loaded first so the baseline holds what a training process holds

    from sftpipe.config.schema import TrainConfig
    from sftpipe.data.batches.collate import TokenStore, collate_packed
    from sftpipe.data.batches.mix import mix_stores
    from sftpipe.data.batches.plan import build_plan

    baseline = rss_anon_kb()
    started = time.perf_counter()
    make = TokenStore if store_kind == "mapped" else CopiedStore
    stores = [make(datasets.load_from_disk(p)) for p in paths]
    tc = TrainConfig(data=[{"dir": p, "weight": float(i + 1), "name": f"d{i}"} for i, p in enumerate(paths)],
                     mix_unit="tokens", packing=True, pack_length=2048, tokens_per_batch=8192)
    mixed, _ = mix_stores(tc, stores)
    plan, _ = build_plan(tc, mixed.lengths, 2048, 1, 0)
    peak_anon = rss_anon_kb()
    tokens = 0
    for g in range(plan.micro_batches_per_epoch):
        rows, _ = plan.rows(g)
        tokens += collate_packed(mixed, rows, 0).real_tokens
        if g % 50 == 0:
            peak_anon = max(peak_anon, rss_anon_kb())
    peak_anon = max(peak_anon, rss_anon_kb())
    return {"examples": len(mixed), "tokens": tokens, "micro_batches": plan.micro_batches_per_epoch,
            "baseline_anon_mb": baseline / 1024, "peak_anon_mb": peak_anon / 1024, "peak_rss_mb": vm_hwm_kb() / 1024,
            "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=10_000, help="N: examples per dir at 1x")
    parser.add_argument("--store", choices=["mapped", "copy", "both"], default="both")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[1:], args.child[0])))
        return
    kinds = ["mapped", "copy"] if args.store == "both" else [args.store]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        results: dict[str, dict[str, dict]] = {}
        for scale, (dirs, factor) in SCALES.items():
            paths = make_dirs(Path(tmp) / scale, dirs, args.examples * factor, seed=100 * dirs)
            for kind in kinds:
                out = subprocess.run([sys.executable, __file__, "--child", kind, *map(str, paths)],
                                     capture_output=True, text=True, check=True)
                results.setdefault(kind, {})[scale] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"mixed stream, one epoch, N = {args.examples} examples per dir at 1x (1x: 2 dirs, 10x: 5 dirs of 4N)")
    print("| store | scale | examples | tokens | peak anon MB | peak RSS MB (incl. mapped pages) | s |")
    print("|---|---|---|---|---|---|---|")
    for kind, by_scale in results.items():
        for scale, r in by_scale.items():
            print(f"| {kind} | {scale} | {r['examples']} | {r['tokens']} | {r['peak_anon_mb']:.1f} | "
                  f"{r['peak_rss_mb']:.1f} | {r['seconds']:.1f} |")
    ratios = {}
    for kind, by_scale in results.items():
        anon = by_scale["10x"]["peak_anon_mb"] / by_scale["1x"]["peak_anon_mb"]
        rss = by_scale["10x"]["peak_rss_mb"] / by_scale["1x"]["peak_rss_mb"]
        ratios[kind] = {"peak_anon": anon, "peak_rss": rss}
        print(f"{kind}: 10x / 1x peak anon memory {anon:.3f}, peak RSS {rss:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"examples_per_dir_1x": args.examples, "results": results,
                                         "ratios_10x_over_1x": ratios}, indent=2))


if __name__ == "__main__":
    main()
