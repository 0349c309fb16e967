"""Judging code answers by running them: no model code, and nothing from the rest of `evaluate`.

`executor.Executor` takes (problem, solution source) pairs (`problem.CodeProblem`) and returns one verdict
each (`verdicts.ExecResult`), de-duplicated and cached; it runs them through one runner per language
(`runners/`: Haskell, Python) in the sandbox (`sandbox.py`). `extract.py` turns a generation into the
solution source and tidies Haskell into a module.
"""
