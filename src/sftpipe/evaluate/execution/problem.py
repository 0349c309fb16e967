"""The input of execution: a problem whose answers are judged by running its tests."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CodeProblem:
    """A problem whose answers are judged by running tests.

    style: `sftpipe` (the tests are a program/module built with the solution) or `multipl-e` (the
    solution continues `prompt_code` and the tests follow it).
    """

    id: str
    language: str
    tests: str
    style: str = "sftpipe"
    entry_point: str | None = None
    prompt_code: str = ""
    stop_tokens: tuple[str, ...] = ()
