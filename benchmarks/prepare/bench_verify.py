"""Throughput of execution-verified prepare (`verify: tests`), Haskell and Python, side by side in one run.

Usage:  python benchmarks/prepare/bench_verify.py [--repeats 1] [--python-records 400] [--quality]

For each language the same records are prepared three ways, one after the other:

  plain      verify: none (what verification adds is measured against this)
  cold       verify: tests, an empty verdict cache (every record built and run)
  warm       verify: tests again, the cache of `cold` (nothing run: the "second prepare")

records/s verified = records / (cold - plain). Haskell: the 79 shipped problems' references and mutants (158
records, 79 rejected as wrong_answer). Python: generated functions with asserts, a quarter of them wrong. The
run checks the verdict counts, so a figure never comes from a run that judged wrongly. Timings on a shared
machine are noisy: the load average is printed with them. Results: benchmarks/prepare/results/verify-*.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from sftpipe.config import load_config
from sftpipe.data import prepare
from sftpipe.data.prepare.scan import available_cores
from sftpipe.models.tiny import init_tiny

REPO = Path(__file__).resolve().parents[2]


def haskell_records() -> list[dict]:
    rows = [json.loads(x) for x in (REPO / "examples/haskell/problems.jsonl").read_text().splitlines() if x.strip()]
    out = []
    for row in rows:
        out += [row, {**row, "id": row["id"] + "/mutant", "solution": row["mutant"]}]
    return out


def python_records(n: int) -> list[dict]:
    """n distinct functions with their tests; every 4th is wrong (off by one)."""
    out = []
    for i in range(n):
        wrong = i % 4 == 3
        body = f"    total = 0\n    for x in xs:\n        total += x * {i + 1}\n    return total{' + 1' if wrong else ''}\n"
        out.append({"id": f"py_{i}", "instruction": f"Sum the list times {i + 1}.",
                    "solution": f"def scaled_sum_{i}(xs):\n{body}",
                    "tests": f"assert scaled_sum_{i}([1, 2, 3]) == {6 * (i + 1)}\nassert scaled_sum_{i}([]) == 0\n"})
    return out


def run(tmp: Path, tiny: Path, name: str, records: list[dict], language: str, verify: str, cache: Path,
        quality: bool) -> tuple[float, object]:
    data = tmp / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    values = {
        "model": {"name_or_path": str(tiny)},
        "data": {"sources": [{"path": str(data), "format": "code", "fields": {"code": "solution"},
                              "code_language": language, "verify": verify}],
                 "output_dir": str(tmp / f"out-{name}-{verify}"), "max_length": 1024,
                 "verify": {"quality": quality}},
        "eval": {"code": {"cache_dir": str(cache)}},
    }
    path = tmp / "config.json"
    path.write_text(json.dumps(values))
    cfg = load_config(path)
    start = time.perf_counter()
    result = prepare.run(cfg)
    return time.perf_counter() - start, result


def bench(tmp: Path, tiny: Path, language: str, records: list[dict], expected_pass: int, quality: bool,
          repeat: int) -> dict:
    cache = tmp / f"cache-{language}-{repeat}"
    plain, _ = run(tmp, tiny, language, records, language, "none", cache, quality)
    load = os.getloadavg()[0]
    cold, result = run(tmp, tiny, language, records, language, "tests", cache, quality)
    v = result.verification
    assert v.verified == len(records) and v.passed == expected_pass and v.cached == 0, v
    warm, result = run(tmp, tiny, language, records, language, "tests", cache, quality)
    assert result.verification.cached == len(records), result.verification
    row = {"language": language, "records": len(records), "passed": expected_pass, "plain_s": round(plain, 2),
           "cold_s": round(cold, 2), "warm_s": round(warm, 2),
           "verified_per_s": round(len(records) / max(cold - plain, 1e-9), 2),
           "warm_overhead_s": round(warm - plain, 2), "load_avg_1m": round(load, 2), "quality": quality}
    print(f"{language:<8} {len(records):>5} records  plain {plain:6.1f}s  cold {cold:6.1f}s  warm {warm:6.1f}s  "
          f"-> {row['verified_per_s']:.1f} records/s verified, warm cache +{warm - plain:.1f}s  (load {load:.1f})",
          flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--python-records", type=int, default=400)
    parser.add_argument("--quality", action="store_true", help="also measure the code-quality figures")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp_name:
        tmp = Path(tmp_name)
        tiny = tmp / "tiny"
        init_tiny(tiny, size="micro", seed=0, corpus=[REPO / "examples"])
        hs, py = haskell_records(), python_records(args.python_records)
        for repeat in range(args.repeats):
            rows.append(bench(tmp, tiny, "haskell", hs, len(hs) // 2, args.quality, repeat))
            rows.append(bench(tmp, tiny, "python", py, len(py) - len(py) // 4, args.quality, repeat))
    out = REPO / "benchmarks/prepare/results" / f"verify-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cores": available_cores(), "rows": rows}, indent=2) + "\n")
    print(f"results: {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
