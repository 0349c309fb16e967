"""Evaluation: teacher-forced metrics (metrics.py), generation and its figures (generation.py, genmetrics.py),
answers judged by running them (execution/: sandbox, one runner per language, verdicts; no model code) and
pass@k over the verdicts (passk.py), and the stage with its reports (run.py, suite.py, result.py,
report_html.py, in_training.py)."""
