"""Haskell answers built with GHC and run: every verdict, cheats that must not pass, MultiPL-E's Haskell
format, and the fallback when a batch's compile runs out of time. Needs GHC (marker `ghc`)."""

import json

import pytest

from sftpipe.config.schema import CodeEvalConfig
from sftpipe.errors import SftpipeError
from sftpipe.evaluate.execution.executor import Executor
from sftpipe.evaluate.execution.extract import program_for
from sftpipe.evaluate.problems import CodeProblem, load_items
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.ghc

ROW = json.loads((EXAMPLES / "haskell" / "problems.jsonl").read_text().splitlines()[0])  # sumEvens
PROBLEM = CodeProblem(ROW["id"], "haskell", ROW["tests"], "sftpipe", ROW["entry_point"])
SIG = "sumEvens :: [Int] -> Int\n"
# name -> (answer, expected verdict, text expected in detail or excerpt)
CASES = {
    "reference": (ROW["solution"], "pass", "5 checks passed"),
    "reference in a module with a main, fenced": (
        "```haskell\nmodule Solution (sumEvens) where\n\nsumEvens :: [Int] -> Int\nsumEvens = sum . filter even\n\n"
        "main :: IO ()\nmain = print (sumEvens [1, 2])\n```", "pass", "5 checks passed"),
    "mutant": (ROW["mutant"], "wrong_answer", "FAIL: sumEvens [-2,3] == -2"),
    "type error": (SIG + "sumEvens xs = sum xs + True\n", "compile_error", "Couldn't match"),
    "syntax error": (SIG + "sumEvens xs = sum [x | x <- xs\n", "compile_error", "error"),
    "wrong name": ("sumEven :: [Int] -> Int\nsumEven = sum\n", "compile_error", "not in scope"),
    "error call": (SIG + "sumEvens _ = error \"boom\"\n", "runtime_error", "boom"),
    "head of empty list": (SIG + "sumEvens xs = head (filter even xs) + sum xs\n", "runtime_error", "Prelude.head"),
    "infinite loop": (SIG + "sumEvens xs = length [1 ..]\n", "timeout", "exceeded"),
    "memory hog": (SIG + "sumEvens xs = length (show (product [1 .. 10 ^ 7 :: Integer]))\n", "runtime_error",
                   "memory"),
    "template haskell": ("{-# LANGUAGE TemplateHaskell #-}\n" + ROW["solution"], "compile_error", "refused"),
    # Cheats: each prints or exits its way around the tests; none may pass.
    "exitSuccess from pure code": (
        "import System.Exit (exitSuccess)\nimport System.IO.Unsafe (unsafePerformIO)\n" + SIG +
        "sumEvens _ = unsafePerformIO exitSuccess\n", "runtime_error", "ExitSuccess"),
    "prints the old summary line and exits": (
        "import System.Exit (exitSuccess)\nimport System.IO.Unsafe (unsafePerformIO)\n" + SIG +
        "sumEvens _ = unsafePerformIO (putStrLn \"SFTPIPE-TESTS-PASSED 5\" >> exitSuccess)\n", "runtime_error", ""),
    "prints a result line with a guessed nonce": (
        "import System.Exit (exitWith, ExitCode (..))\nimport System.IO.Unsafe (unsafePerformIO)\n" + SIG +
        "sumEvens _ = unsafePerformIO (putStrLn \"SFTPIPE-RESULT 00000000000000000000000000000000 5 0 0\" >> "
        "exitWith ExitSuccess)\n", "runtime_error", ""),
}


@pytest.fixture(scope="module")
def results():
    cfg = CodeEvalConfig(cache_dir=None, workers=1, limits={"run_timeout_s": 3.0, "run_memory_mb": 256})
    executor = Executor(cfg)
    out = executor.run([(PROBLEM, program_for(PROBLEM, code)) for code, _, _ in CASES.values()])
    return dict(zip(CASES, out))


@pytest.mark.parametrize("name", list(CASES))
def test_verdict(results, name):
    _, expected, text = CASES[name]
    result = results[name]
    assert result.verdict == expected, (result.verdict, result.detail, result.excerpt)
    assert text.lower() in (result.detail + "\n" + result.excerpt).lower()
    if expected == "compile_error":
        assert result.stage == "compile"


def test_compile_errors_name_the_file_as_the_user_knows_it(results):
    excerpt = results["type error"].excerpt
    assert excerpt.startswith("Solution.hs:") and "/src/S" not in excerpt and "keep-going" not in excerpt


