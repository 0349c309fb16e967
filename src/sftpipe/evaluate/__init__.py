"""Evaluation: teacher-forced metrics on prepared splits (generation and code execution build on it)."""
