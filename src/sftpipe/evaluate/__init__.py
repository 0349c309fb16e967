"""Evaluation: teacher-forced metrics (metrics.py), generation and its figures (generation.py, genmetrics.py),
answers judged by running them (extract.py, sandbox.py, haskell_exec.py, python_exec.py, execute.py,
verdicts.py, passk.py), and the stage with its reports (run.py, suite.py, report_html.py, in_training.py)."""