HS_PROMPT = "-- | Add one to every element.\nincAll :: [Int] -> [Int]\nincAll xs ="
HS_TESTS = ("\nmain :: IO ()\nmain = do\n  let candidate = incAll\n"
            "  if candidate [1, 2] == [2, 3] then pure () else error \"assertion failed\"\n"
            "  if candidate [] == [] then pure () else error \"assertion failed\"\n  pure ()\n")
OTHER_SHAPE_TESTS = ("\nmain :: IO ()\nmain = do\n  let candidate = incAll\n  print (candidate [1])\n"
                     "  if candidate [1, 2] == [2, 3] then pure () else error \"assertion failed\"\n")


def test_multiple_e_haskell_format(tmp_path):
    path = tmp_path / "humaneval-hs.jsonl"
    rows = [{"name": "HumanEval_x_inc_all", "language": "hs", "prompt": HS_PROMPT, "tests": HS_TESTS,
             "stop_tokens": ["\n\n", "\n{-", "\ntype", "\ndata", "\nnewtype"]},
            {"name": "HumanEval_y_inc_all", "language": "hs", "prompt": HS_PROMPT, "tests": OTHER_SHAPE_TESTS,
             "stop_tokens": ["\n\n"]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    checks, own_main = (item.problem for item in load_items(str(path), "python"))
    answers = [(checks, " map (+ 1) xs\n\nmain = undefined"),  # continuation, cut at the stop token
               (checks, "```haskell\nincAll :: [Int] -> [Int]\nincAll = map succ\n```"),  # whole function
               (checks, " map (+ 2) xs"),
               (checks, " map (`div` 0) xs"),
               (own_main, " map (+ 1) xs"),
               (own_main, " map (+ 2) xs")]
    results = Executor(CodeEvalConfig(cache_dir=None, workers=2)).run(
        [(problem, program_for(problem, text)) for problem, text in answers])
    verdicts = [r.verdict for r in results]
    assert verdicts == ["pass", "pass", "wrong_answer", "runtime_error", "pass", "wrong_answer"], \
        [(r.verdict, r.detail, r.excerpt) for r in results]
    assert "candidate [1, 2] == [2, 3]" in results[2].excerpt  # each assertion judged and named


def test_a_batch_whose_compiler_dies_is_rebuilt_one_by_one(monkeypatch):
    from sftpipe.evaluate.execution.runners.haskell import HaskellRunner
    from sftpipe.evaluate.execution.sandbox import Completed

    real = HaskellRunner._ghc
    calls = []

    def batch_dies(self, root, prefix, indices, exe, timeout):
        calls.append(len(indices))
        if len(indices) > 1:  # as if one sample had made the shared compiler run out of time
            return Completed(None, "", "", "", True, timeout, False)
        return real(self, root, prefix, indices, exe, timeout)

    monkeypatch.setattr(HaskellRunner, "_ghc", batch_dies)
    results = Executor(CodeEvalConfig(cache_dir=None, workers=1)).run(
        [(PROBLEM, ROW["solution"]), (PROBLEM, ROW["mutant"]), (PROBLEM, SIG + "sumEvens = 1\n")])
    assert calls == [3, 1, 1, 1]
    assert [r.verdict for r in results] == ["pass", "wrong_answer", "compile_error"]


def test_compile_time_limit_gives_a_compile_stage_timeout():
    # No GHC call finishes in 20 ms: the batch and then each sample run out of their compile time.
    cfg = CodeEvalConfig(cache_dir=None, workers=1, limits={"compile_timeout_s": 0.02})
    results = Executor(cfg).run([(PROBLEM, ROW["solution"]), (PROBLEM, ROW["mutant"])])
    assert [(r.verdict, r.stage) for r in results] == [("timeout", "compile")] * 2


def test_missing_ghc_is_skipped_with_a_reason_or_an_error_when_required():
    from sftpipe.evaluate.problems import EvalItem
    from sftpipe.evaluate.suite import make_executor

    items = [EvalItem("p", [{"role": "user", "content": "x"}], None, PROBLEM)]
    executor, why = make_executor(CodeEvalConfig(ghc="ghc-not-installed-here"), items)
    assert executor is None and "apt-get install ghc" in why
    with pytest.raises(SftpipeError, match="not found on PATH"):
        make_executor(CodeEvalConfig(ghc="ghc-not-installed-here", enabled=True), items)
    executor, why = make_executor(CodeEvalConfig(), items)  # control: the real ghc is found
    assert executor is not None and why is None


HEADER_BROKEN = "import Data.List (sort\n" + ROW["solution"]  # stops GHC before it compiles any module
GOOD = [ROW["solution"], "-- a comment\n" + ROW["solution"], SIG + "sumEvens = sum . filter even\n"]


@pytest.mark.parametrize("broken_at", range(4))
def test_a_header_error_in_one_sample_does_not_fail_the_others_of_its_batch(broken_at):
    codes = GOOD[:broken_at] + [HEADER_BROKEN] + GOOD[broken_at:]
    cfg = CodeEvalConfig(cache_dir=None, workers=1, haskell_batch_size=4)
    results = Executor(cfg).run([(PROBLEM, code) for code in codes])
    verdicts = [r.verdict for r in results]
    expected = ["pass"] * 4
    expected[broken_at] = "compile_error"
    assert verdicts == expected, [(r.verdict, r.detail, r.excerpt) for r in results]
    assert "parse error" in results[broken_at].detail + results[broken_at].excerpt


def test_a_failure_that_names_no_sample_is_bisected_until_each_verdict_is_the_samples_own(monkeypatch):
    from sftpipe.evaluate.execution.runners.haskell import HaskellRunner

    real = HaskellRunner._ghc
    calls = []

    def counted(self, root, prefix, indices, exe, timeout):
        calls.append(len(indices))
        return real(self, root, prefix, indices, exe, timeout)

    monkeypatch.setattr(HaskellRunner, "_ghc", counted)
    # Compiles, then fails to link: the linker's message names no source file of any sample.
    unlinkable = ("{-# LANGUAGE ForeignFunctionInterface #-}\n" + SIG +
                  'foreign import ccall "sftpipe_no_such_symbol" noSuch :: Int -> Int\nsumEvens = noSuch . sum\n')
    codes = [GOOD[0], GOOD[1], unlinkable, GOOD[2]]
    results = Executor(CodeEvalConfig(cache_dir=None, workers=1)).run([(PROBLEM, code) for code in codes])
    assert [r.verdict for r in results] == ["pass", "pass", "compile_error", "pass"], \
        [(r.verdict, r.detail, r.excerpt) for r in results]
    assert "sftpipe_no_such_symbol" in results[2].excerpt
    assert calls[0] == 4 and len(calls) > 1


def multiple_e_problem(entry: str, *conditions: str) -> CodeProblem:
    lines = "".join(f'  if {c} then pure () else error "assertion failed"\n' for c in conditions)
    return CodeProblem(f"p_{entry}", "haskell", f"\nmain :: IO ()\nmain = do\n  let candidate = {entry}\n{lines}  pure ()\n",
                       "multipl-e", entry)


COUNTS = "counts :: [Int] -> M.Map Int Int\ncounts = M.fromListWith (+) . map (\\x -> (x, 1))\n"
# name -> (problem, an answer that compiles and passes as a single-file program answer + tests)
VALID_AS_ONE_FILE = {
    "hides a Prelude name it defines (MultiPL-E)": (
        multiple_e_problem("maximum", "candidate [1, 3, 2] == 3"),
        "import Prelude hiding (maximum)\n\nmaximum :: [Int] -> Int\nmaximum = foldr1 max\n"),
    "hides a Prelude name it defines (shipped problem)": (
        PROBLEM, "import Prelude hiding (sum)\n\nsum :: [Int] -> Int\nsum = foldr (+) 0\n\n" + SIG +
        "sumEvens = sum . filter even\n"),
    "ImportQualifiedPost import the tests use": (
        multiple_e_problem("counts", "candidate [1, 1] == M.fromList [(1, 2)]"),
        "{-# LANGUAGE ImportQualifiedPost #-}\nimport Data.Map.Strict qualified as M\n\n" + COUNTS),
    "qualified import the tests use": (
        multiple_e_problem("counts", "candidate [1, 1] == M.fromList [(1, 2)]"),
        "import qualified Data.Map.Strict as M\n\n" + COUNTS),
    "BlockArguments": (
        multiple_e_problem("incAll", "candidate [1, 2] == [2, 3]"),
        "{-# LANGUAGE BlockArguments #-}\nincAll :: [Int] -> [Int]\nincAll = map \\x -> x + 1\n"),
}


@pytest.fixture(scope="module")
def one_file_results():
    cfg = CodeEvalConfig(cache_dir=None, workers=1)
    return dict(zip(VALID_AS_ONE_FILE, Executor(cfg).run(list(VALID_AS_ONE_FILE.values()))))


@pytest.mark.parametrize("name", list(VALID_AS_ONE_FILE))
def test_an_answer_valid_as_one_file_with_its_tests_passes(one_file_results, name):
    result = one_file_results[name]
    assert result.verdict == "pass", (result.detail, result.excerpt)
