"""From generation text to a buildable program: fences, module headers, main, imports, pragmas, MultiPL-E."""

from sftpipe.evaluate.execution.extract import (
    extract_code,
    forbidden_haskell,
    normalise_code,
    program_for,
    split_haskell,
)
from sftpipe.evaluate.execution.problem import CodeProblem
from sftpipe.evaluate.execution.runners.haskell import harness_module, haskell_string, multiple_checks


def test_extract_prefers_blocks_tagged_with_the_language():
    text = "Here:\n```python\nprint(1)\n```\nand\n```haskell\nf = 1\n```\nalso\n```hs\ng = 2\n```\nbye"
    assert extract_code(text, "haskell") == "f = 1\ng = 2\n"
    assert extract_code(text, "python") == "print(1)\n"


def test_extract_untagged_unclosed_and_unfenced():
    assert extract_code("text\n```\nx = 1\n```", "haskell") == "x = 1\n"
    assert extract_code("```haskell\nf :: Int\nf = 3\n", "haskell") == "f :: Int\nf = 3\n"  # hit max tokens
    assert extract_code("f = 3", "haskell") == "f = 3\n"
    assert extract_code("```rust\nfn main() {}\n```", "haskell") == "fn main() {}\n"  # only block: tried anyway


def test_split_haskell_drops_module_header_and_main_and_hoists_imports():
    code = """{-# LANGUAGE LambdaCase #-}
module Solution
  ( sumEvens
  , helper
  ) where

sumEvens :: [Int] -> Int
sumEvens xs = sum (filter even xs)
  where
    unused = 1

import Data.List (sort)

main :: IO ()
main = do
  print (sumEvens [1, 2])

  print 3
helper :: Int
helper = 2
"""
    source = split_haskell(code)
    assert source.pragmas == ["{-# LANGUAGE LambdaCase #-}\n"]
    assert source.imports == ["import Data.List (sort)"]
    assert "module" not in source.body and "main" not in source.body and "print" not in source.body
    assert "sumEvens xs = sum (filter even xs)\n  where\n    unused = 1" in source.body
    assert "helper = 2" in source.body
    module = source.module("Solution")
    assert module.index("LambdaCase") < module.index("module Solution where") < module.index("import Data.List")
    assert module.index("import Data.List") < module.index("sumEvens ::")


def test_split_haskell_keeps_main_when_asked_and_multiline_imports():
    source = split_haskell("import Data.Map\n  ( Map\n  , fromList )\nmain = pure ()\n", drop_main=False)
    assert source.imports == ["import Data.Map\n  ( Map\n  , fromList )"]
    assert source.body.strip() == "main = pure ()"


def test_forbidden_pragmas_are_refused_and_harmless_ones_allowed():
    assert forbidden_haskell(split_haskell("{-# LANGUAGE TemplateHaskell #-}\nf = 1\n"))
    assert forbidden_haskell(split_haskell("{-# LANGUAGE BangPatterns, CPP #-}\nf = 1\n"))
    assert forbidden_haskell(split_haskell("{-# OPTIONS_GHC -F -pgmF /bin/sh #-}\nf = 1\n"))
    assert forbidden_haskell(split_haskell("f = 1\n{-# ANN f \"x\" #-}\n"))
    allowed = "{-# LANGUAGE BangPatterns, LambdaCase #-}\n{-# INLINE f #-}\nf = 1\n"
    assert forbidden_haskell(split_haskell(allowed)) == []


def test_normalise_code_ignores_line_end_whitespace_only():
    assert normalise_code("f = 1   \r\n\n") == normalise_code("\nf = 1")
    assert normalise_code("f = 1") != normalise_code("f  = 1")


def multiple_problem(language, prompt, tests, stops=()):
    from sftpipe.evaluate.problems import multiple_entry_point

    return CodeProblem("HumanEval_0", language, tests, "multipl-e", multiple_entry_point(language, prompt, tests),
                       prompt, tuple(stops))


HS_PROMPT = "-- | Add one.\naddOne :: Int -> Int\naddOne x ="
HS_TESTS = ("\nmain :: IO ()\nmain = do\n  let candidate = addOne\n"
            "  if candidate 1 == 2 then pure () else error \"assertion failed\"\n"
            "  if candidate (-1) == 0 then pure () else error \"assertion failed\"\n  pure ()\n")


def test_multiple_haskell_completion_continues_the_prompt_or_stands_alone():
    problem = multiple_problem("haskell", HS_PROMPT, HS_TESTS, ["\n\n"])
    assert problem.entry_point == "addOne"
    assert program_for(problem, " x + 1\n\nmain = print 1") == HS_PROMPT + " x + 1"  # cut at the stop token
    full = "```haskell\naddOne :: Int -> Int\naddOne = (+ 1)\n```"
    assert program_for(problem, full) == "addOne :: Int -> Int\naddOne = (+ 1)\n"


def test_multiple_python_full_function_keeps_prompt_imports():
    prompt = "from typing import List\n\ndef total(xs: List[int]) -> int:\n    \"\"\"Sum.\"\"\"\n"
    tests = ("def check(candidate):\n    assert candidate([1]) == 1\n\n"
             "def test_check():\n    check(total)\n\ntest_check()\n")
    problem = multiple_problem("python", prompt, tests)
    assert problem.entry_point == "total"
    code = program_for(problem, "```python\ndef total(xs):\n    return sum(xs)\n```")
    assert code.startswith("from typing import List\n") and "return sum(xs)" in code
    assert program_for(problem, "    return sum(xs)\n") == prompt + "    return sum(xs)\n"


def test_multiple_haskell_tests_become_named_checks():
    checks = multiple_checks(HS_TESTS)
    assert checks is not None
    assert '("candidate 1 == 2", candidate 1 == 2)' in checks and "where candidate = addOne" in checks
    assert multiple_checks("main :: IO ()\nmain = do\n  print 1\n") is None  # another shape: run its main


def test_harness_wraps_shipped_checks_and_renames_a_foreign_main():
    shipped = CodeProblem("p", "haskell", "module Main where\n\nimport Solution\n\nchecks :: [(String, Bool)]\n"
                          "checks = [(\"a\", f == 1)]\n\nmain :: IO ()\nmain = print 1\n")
    text, judged = harness_module(shipped, "S0_1", split_haskell("f = 1\n"))
    assert judged and "import S0_1.Solution" in text and "sftpipeRun" in text and "main = print" not in text
    custom = CodeProblem("q", "haskell", "module Main where\nimport Solution\nmain :: IO ()\nmain = print f\n")
    text, judged = harness_module(custom, "S0_2", split_haskell("f = 1\n"))
    assert not judged and "sftpipeTestsMain = print f" in text and "sftpipeTestsMain :: IO ()" in text


def test_haskell_string_escapes():
    assert haskell_string('say "hi"\\') == '"say \\"hi\\"\\\\"'
    assert haskell_string("é\n") == '"\\233\\&\\10\\&"'
