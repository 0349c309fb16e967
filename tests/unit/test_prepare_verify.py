"""Execution-verified training data (`sources[].verify: tests`): each record's solution is run against its own
tests at prepare time; failures are rejected with their verdict, counted the same in the CLI output, the
manifest, DATA_CARD.md and rejected.jsonl, and a second prepare takes every verdict from the cache.

Python records here (no GHC needed); the Haskell example and its mutants are in test_prepare_verify_haskell.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from sftpipe.cli.report import print_prepare
from sftpipe.contracts.data_dir import DataDir
from sftpipe.data import prepare
from sftpipe.data.prepare.quality import ruff_path
from sftpipe.data.prepare.verify import summarise
from sftpipe.errors import SftpipeError
from tests.conftest import make_config, write_jsonl

TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"
PY_RECORDS = [
    {"id": "good", "instruction": "Add two numbers.", "code": "def add(a, b):\n    return a + b\n", "tests": TESTS},
    {"id": "wrong", "instruction": "Add two numbers, again.", "code": "def add(a, b):\n    return a - b\n",
     "tests": TESTS},
    {"id": "crash", "instruction": "Add numbers, crashing.", "code": "def add(a, b):\n    return a + c\n",
     "tests": TESTS},
    {"id": "syntax", "instruction": "Add numbers, badly typed.", "code": "def add(a, b)\n    return a + b\n",
     "tests": TESTS},
    # HumanEval's shape: check(candidate) called on the entry point by the runner
    {"id": "humaneval", "instruction": "Double a number.", "code": "def double(x):\n    return 2 * x\n",
     "tests": "def check(candidate):\n    assert candidate(4) == 8\n", "entry_point": "double"},
    {"id": "untested", "instruction": "Say hello in Python.", "code": "print('hello')\n"},
]
VERDICT_REASONS = {"verify_wrong_answer": 1, "verify_runtime_error": 1, "verify_compile_error": 1}


def _config(tmp: Path, tiny_dir: Path, records: list[dict], cache: Path, **verify):
    path = write_jsonl(tmp / "code.jsonl", records)
    source = {"path": str(path), "format": "code", "code_language": "python", "verify": "tests"}
    return make_config(tmp, tiny_dir, [source], data={"verify": verify, "dedup": {"near": False}},
                       eval={"code": {"cache_dir": str(cache)}})


def _card_counts(card: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^\| (verify_\w+|quality_\w+) \| (\d+) \|$", card, re.M)}


def test_failing_solutions_are_rejected_with_their_verdict_and_counted_everywhere(tmp_path, tiny_dir, capsys):
    cfg = _config(tmp_path / "a", tiny_dir, PY_RECORDS, tmp_path / "cache")
    result = prepare.run(cfg)
    out = Path(cfg.data.output_dir)
    v = result.verification
    assert v is not None and v.verified == 5 and v.passed == 2 and v.untested == 1 and v.cached == 0
    assert v.verdicts == {"pass": 2, "wrong_answer": 1, "runtime_error": 1, "compile_error": 1}
    assert {r: n for r, n in result.rejected.items() if r.startswith("verify_")} == VERDICT_REASONS
    # rejected.jsonl: one line per failing record, the verdict as its reason, the test output with it
    rows = [json.loads(x) for x in (out / "rejected.jsonl").read_text().splitlines()]
    assert {r["id"]: r["reason"] for r in rows} == {"wrong": "verify_wrong_answer", "crash": "verify_runtime_error",
                                                    "syntax": "verify_compile_error"}
    assert Counter(r["reason"] for r in rows) == VERDICT_REASONS
    assert all(r["stage"] == "verify" for r in rows)
    wrong = next(r for r in rows if r["reason"] == "verify_wrong_answer")
    assert wrong["verdict"] == "wrong_answer" and "AssertionError" in wrong["output"]
    crash = next(r for r in rows if r["reason"] == "verify_runtime_error")
    assert "NameError" in crash["output"]
    # the manifest and the data card say the same
    manifest = DataDir(out).manifest
    assert manifest.verification == v
    assert {r: n for r, n in manifest.rejected.items() if r.startswith("verify_")} == VERDICT_REASONS
    card = (out / "DATA_CARD.md").read_text()
    assert _card_counts(card) == VERDICT_REASONS
    assert "## Execution verification" in card and "| pass | 2 |" in card and "1 records had no tests (kept" in card
    # the CLI output too
    print_prepare(result)
    printed = capsys.readouterr().out
    for reason, n in VERDICT_REASONS.items():
        assert f"rejected (verify) {reason}: {n}" in printed
    assert "verified 5 records against their own tests" in printed and "0 verdicts from the cache" in printed
    # the kept records carry their verdict in metadata
    kept = [json.loads(m) for split in ("train", "val", "test") for m in DataDir(out).load_split(split)["meta"]]
    assert sorted(m["verify"] for m in kept) == ["pass", "pass", "untested"]


def test_second_prepare_takes_every_verdict_from_the_cache(tmp_path, tiny_dir, capsys):
    first = prepare.run(_config(tmp_path / "a", tiny_dir, PY_RECORDS, tmp_path / "cache")).verification
    second = prepare.run(_config(tmp_path / "b", tiny_dir, PY_RECORDS, tmp_path / "cache"))
    assert first is not None and first.cached == 0
    assert second.verification is not None and second.verification.cached == second.verification.verified == 5
    assert second.verification.verdicts == first.verdicts
    print_prepare(second)
    assert "5 verdicts from the cache" in capsys.readouterr().out
    # negative control: another cache runs everything again
    third = prepare.run(_config(tmp_path / "c", tiny_dir, PY_RECORDS, tmp_path / "other-cache")).verification
    assert third is not None and third.cached == 0


def test_untested_records_are_dropped_when_asked_and_counted(tmp_path, tiny_dir):
    result = prepare.run(_config(tmp_path, tiny_dir, PY_RECORDS, tmp_path / "cache", untested="drop"))
    assert result.rejected["verify_no_tests"] == 1 and result.verification.untested == 1
    assert result.verification.untested_policy == "drop"
    assert sum(s.examples for s in result.splits.values()) == 2


def test_a_source_without_verify_runs_nothing(tmp_path, tiny_dir):
    path = write_jsonl(tmp_path / "code.jsonl", PY_RECORDS)
    cfg = make_config(tmp_path, tiny_dir, [{"path": str(path), "format": "code", "code_language": "python"}],
                      data={"dedup": {"near": False}}, eval={"code": {"cache_dir": str(tmp_path / "cache")}})
    result = prepare.run(cfg)
    assert result.verification is None and sum(s.examples for s in result.splits.values()) == 6
    assert "verification" not in json.loads((Path(cfg.data.output_dir) / "manifest.json").read_text())


def test_a_language_that_cannot_be_run_is_refused_naming_the_field(tmp_path, tiny_dir):
    path = write_jsonl(tmp_path / "code.jsonl", PY_RECORDS)
    cfg = make_config(tmp_path, tiny_dir, [{"path": str(path), "format": "code", "code_language": "rust",
                                            "verify": "tests"}])
    with pytest.raises(SftpipeError, match=r"data.sources\[0\].code_language is 'rust'"):
        prepare.run(cfg)


QUALITY_RECORDS = [
    {"id": "clean", "instruction": "Add two numbers.", "code": "def add(a, b):\n    return a + b\n", "tests": TESTS},
    # an unused import (ruff F401) and `is` with a literal (a SyntaxWarning of the compiler)
    {"id": "sloppy", "instruction": "Add two numbers, sloppily.",
     "code": "import os\n\n\ndef add(a, b):\n    if a is 1:\n        return 1 + b\n    return a + b\n",
     "tests": TESTS},
]


@pytest.mark.skipif(ruff_path() is None, reason="needs ruff: pip install ruff (in the dev extra)")
def test_quality_figures_are_measured_and_thresholds_filter(tmp_path, tiny_dir):
    cfg = _config(tmp_path / "a", tiny_dir, QUALITY_RECORDS, tmp_path / "cache", quality=True)
    result = prepare.run(cfg)
    out = Path(cfg.data.output_dir)
    metas = {m["id"]: m for split in ("train", "val", "test") for m in
             map(json.loads, DataDir(out).load_split(split)["meta"])}
    assert metas["clean"]["quality"] == {"solution_lines": 2, "compile_warnings": 0, "ruff_findings": 0}
    sloppy = metas["sloppy"]["quality"]
    assert sloppy["solution_lines"] == 5 and sloppy["compile_warnings"] == 1 and sloppy["ruff_findings"] >= 1
    quality = result.verification.quality
    assert quality["solution_lines"].records == 2 and quality["solution_lines"].max == 5
    assert sum(quality["ruff_findings"].histogram) == 2
    card = (out / "DATA_CARD.md").read_text()
    assert "Histogram of ruff_findings" in card and "| solution_lines | 2 |" in card
    # a threshold is a filter: the sloppy one goes, with its figures in rejected.jsonl
    cfg = _config(tmp_path / "b", tiny_dir, QUALITY_RECORDS, tmp_path / "cache", max_ruff_findings=0)
    result = prepare.run(cfg)
    assert result.rejected == {"quality_ruff": 1}
    row = json.loads((Path(cfg.data.output_dir) / "rejected.jsonl").read_text())
    assert row["stage"] == "quality" and row["quality"]["ruff_findings"] >= 1 and "max_ruff_findings" in row["detail"]
    assert _card_counts((Path(cfg.data.output_dir) / "DATA_CARD.md").read_text()) == {"quality_ruff": 1}


def test_a_missing_tool_is_named_and_its_figure_skipped_not_faked(tmp_path, tiny_dir, monkeypatch, capsys):
    monkeypatch.setattr("sftpipe.data.prepare.quality.ruff_path", lambda: None)
    result = prepare.run(_config(tmp_path / "a", tiny_dir, QUALITY_RECORDS, tmp_path / "cache", quality=True))
    v = result.verification
    assert "ruff_findings" not in v.quality and "pip install ruff" in v.skipped_figures["ruff_findings"]
    assert "solution_lines" in v.quality  # the other figures are still measured
    print_prepare(result)
    assert "note: ruff_findings not measured: ruff is not installed" in capsys.readouterr().out
    # a threshold on a figure that cannot be measured is an error, not a filter that does nothing
    with pytest.raises(SftpipeError, match=r"data.verify.max_ruff_findings is set but ruff is not installed"):
        prepare.run(_config(tmp_path / "b", tiny_dir, QUALITY_RECORDS, tmp_path / "cache", max_ruff_findings=0))


def test_figure_summaries_bin_counts_by_whole_numbers_and_keep_every_value():
    lines = summarise(np.array([2, 3, 5, 16, 4], dtype=float))
    assert lines.integer and lines.bin_edges[:3] == [0, 2, 4] and lines.histogram[:3] == [0, 2, 2]
    assert sum(lines.histogram) == 5 and lines.max == 16 and lines.p50 == 4
    zeros = summarise(np.zeros(3))
    assert zeros.bin_edges == [0, 1] and zeros.histogram == [3]
    rates = summarise(np.array([0.0, 0.5, 7.69]))
    assert not rates.integer and len(rates.histogram) == 10 and sum(rates.histogram) == 3


def test_worker_processes_verify_their_chunks_and_the_counts_add_up(tmp_path, tiny_dir, monkeypatch):
    """Several chunks on a pool of 2 processes give the same verdicts and data as one process."""
    records = [{**r, "id": f"{r['id']}-{copy}", "instruction": f"{r['instruction']} (variant {copy})"}
               for copy in range(3) for r in PY_RECORDS]
    monkeypatch.setattr("sftpipe.data.prepare.scan.CHUNK_RECORDS", 4)
    results = []
    for procs in (1, 2):
        cfg = _config(tmp_path / str(procs), tiny_dir, records, tmp_path / f"cache-{procs}")
        cfg.data.num_proc = procs
        results.append(prepare.run(cfg))
    one, two = results
    # identical samples run once: in one process the 10 later copies share the first one's verdict; chunks
    # judged at the same time in two processes may both run a sample
    assert one.verification.cached == 10 and two.verification.cached <= 10
    assert two.verification.model_copy(update={"cached": 10}) == one.verification
    assert one.verification.verified == 15
    assert one.verification.verdicts == {"pass": 6, "wrong_answer": 3, "runtime_error": 3, "compile_error": 3}
    assert two.rejected == one.rejected and two.splits == one.splits
    rows = [[json.loads(x)["id"] for x in (tmp_path / str(p) / "data" / "rejected.jsonl").read_text().splitlines()]
            for p in (1, 2)]
    assert rows[0] == rows[1] and len(rows[0]) == 9


HUMANEVAL_PROMPT = 'def triple(x: int) -> int:\n    """Three times x."""\n'
HUMANEVAL_TEST = "def check(candidate):\n    assert candidate(2) == 6\n    assert candidate(0) == 0\n"


def test_humaneval_records_whose_answer_continues_the_prompt_are_judged_as_one_program(tmp_path, tiny_dir):
    """HumanEval's shape as training data: prompt (signature + docstring), canonical_solution (the body),
    `test` with check(candidate), entry_point. The body alone would not compile; prompt + body is judged."""
    records = [{"task_id": "t/0", "prompt": HUMANEVAL_PROMPT, "canonical_solution": "    return 3 * x\n",
                "test": HUMANEVAL_TEST, "entry_point": "triple"},
               {"task_id": "t/1", "prompt": HUMANEVAL_PROMPT.replace("Three", "3"),
                "canonical_solution": "    return x + x\n", "test": HUMANEVAL_TEST, "entry_point": "triple"}]
    path = write_jsonl(tmp_path / "humaneval.jsonl", records)
    source = {"path": str(path), "format": "prompt_completion", "code_language": "python", "verify": "tests",
              "fields": {"completion": "canonical_solution", "tests": "test", "id": "task_id"}}
    # unverified records beside them, so that the data dir is not empty whatever tokenization does with them
    other = {"path": str(write_jsonl(tmp_path / "other.jsonl", PY_RECORDS)), "format": "code",
             "code_language": "python"}
    cfg = make_config(tmp_path, tiny_dir, [source, other], data={"dedup": {"near": False}},
                      eval={"code": {"cache_dir": str(tmp_path / "cache")}})
    result = prepare.run(cfg)
    assert result.verification.verdicts == {"pass": 1, "wrong_answer": 1}
    rows = [json.loads(x) for x in (Path(cfg.data.output_dir) / "rejected.jsonl").read_text().splitlines()]
    assert [(r["id"], r["reason"]) for r in rows if r["stage"] == "verify"] == [("t/1", "verify_wrong_answer")]


def test_the_manifest_names_the_runner_and_linter_versions(tmp_path, tiny_dir):
    result = prepare.run(_config(tmp_path, tiny_dir, QUALITY_RECORDS, tmp_path / "cache", quality=True))
    tools = result.verification.tools
    assert tools["python"].startswith("python 3.") and "haskell" not in tools
    if ruff_path() is not None:
        assert tools["ruff"][0].isdigit()
    assert f"python `{tools['python']}`" in (Path(tmp_path / "data" / "DATA_CARD.md")).read_text()


@pytest.mark.skipif(ruff_path() is None, reason="needs ruff: pip install ruff (in the dev extra)")
def test_a_second_prepare_takes_the_quality_figures_from_the_cache_too(tmp_path, tiny_dir, monkeypatch):
    first = prepare.run(_config(tmp_path / "a", tiny_dir, QUALITY_RECORDS, tmp_path / "cache", quality=True))

    def measured(*args):
        raise AssertionError("a figure was measured again")

    monkeypatch.setattr("sftpipe.data.prepare.quality.ruff_findings", measured)
    monkeypatch.setattr("sftpipe.data.prepare.quality.python_warnings", measured)
    second = prepare.run(_config(tmp_path / "b", tiny_dir, QUALITY_RECORDS, tmp_path / "cache", quality=True))
    assert second.verification.quality == first.verification.quality
    assert second.verification.cached == second.verification.verified == 2
    # negative control: without a cache the figures are measured (and the patched linter is called)
    cfg = _config(tmp_path / "c", tiny_dir, QUALITY_RECORDS, tmp_path / "cache", quality=True)
    cfg.eval.code.cache_dir = None
    with pytest.raises(AssertionError, match="measured again"):
        prepare.run(cfg)


@pytest.mark.integration
def test_the_cli_prints_the_same_counts_as_the_manifest(tmp_path, tiny_dir):
    cfg = _config(tmp_path, tiny_dir, PY_RECORDS, tmp_path / "cache")
    config = tmp_path / "config.json"  # written by make_config
    proc = subprocess.run([sys.executable, "-m", "sftpipe.cli", "prepare", str(config), "--preset", "fast_test"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    manifest = DataDir(Path(cfg.data.output_dir)).manifest
    for reason, n in manifest.removed_by_stage["verify"].items():
        assert f"rejected (verify) {reason}: {n}" in proc.stdout
    v = manifest.verification
    assert (f"verified {v.verified} records against their own tests (compile_error 1, pass 2, runtime_error 1, "
            f"wrong_answer 1); 0 verdicts from the cache; 1 without tests (kept)") in proc.stdout
