"""The one interface the Executor drives every language through.

A runner builds and runs samples of one language in the sandbox and classifies each into a verdict. The
Executor asks it for its `toolchain` (part of the verdict cache key), cuts the samples into batches of at
most `max_batch` and calls `run_batch` on each, from several threads at once. A language whose toolchain is
missing is refused when its runner is made (`from_config` raises SftpipeError naming how to install it).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sftpipe.config.schema import CodeEvalConfig
    from sftpipe.evaluate.execution.problem import CodeProblem
    from sftpipe.evaluate.execution.sandbox import Sandbox
    from sftpipe.evaluate.execution.verdicts import ExecResult


@dataclass(frozen=True)
class Job:
    """One sample to judge: an answer's source for a problem."""

    problem: CodeProblem
    code: str


class Runner(ABC):
    """Builds and runs samples of one language (`run_batch` is called from several threads in parallel)."""

    max_batch: int = 1  # samples per `run_batch` call; 1: each sample on its own

    @classmethod
    @abstractmethod
    def from_config(cls, cfg: CodeEvalConfig, sandbox: Sandbox) -> Runner:
        """The runner `cfg` asks for.

        Raises:
            SftpipeError: the toolchain is missing or broken (the message says how to install or set it).
        """

    @property
    @abstractmethod
    def toolchain(self) -> str:
        """What a verdict depends on besides the code, tests and limits (versions, flags, harness version)."""

    @abstractmethod
    def run_batch(self, jobs: list[Job]) -> list[ExecResult]:
        """One result per job, in order."""
