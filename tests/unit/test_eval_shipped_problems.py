"""Every shipped Haskell problem: the reference solution passes and the mutant fails (marker `ghc`)."""

import json

import pytest

from sftpipe.config.schema import CodeEvalConfig
from sftpipe.evaluate.execution.executor import Executor
from sftpipe.evaluate.problems import load_items
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.ghc


def test_references_pass_and_mutants_fail():
    path = EXAMPLES / "haskell" / "problems.jsonl"
    items = load_items(str(path), "haskell")
    assert len(items) == 79 and all(item.problem is not None for item in items)
    jobs = []
    for item in items:
        jobs += [(item.problem, item.meta["solution"]), (item.problem, item.meta["mutant"])]
    results = Executor(CodeEvalConfig(cache_dir=None)).run(jobs)
    references, mutants = results[0::2], results[1::2]
    failing = [(i.id, r.verdict, r.detail, r.excerpt[:300]) for i, r in zip(items, references) if r.verdict != "pass"]
    assert failing == []
    # Mutants compile and fail at least one check: wrong_answer, never a build or harness problem.
    passing = [(i.id, r.verdict, r.detail) for i, r in zip(items, mutants) if r.verdict != "wrong_answer"]
    assert passing == []
    total_checks = sum(int(r.detail.split()[0]) for r in references)
    assert total_checks == 445  # examples/haskell/README.md: all 445 checks


def test_problem_file_rows_are_what_the_loader_read():
    rows = [json.loads(x) for x in (EXAMPLES / "haskell" / "problems.jsonl").read_text().splitlines() if x.strip()]
    items = load_items(str(EXAMPLES / "haskell" / "problems.jsonl"), "haskell")
    assert [i.id for i in items] == [r["id"] for r in rows]
    assert items[0].messages[-1]["content"] == rows[0]["instruction"]
    assert items[0].messages[0]["role"] == "system"  # the same prompt shape as `format: code` training data
