"""Haskell execution throughput: sftpipe's batched builds vs one compiler call per sample, side by side.

Usage:  python benchmarks/exec/bench_haskell_exec.py [--samples 158] [--baseline-samples 8] [--workers 2]
                                                    [--broken 0.1] [--no-baselines]

--broken F replaces every (1/F)-th sample by a header-broken one (`import Data.List (sort` unclosed: GHC
stops before it compiles any module of the batch), expected `compile_error`.

Samples are the shipped problems' reference solutions and mutants (so every verdict is known: the run
also checks that each reference passes and each mutant fails). Alternatives measured in the same run:

  ghc-static    ghc -O0 Main.hs Solution.hs, static link (the examples/haskell README recipe)
  ghc-dynamic   the same with -dynamic (shared libraries: a much cheaper link)
  runghc        the bytecode interpreter, no link at all (GHC still starts per sample)
  sftpipe       Executor: one `ghc --make -fkeep-going -dynamic` per batch of samples plus a dispatcher,
                every sample run in its own sandboxed process (sandbox: auto and none)

The baselines run with the same number of parallel workers and WITHOUT a sandbox (which favours them).
Timings on a shared machine are noisy: compare the ratios within one run, not across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sftpipe.config.schema import CodeEvalConfig
from sftpipe.evaluate.execution.executor import Executor
from sftpipe.evaluate.execution.problem import CodeProblem

REPO = Path(__file__).resolve().parents[2]


def load_samples(n: int, broken: float = 0.0) -> list[tuple[CodeProblem, str, str]]:
    """(problem, code, expected verdict) — references then mutants, interleaved, first n; a share `broken`
    of them (spread evenly) with an unclosed import list in front."""
    rows = [json.loads(x) for x in (REPO / "examples/haskell/problems.jsonl").read_text().splitlines() if x.strip()]
    samples = []
    for row in rows:
        problem = CodeProblem(row["id"], "haskell", row["tests"], "sftpipe", row["entry_point"])
        samples.append((problem, row["solution"], "pass"))
        samples.append((problem, row["mutant"], "wrong_answer"))
    samples = samples[:n]
    if broken > 0:
        step = round(1 / broken)
        samples = [(p, "import Data.List (sort\n" + code, "compile_error") if j % step == step // 2 else (p, code, v)
                   for j, (p, code, v) in enumerate(samples)]
    return samples


def baseline(kind: str, samples, workers: int) -> float:
    """Samples/s of one compiler (or interpreter) call per sample, unsandboxed."""
    def one(sample) -> bool:
        problem, code, expected = sample
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            (d / "Solution.hs").write_text("module Solution where\n\n" + code)
            (d / "Main.hs").write_text(problem.tests)
            if kind == "runghc":
                run = subprocess.run(["runghc", "Main.hs"], cwd=d, capture_output=True, text=True, timeout=120)
            else:
                flags = ["-dynamic"] if kind == "ghc-dynamic" else []
                subprocess.run(["ghc", "-O0", "-v0", *flags, "-outputdir", "build", "-o", "prog", "Main.hs",
                                "Solution.hs"], cwd=d, check=True, timeout=300)
                run = subprocess.run(["./prog"], cwd=d, capture_output=True, text=True, timeout=60)
            passed = run.returncode == 0 and "SFTPIPE-TESTS-PASSED" in run.stdout
            return passed == (expected == "pass")

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        correct = list(pool.map(one, samples))
    wall = time.perf_counter() - start
    assert all(correct), f"{kind}: a reference failed or a mutant passed"
    return len(samples) / wall


def sftpipe_rate(samples, workers: int, sandbox: str) -> tuple[float, str]:
    cfg = CodeEvalConfig(workers=workers, cache_dir=None, sandbox=sandbox)
    executor = Executor(cfg)
    start = time.perf_counter()
    results = executor.run([(p, code) for p, code, _ in samples])
    wall = time.perf_counter() - start
    wrong = [(p.id, exp, r.verdict) for (p, _, exp), r in zip(samples, results) if r.verdict != exp]
    assert not wrong, f"unexpected verdicts: {wrong[:5]}"
    return len(samples) / wall, executor.sandbox.mode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=158, help="samples for sftpipe (max 158)")
    parser.add_argument("--baseline-samples", type=int, default=8, help="samples for each per-sample baseline")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--broken", type=float, default=0.0, help="share of header-broken samples (e.g. 0.1)")
    parser.add_argument("--no-baselines", action="store_true", help="measure sftpipe only")
    args = parser.parse_args()

    print(f"{os.cpu_count()} CPU cores, {args.workers} workers, load average {os.getloadavg()[0]:.2f} at start")
    figures: dict[str, float] = {}
    small = load_samples(args.baseline_samples)
    for kind in () if args.no_baselines else ("ghc-static", "ghc-dynamic", "runghc"):
        figures[kind] = baseline(kind, small, args.workers)
        print(f"{kind:<22} {figures[kind]:6.2f} samples/s  ({len(small)} samples, no sandbox)", flush=True)
    big = load_samples(args.samples, args.broken)
    for sandbox in ("auto", "none"):
        rate, mode = sftpipe_rate(big, args.workers, sandbox)
        figures[f"sftpipe ({mode})"] = rate
        print(f"{'sftpipe (' + mode + ')':<22} {rate:6.2f} samples/s  ({len(big)} samples, every verdict as expected)",
              flush=True)
    base = figures.get("ghc-static")
    if base:
        print("\nratio to ghc-static: " + ", ".join(f"{k} {v / base:.1f}x" for k, v in figures.items()))
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
