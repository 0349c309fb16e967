"""sftpipe's verdicts agree with plain GHC / Python on pass or fail, batched and not, in any batch order.

The reference is the plain single-file program, assembled as MultiPL-E does (answer + tests, LANGUAGE
pragmas and imports hoisted, `import Solution` and the tests' `module` line dropped), run with `runghc`
or `python prog.py`: it passes iff it exits 0. The programs are every shipped Haskell problem's reference
and mutant, and generated variants of its reference: a one-token mutant, non-compiling variants (a type
error, a syntax error, the entry point misnamed), header-level errors (an unclosed import list, an unknown
LANGUAGE pragma, a postpositive `qualified` without ImportQualifiedPost), Prelude-hiding answers, helpers
after a blank line, and answers needing imports (qualified, ImportQualifiedPost, BlockArguments).

The default run takes every 20th problem (about 30 s on 2 cores); the `slow` one takes all of them (1,081
programs, ~12 min on 2 busy cores: run it with `pytest -m slow` after changing the Haskell runner).
Honest programs only: cheats that exit 0 early pass plain GHC by design and are tested elsewhere.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sftpipe.config.schema import CodeEvalConfig
from sftpipe.evaluate.execution.executor import Executor
from sftpipe.evaluate.execution.extract import single_file_haskell
from sftpipe.evaluate.execution.problem import CodeProblem
from sftpipe.evaluate.execution.runners.python import single_file_python
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.ghc

ROWS = [json.loads(x) for x in (EXAMPLES / "haskell" / "problems.jsonl").read_text().splitlines() if x.strip()]
SWAPS = [(" + ", " - "), (" - ", " + "), (" <= ", " < "), (" < ", " <= "), (" >= ", " > "), (" > ", " >= "),
         (" == ", " /= "), (" /= ", " == "), (" && ", " || "), (" || ", " && "), ("True", "False"),
         ("False", "True"), (" 0", " 1"), (" 1", " 2"), ("max", "min"), ("min", "max")]
HELPERS = ("\n\nsftHelper :: Int -> Int\nsftHelper x = x + 1\n")
USES_IMPORTS = ("\n\nsftUpper :: String -> String\nsftUpper = map toUpper\n\nsftSize :: [Int] -> Int\n"
                "sftSize = SftM.size . SftM.fromList . map (\\x -> (x, ()))\n")


def one_token_mutant(code: str) -> str | None:
    """`code` with the first swappable token of a non-signature line swapped; None if there is none."""
    lines = code.split("\n")
    for n, line in enumerate(lines):
        if "::" in line or not line.strip():
            continue
        for old, new in SWAPS:
            if old in line:
                lines[n] = line.replace(old, new, 1)
                return "\n".join(lines)
    return None


def haskell_variants(row: dict) -> list[tuple[str, str]]:
    """(kind, answer) pairs for one shipped problem."""
    ref, entry = row["solution"], row["entry_point"]
    variants = [
        ("reference", ref),
        ("shipped mutant", row["mutant"]),
        ("type error", ref + "\nsftBad :: Int\nsftBad = True\n"),
        ("syntax error", ref + "\nsftBad = (1 +\n"),
        ("misnamed entry point", re.sub(rf"\b{entry}\b", entry + "X", ref)),
        ("header: unclosed import list", "import Data.List (sort\n" + ref),
        ("header: unknown pragma", "{-# LANGUAGE NoSuchExtension #-}\n" + ref),
        ("header: qualified without ImportQualifiedPost", "import Data.Map qualified as SftM\n" + ref),
        ("hides maximum and defines it", "import Prelude hiding (maximum)\n\nmaximum :: Ord a => [a] -> a\n"
                                         "maximum = foldr1 max\n\n" + ref),
        ("helper after a blank line", ref + HELPERS),
        ("qualified imports", "import qualified Data.Map.Strict as SftM\nimport Data.Char (toUpper)\n" + ref
         + USES_IMPORTS),
        ("ImportQualifiedPost", "{-# LANGUAGE ImportQualifiedPost #-}\nimport Data.Map.Strict qualified as SftM\n"
                                "import Data.Char (toUpper)\n" + ref + USES_IMPORTS),
        ("BlockArguments", "{-# LANGUAGE BlockArguments #-}\n" + ref + "\nsftAll :: [Int] -> [Int]\n"
                           "sftAll = map \\x -> x + 1\n"),
    ]
    mutant = one_token_mutant(ref)
    if mutant is not None:
        variants.append(("one-token mutant", mutant))
    return variants


def plain_passes(argv_for, program: str, name: str) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / name).write_text(program)
        try:
            done = subprocess.run(argv_for(name), cwd=tmp, capture_output=True, timeout=30,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0


def check_agreement(jobs: list[tuple[CodeProblem, str, str]], plain: list[bool], batch_size: int, seed: int):
    order = list(range(len(jobs)))
    random.Random(seed).shuffle(order)
    cfg = CodeEvalConfig(cache_dir=None, workers=2, haskell_batch_size=batch_size)
    results = Executor(cfg).run([(jobs[i][0], jobs[i][2]) for i in order])
    disagree = [(jobs[i][0].id, jobs[i][1], plain[i], r.verdict, r.detail[:120])
                for i, r in zip(order, results) if (r.verdict == "pass") != plain[i]]
    assert not disagree, f"{len(disagree)} of {len(jobs)} disagree with plain runs: {disagree[:8]}"


def haskell_jobs(step: int) -> list[tuple[CodeProblem, str, str]]:
    jobs = []
    for row in ROWS[::step]:
        problem = CodeProblem(row["id"], "haskell", row["tests"], "sftpipe", row["entry_point"])
        jobs += [(problem, kind, code) for kind, code in haskell_variants(row)]
    return jobs


def haskell_agreement(step: int):
    jobs = haskell_jobs(step)
    with ThreadPoolExecutor(2) as pool:
        plain = list(pool.map(lambda j: plain_passes(lambda n: ["runghc", n],
                                                     single_file_haskell(answer=j[2], tests=j[0].tests), "Main.hs"),
                              jobs))
    assert any(plain) and not all(plain)  # both outcomes are represented
    for batch_size, seed in ((32, 0), (32, 1), (1, 2)):
        check_agreement(jobs, plain, batch_size, seed)
    return len(jobs), sum(plain)


def test_haskell_verdicts_agree_with_runghc_on_every_20th_problem():
    count, passed = haskell_agreement(20)
    assert count >= 4 * 13


@pytest.mark.slow
def test_haskell_verdicts_agree_with_runghc_on_every_shipped_problem():
    count, passed = haskell_agreement(1)
    print(f"{count} programs, {passed} pass plain runghc; sftpipe agrees on all, batched (2 orders) and unbatched")
    assert count >= 79 * 13


PY_TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n"
PY_HUMANEVAL = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(0, 0) == 0\n"
PY_ANSWERS = {
    "reference": "def add(a, b):\n    return a + b\n",
    "one-token mutant": "def add(a, b):\n    return a - b\n",
    "off by one": "def add(a, b):\n    return a + b + 1\n",
    "syntax error": "def add(a, b)\n    return a + b\n",
    "runtime error": "def add(a, b):\n    return a + b + None\n",
    "name error": "def plus(a, b):\n    return a + b\n",
    "helper after a blank line": "def add(a, b):\n    return _plus(a, b)\n\n\ndef _plus(a, b):\n    return a + b\n",
    "needs an import": "import operator\n\n\ndef add(a, b):\n    return operator.add(a, b)\n",
    "shadows a builtin": "def sum(xs):\n    return 0\n\n\ndef add(a, b):\n    return a + b\n",
    "import inside": "def add(a, b):\n    from functools import reduce\n    return reduce(lambda x, y: x + y, [a, b])\n",
}


def test_python_verdicts_agree_with_plain_python():
    problems = [CodeProblem("add", "python", PY_TESTS, "sftpipe", "add"),
                CodeProblem("he_add", "python", PY_HUMANEVAL, "sftpipe", "add")]
    jobs, plain = [], []
    for problem in problems:
        for kind, code in PY_ANSWERS.items():
            jobs.append((problem, kind, code))
            program = single_file_python(problem, code)
            plain.append(plain_passes(lambda n: [sys.executable, n], program, "prog.py"))
    assert plain.count(True) == 2 * 5 and plain.count(False) == 2 * 5  # a guard on the reference itself
    order = list(range(len(jobs)))
    random.Random(0).shuffle(order)
    results = Executor(CodeEvalConfig(cache_dir=None, workers=2)).run([(jobs[i][0], jobs[i][2]) for i in order])
    disagree = [(jobs[i][0].id, jobs[i][1], plain[i], r.verdict) for i, r in zip(order, results)
                if (r.verdict == "pass") != plain[i]]
    assert not disagree, disagree
