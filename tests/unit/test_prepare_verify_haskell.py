"""`verify: tests` on the shipped Haskell problems (marker `ghc`): every reference solution is kept; in a copy
with each problem's mutant added (the mutants the eval tests use), exactly the mutants are rejected, as
`verify_wrong_answer`; a solution that does not compile is `verify_compile_error` and one that loops is
`verify_timeout`. Counts agree in the CLI output, the manifest, DATA_CARD.md and rejected.jsonl.

The default run uses the first problems; `test_the_whole_shipped_example_*` (marker `heavy`) all 79.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from sftpipe.cli.report import print_prepare
from sftpipe.contracts.data_dir import DataDir
from sftpipe.data import prepare
from tests.conftest import EXAMPLES, make_config, write_jsonl

pytestmark = pytest.mark.ghc

PROBLEMS = [json.loads(x) for x in (EXAMPLES / "haskell" / "problems.jsonl").read_text().splitlines() if x.strip()]
BROKEN = "sumEvens :: [Int] -> Int\nsumEvens xs = sum [x | x <- xs, even x] + \"one\"\n"
LOOPING = ("sumEvens :: [Int] -> Int\nsumEvens _ = go 0\n  where\n    go :: Int -> Int\n"
           "    go n = if n < 0 then n else go (n + 1)\n")


def with_mutants(problems: list[dict]) -> list[dict]:
    """Each problem, then a copy whose solution is the problem's mutant (id `<id>/mutant`)."""
    out = []
    for p in problems:
        out += [p, {**p, "id": f"{p['id']}/mutant", "solution": p["mutant"]}]
    return out


def _config(tmp: Path, tiny_dir: Path, records: list[dict], cache: Path, timeout_s: float = 10.0):
    path = write_jsonl(tmp / "problems.jsonl", records)
    source = {"path": str(path), "format": "code", "fields": {"code": "solution"}, "code_language": "haskell",
              "verify": "tests", "name": "haskell-problems"}
    return make_config(tmp, tiny_dir, [source], data={"max_length": 1024, "dedup": {"near": False}},
                       eval={"code": {"cache_dir": str(cache), "limits": {"run_timeout_s": timeout_s}}})


def _rejected(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "rejected.jsonl").read_text().splitlines()]


def _kept_ids(out: Path) -> list[str]:
    return sorted(json.loads(m)["id"] for split in ("train", "val", "test") for m in DataDir(out).load_split(split)["meta"])


def _same_counts_everywhere(result, out: Path, printed: str) -> Counter:
    """The verify_* counts of rejected.jsonl; asserts the manifest, DATA_CARD.md and the CLI output agree."""
    rows = Counter(r["reason"] for r in _rejected(out) if r["stage"] == "verify")
    manifest = DataDir(out).manifest
    assert {r: n for r, n in manifest.rejected.items() if r.startswith("verify_")} == rows
    assert {r: n for r, n in result.rejected.items() if r.startswith("verify_")} == rows
    card = (out / "DATA_CARD.md").read_text()
    assert {m.group(1): int(m.group(2)) for m in re.finditer(r"^\| (verify_\w+) \| (\d+) \|$", card, re.M)} == rows
    for reason, n in rows.items():
        assert f"rejected (verify) {reason}: {n}" in printed
    v = manifest.verification
    assert v is not None and v.verified - v.passed == sum(rows.values())
    assert f"verified {v.verified} records against their own tests" in printed
    return rows


def test_references_kept_mutants_broken_and_looping_rejected_with_their_verdicts(tmp_path, tiny_dir, capsys):
    problems = PROBLEMS[:4]
    records = with_mutants(problems) + [
        {**PROBLEMS[0], "id": "broken", "solution": BROKEN},
        {**PROBLEMS[0], "id": "looping", "solution": LOOPING},
    ]
    cfg = _config(tmp_path / "a", tiny_dir, records, tmp_path / "cache", timeout_s=1.0)
    result = prepare.run(cfg)
    out = Path(cfg.data.output_dir)
    print_prepare(result)
    rows = _same_counts_everywhere(result, out, capsys.readouterr().out)
    assert rows == {"verify_wrong_answer": 4, "verify_compile_error": 1, "verify_timeout": 1}
    assert _kept_ids(out) == sorted(p["id"] for p in problems)
    by_id = {r["id"]: r["reason"] for r in _rejected(out)}
    assert by_id == {**{f"{p['id']}/mutant": "verify_wrong_answer" for p in problems},
                     "broken": "verify_compile_error", "looping": "verify_timeout"}
    rejected = {r["reason"]: r for r in _rejected(out)}
    broken = rejected["verify_compile_error"]
    assert broken["exec_stage"] == "compile" and "Solution.hs" in broken["output"] and "error" in broken["output"]
    assert rejected["verify_timeout"]["detail"] == "run exceeded 1s (twice)"  # judged again before rejecting
    assert "FAIL" in rejected["verify_wrong_answer"]["output"]  # the failing check's name
    # a second prepare runs nothing but the timeout (timeouts are never cached: they depend on the load)
    again = prepare.run(_config(tmp_path / "b", tiny_dir, records, tmp_path / "cache", timeout_s=1.0)).verification
    assert again is not None and again.verified == 10 and again.cached == 9 and again.verdicts["timeout"] == 1


