"""Start-up time of the CLI: `sftpipe --help`, `sftpipe show-config CONFIG` and a 20-record `sftpipe prepare`.

Each command runs in a fresh interpreter (as a user runs it), `repeats` times; the median wall time is
printed, with the median CPU time (user + system) of the process beside it, one column per source tree,
so two checkouts (before / after a change) can be compared side by side on the same machine at the same
time. The tiny model is built once (not timed) with `init-tiny`. Wall times depend on the machine's load
(CPU times much less): compare the columns of one run, not runs of different days.

    python benchmarks/startup.py [--src src] [--src /other/checkout/src] [--repeats 5] [--records 20]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(src: Path, args: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of `python -m sftpipe.cli ARGS` with `src` first on the import path."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sftpipe.cli", *args], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def write_inputs(tmp: Path, src: Path, records: int) -> Path:
    """A tiny model, `records` alpaca records and a config that prepares them."""
    subprocess.run([sys.executable, "-m", "sftpipe.cli", "init-tiny", "--out", str(tmp / "tiny"), "--size", "micro"],
                   env={**os.environ, "PYTHONPATH": str(src)}, check=True, stdout=subprocess.DEVNULL)
    lines = (REPO / "examples" / "alpaca" / "alpaca_sample.jsonl").read_text(encoding="utf-8").splitlines()
    if len(lines) < records:
        raise SystemExit(f"the alpaca sample has {len(lines)} records, fewer than --records {records}")
    (tmp / "records.jsonl").write_text("\n".join(lines[:records]) + "\n", encoding="utf-8")
    config = {"model": {"name_or_path": str(tmp / "tiny")},
              "data": {"sources": [{"path": str(tmp / "records.jsonl")}], "output_dir": str(tmp / "data")}}
    path = tmp / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, action="append",
                        help="a source tree (the dir holding sftpipe/); repeat to compare (default: this repo's src)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--records", type=int, default=20)
    args = parser.parse_args()
    sources = [s.resolve() for s in args.src or [REPO / "src"]]
    with tempfile.TemporaryDirectory(prefix="sftpipe-startup-") as name:
        tmp = Path(name)
        config = write_inputs(tmp, sources[0], args.records)
        commands = {
            "--help": lambda i: ["--help"],
            "show-config": lambda i: ["show-config", str(config)],
            f"prepare ({args.records} records)": lambda i: ["prepare", str(config),
                                                           "--set", f"data.output_dir={tmp / f'data{i}'}"],
        }
        medians: dict[str, list[tuple[float, float]]] = {}
        for label, argv in commands.items():
            times: list[list[tuple[float, float]]] = [[] for _ in sources]
            for i in range(args.repeats):  # interleaved, so a burst of load hits every column alike
                for column, src in enumerate(sources):
                    times[column].append(run(src, argv(f"{column}_{i}")))
            medians[label] = [(statistics.median(w for w, _ in t), statistics.median(c for _, c in t)) for t in times]
    width = max(len(label) for label in medians)
    cell = max(16, *(len(str(src)) for src in sources))
    print(f"median seconds of {args.repeats} runs: wall (cpu), python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(" " * width + "".join(f"  {str(src):>{cell}}" for src in sources))
    for label, values in medians.items():
        print(f"{label:<{width}}" + "".join(f"  {f'{w:.3f} ({c:.3f})':>{cell}}" for w, c in values))


if __name__ == "__main__":
    main()
