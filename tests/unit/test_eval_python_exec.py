"""Python answers judged by running them: the five verdicts, cheats that must not pass, MultiPL-E files,
the verdict cache and de-duplication."""

import json

import pytest

from sftpipe.config.schema import CodeEvalConfig
from sftpipe.evaluate.execution.executor import Executor, plan_batches
from sftpipe.evaluate.execution.extract import program_for
from sftpipe.evaluate.problems import CodeProblem, load_items

TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"
PROBLEM = CodeProblem("add", "python", TESTS, "sftpipe", "add")


def executor(tmp_path, **fields):
    values = {"cache_dir": str(tmp_path / "cache"), "workers": 2, "limits": {"run_timeout_s": 3.0}, **fields}
    return Executor(CodeEvalConfig(**values))


CASES = {
    "pass": "def add(a, b):\n    return a + b\n",
    "wrong_answer": "def add(a, b):\n    return a - b\n",
    "compile_error": "def add(a, b)\n    return a + b\n",
    "runtime_error": "def add(a, b):\n    return a + undefined_name\n",
    "timeout": "def add(a, b):\n    while True:\n        pass\n",
}
CHEATS = {
    "exits 0 before the tests": "import sys\nsys.exit(0)\n",
    "os._exit(0) before the tests": "import os\nos._exit(0)\n",
    "prints a fake summary": "print('SFTPIPE-RESULT 0000 pass')\nimport os\nos._exit(0)\n",
}


def test_each_verdict_is_classified(tmp_path):
    ex = executor(tmp_path)
    results = ex.run([(PROBLEM, code) for code in CASES.values()])
    assert [r.verdict for r in results] == list(CASES), [(r.verdict, r.detail, r.excerpt) for r in results]
    by = dict(zip(CASES, results))
    assert "SyntaxError" in by["compile_error"].excerpt and by["compile_error"].stage == "compile"
    assert "NameError" in by["runtime_error"].excerpt
    assert "AssertionError" in by["wrong_answer"].excerpt


@pytest.mark.parametrize("name", list(CHEATS))
def test_cheats_do_not_pass(tmp_path, name):
    result = executor(tmp_path, cache_dir=None).run([(PROBLEM, CHEATS[name])])[0]
    assert result.verdict != "pass", (name, result)
    assert result.verdict == "runtime_error"


def test_a_correct_answer_that_closes_stdout_still_passes(tmp_path):
    # The runner reports through a copy of fd 1 taken before the answer ran.
    code = "import os\nos.close(1)\ndef add(a, b):\n    return a + b\n"
    assert executor(tmp_path, cache_dir=None).run([(PROBLEM, code)])[0].verdict == "pass"


def test_humaneval_check_is_called_on_the_entry_point(tmp_path):
    tests = "def check(candidate):\n    assert candidate(2, 3) == 5\n"
    problem = CodeProblem("he", "python", tests, "sftpipe", "add")
    results = executor(tmp_path).run([(problem, CASES["pass"]), (problem, CASES["wrong_answer"])])
    assert [r.verdict for r in results] == ["pass", "wrong_answer"]  # wrong_answer: check really ran


def test_cache_and_duplicates(tmp_path):
    ex = executor(tmp_path)
    first = ex.run([(PROBLEM, CASES["pass"]), (PROBLEM, CASES["pass"] + "\n\n   \n"), (PROBLEM, CASES["timeout"])])
    assert [r.verdict for r in first] == ["pass", "pass", "timeout"]
    assert [r.cached for r in first] == [False, True, False]  # the whitespace variant shares the first run
    again = executor(tmp_path).run([(PROBLEM, CASES["pass"]), (PROBLEM, CASES["timeout"])])
    assert [r.cached for r in again] == [True, False]  # timeouts depend on load: never cached
    other_tests = CodeProblem("add", "python", TESTS + "assert add(0, 0) == 1\n", "sftpipe", "add")
    changed = executor(tmp_path).run([(other_tests, CASES["pass"])])[0]
    assert changed.verdict == "wrong_answer" and not changed.cached  # the tests are part of the key


def test_multiple_e_python_file(tmp_path):
    prompt = ("from typing import List\n\ndef below_zero(ops: List[int]) -> bool:\n"
              "    \"\"\"True if the balance dips.\"\"\"\n")
    tests = ("def check(candidate):\n    assert candidate([1, 2]) == False\n    assert candidate([1, -2]) == True\n\n"
             "def test_check():\n    check(below_zero)\n\ntest_check()\n")
    path = tmp_path / "humaneval-py.jsonl"
    path.write_text(json.dumps({"name": "HumanEval_3_below_zero", "language": "py", "prompt": prompt,
                                "doctests": "keep", "original": "x", "prompt_terminology": "reworded",
                                "tests": tests, "stop_tokens": ["\ndef", "\nif", "\nprint"]}) + "\n")
    [item] = load_items(str(path), "haskell")
    assert item.problem.language == "python" and item.problem.entry_point == "below_zero"
    assert "```python" in item.messages[-1]["content"]
    good_continuation = "    total = 0\n    for op in ops:\n        total += op\n        if total < 0:\n" \
                        "            return True\n    return False\n\ndef unrelated():\n    pass\n"
    good_full = "```python\ndef below_zero(ops: List[int]) -> bool:\n    return any(sum(ops[:i + 1]) < 0 " \
                "for i in range(len(ops)))\n```"
    bad = "    return False\n"
    codes = [program_for(item.problem, g) for g in (good_continuation, good_full, bad)]
    results = executor(tmp_path).run([(item.problem, c) for c in codes])
    assert [r.verdict for r in results] == ["pass", "pass", "wrong_answer"], [r.excerpt for r in results]


def test_plan_batches_covers_every_sample_once_in_a_multiple_of_workers():
    for n in (1, 5, 32, 33, 158):
        batches = plan_batches(n, workers=2, max_batch=32)
        assert sorted(i for b in batches for i in b) == list(range(n))
        assert all(len(b) <= 32 for b in batches)
        assert len(batches) == n or len(batches) % 2 == 0