@pytest.mark.heavy
def test_the_whole_shipped_example_keeps_every_reference_and_loses_exactly_the_mutants(tmp_path, tiny_dir, capsys):
    cfg = _config(tmp_path / "refs", tiny_dir, PROBLEMS, tmp_path / "cache")
    result = prepare.run(cfg)
    assert result.verification.passed == result.verification.verified == 79 and not result.rejected
    cfg = _config(tmp_path / "mutated", tiny_dir, with_mutants(PROBLEMS), tmp_path / "cache")
    capsys.readouterr()
    result = prepare.run(cfg)
    out = Path(cfg.data.output_dir)
    print_prepare(result)
    assert _same_counts_everywhere(result, out, capsys.readouterr().out) == {"verify_wrong_answer": 79}
    assert sorted(r["location"] for r in _rejected(out)) == sorted(f"{out.parent / 'problems.jsonl'}:{2 * i + 2}"
                                                                  for i in range(79))
    assert _kept_ids(out) == sorted(p["id"] for p in PROBLEMS)
    assert result.verification.cached == 79  # the references' verdicts, from the first prepare


@pytest.mark.skipif(shutil.which("hlint") is None, reason="needs hlint: apt-get install hlint (CI installs it)")
def test_haskell_quality_figures_hlint_and_ghc_warnings(tmp_path, tiny_dir):
    sloppy = {**PROBLEMS[0], "id": "sloppy",
              "solution": "sumEvens :: [Int] -> Int\nsumEvens xs = if True then sum (filter (\\x -> even x) xs) "
                          "else 0\n  where unused = 1\n"}
    cfg = _config(tmp_path, tiny_dir, [PROBLEMS[0], sloppy], tmp_path / "cache")
    cfg.data.verify.quality = True
    result = prepare.run(cfg)
    metas = {json.loads(m)["id"]: json.loads(m) for split in ("train", "val", "test")
             for m in DataDir(Path(cfg.data.output_dir)).load_split(split)["meta"]}
    clean, messy = metas[PROBLEMS[0]["id"]]["quality"], metas["sloppy"]["quality"]
    assert clean["hlint_per_100_lines"] == 0 and clean["compile_warnings"] == 0
    assert messy["hlint_per_100_lines"] > 0  # redundant if, eta reduce, ...
    assert messy["compile_warnings"] >= 2  # unused binding, defaulted type
    assert result.verification.quality["hlint_per_100_lines"].records == 2
    cfg.data.verify.max_hlint_per_100_lines = 10.0
    cfg.data.output_dir = str(tmp_path / "filtered")
    assert prepare.run(cfg).rejected == {"quality_hlint": 1}


def test_multipl_e_haskell_records_are_judged_with_multipl_e_tests(tmp_path, tiny_dir):
    """MultiPL-E's shape: the tests are a `main` with `candidate = f` and no `import Solution`."""
    tests = ("main :: IO ()\nmain = do\n  let candidate = addTwo\n"
             "  if candidate 1 2 == 3 then pure () else error \"assertion failed\"\n"
             "  if candidate 0 0 == 0 then pure () else error \"assertion failed\"\n")
    prompt = "-- | Add two numbers.\naddTwo :: Int -> Int -> Int\n"
    records = [{"name": "hs_add", "prompt": prompt, "completion": "addTwo x y = x + y\n", "tests": tests},
               {"name": "hs_add_wrong", "prompt": prompt, "completion": "addTwo x y = x - y\n", "tests": tests}]
    path = write_jsonl(tmp_path / "multipl-e.jsonl", records)
    source = {"path": str(path), "format": "prompt_completion", "code_language": "haskell", "verify": "tests",
              "fields": {"id": "name"}}
    cfg = make_config(tmp_path, tiny_dir, [source], data={"dedup": {"near": False}},
                      eval={"code": {"cache_dir": str(tmp_path / "cache")}})
    result = prepare.run(cfg)
    assert result.verification.verified == 2 and result.verification.verdicts["pass"] == 1
    row = json.loads((Path(cfg.data.output_dir) / "rejected.jsonl").read_text())
    assert row["id"] == "hs_add_wrong" and row["reason"] == "verify_wrong_answer"
