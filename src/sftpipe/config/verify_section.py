"""Config section `data.verify`: what prepare does with code records whose source sets `verify: tests`.

Verification runs each record's own solution against its own tests with `eval.code` (same runners, limits,
sandbox and verdict cache as `eval`). The code-quality figures are optional; each threshold set here is a
filter and turns its figure on.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sftpipe.config.base import Section


class VerifyConfig(Section):
    """Execution-verified training data (used by sources with `verify: tests`)."""

    untested: Literal["keep", "drop"] = Field(
        "keep", description="Records of a `verify: tests` source that carry no tests: keep them (counted as "
        "untested in the manifest and data card) or drop them (rejected as verify_no_tests).")
    quality: bool = Field(
        False, description="Measure code-quality figures of every record that passed its tests: solution lines, "
        "compile warnings (GHC -Wall / Python's compiler), hlint suggestions per 100 lines (Haskell, Debian "
        "package hlint), ruff findings (Python, PyPI package ruff). Kept per record in `meta.quality` and "
        "summarised in DATA_CARD.md. A missing tool is named and its figure skipped.")
    max_solution_lines: int | None = Field(
        None, gt=0, description="Reject passing records whose solution has more non-blank lines "
        "(quality_solution_lines); turns the figure on.")
    max_compile_warnings: int | None = Field(
        None, ge=0, description="Reject passing records with more compile warnings (quality_compile_warnings); "
        "turns the figure on.")
    max_hlint_per_100_lines: float | None = Field(
        None, ge=0, description="Reject passing Haskell records with more hlint suggestions per 100 solution "
        "lines (quality_hlint); needs hlint (apt-get install hlint).")
    max_ruff_findings: int | None = Field(
        None, ge=0, description="Reject passing Python records with more ruff findings (ruff's default rules; "
        "quality_ruff); needs ruff (pip install ruff).")
