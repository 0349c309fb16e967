"""`eval.code.profile: multipl-e`: each sample is one program run with runghc / python and judged as
MultiPL-E judges it (exit 0: pass; any other exit: runtime_error; over the limit: timeout), beside the
default profile's finer verdicts on the same answers. Needs GHC (marker `ghc`)."""

import json

import pytest

from sftpipe.config.schema import CodeEvalConfig
from sftpipe.evaluate.execution.executor import Executor
from sftpipe.evaluate.execution.problem import CodeProblem
from sftpipe.evaluate.execution.runners.base import Job
from sftpipe.evaluate.execution.runners.single_file import MULTIPL_E_TIMEOUT_S, RunghcRunner
from sftpipe.evaluate.execution.sandbox import Sandbox
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.ghc

ROW = json.loads((EXAMPLES / "haskell" / "problems.jsonl").read_text().splitlines()[0])  # sumEvens
PROBLEM = CodeProblem(ROW["id"], "haskell", ROW["tests"], "sftpipe", ROW["entry_point"])
SIG = "sumEvens :: [Int] -> Int\n"
# name -> (answer, verdict under default, verdict under multipl-e)
CASES = {
    "reference": (ROW["solution"], "pass", "pass"),
    "wrong answer": (ROW["mutant"], "wrong_answer", "runtime_error"),
    "does not compile": (SIG + "sumEvens xs = sum xs + True\n", "compile_error", "runtime_error"),
}
PY_PROBLEM = CodeProblem("he_add", "python", "def check(candidate):\n    assert candidate(1, 2) == 3\n", "sftpipe",
                         "add")
PY_CASES = {
    "reference": ("def add(a, b):\n    return a + b\n", "pass", "pass"),
    "wrong answer": ("def add(a, b):\n    return a - b\n", "wrong_answer", "runtime_error"),
    "syntax error": ("def add(a, b)\n    return a + b\n", "compile_error", "runtime_error"),
}


def verdicts(profile: str, problem: CodeProblem, cases: dict) -> dict[str, str]:
    executor = Executor(CodeEvalConfig(cache_dir=None, workers=2, profile=profile))
    return dict(zip(cases, (r.verdict for r in executor.run([(problem, c[0]) for c in cases.values()]))))


@pytest.mark.parametrize("profile,column", [("default", 1), ("multipl-e", 2)])
def test_haskell_verdicts_by_profile(profile, column):
    assert verdicts(profile, PROBLEM, CASES) == {name: case[column] for name, case in CASES.items()}


@pytest.mark.parametrize("profile,column", [("default", 1), ("multipl-e", 2)])
def test_python_verdicts_by_profile(profile, column):
    assert verdicts(profile, PY_PROBLEM, PY_CASES) == {name: case[column] for name, case in PY_CASES.items()}


def test_multipl_e_runs_haskell_with_runghc_under_15_s_and_a_loop_times_out():
    executor = Executor(CodeEvalConfig(cache_dir=None, profile="multipl-e"))
    runner = executor.runner("haskell")
    assert isinstance(runner, RunghcRunner) and runner.timeout_s == MULTIPL_E_TIMEOUT_S == 15.0
    short = RunghcRunner("ghc", executor.cfg.limits, Sandbox("auto"), timeout_s=2.0)
    looping, reference = short.run_batch([Job(PROBLEM, SIG + "sumEvens xs = length [1 ..]\n"),
                                          Job(PROBLEM, ROW["solution"])])
    assert looping.verdict == "timeout" and "2s" in looping.detail
    assert reference.verdict == "pass"  # control: the short limit is enough for an answer that ends


def test_cache_keys_differ_by_profile_and_verdicts_are_not_shared(tmp_path):
    keys = {}
    for profile in ("default", "multipl-e"):
        executor = Executor(CodeEvalConfig(cache_dir=str(tmp_path), profile=profile))
        keys[profile] = executor.key(PROBLEM, ROW["mutant"])
        assert executor.key(PROBLEM, ROW["mutant"]) == keys[profile]  # stable within a profile
    assert keys["default"] != keys["multipl-e"]
    first = Executor(CodeEvalConfig(cache_dir=str(tmp_path))).run([(PROBLEM, ROW["mutant"])])[0]
    second = Executor(CodeEvalConfig(cache_dir=str(tmp_path), profile="multipl-e")).run([(PROBLEM, ROW["mutant"])])[0]
    assert (first.verdict, first.cached) == ("wrong_answer", False)
    assert (second.verdict, second.cached) == ("runtime_error", False)
