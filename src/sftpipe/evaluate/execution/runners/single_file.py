"""The `multipl-e` profile: each sample runs as one plain program, judged by its exit status alone.

As MultiPL-E's evaluator does: answer + tests are assembled into one file (Haskell: `single_file_haskell`,
Python: `single_file_python`), run with `runghc Main.hs` / `python prog.py` under a 15 s wall limit, and
the outcome is OK (exit 0: pass), Exception (any other exit: runtime_error) or Timeout (timeout). There is
no compile stage of ours, so a program that does not compile is a runtime_error here, as it is an
Exception in MultiPL-E; a failed assertion is one too. Each sample is its own process in its own
directory in the same sandbox as the default runners, so nothing is refused before it runs (the default
Haskell runner refuses compile-time code execution because a batch shares one compiler process).
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
from abc import abstractmethod
from pathlib import Path

from sftpipe.config.schema import CodeEvalConfig, ExecLimits
from sftpipe.errors import SftpipeError
from sftpipe.evaluate.execution.extract import single_file_haskell
from sftpipe.evaluate.execution.runners.base import Job, Runner
from sftpipe.evaluate.execution.runners.haskell import find_ghc, ghc_paths, ghc_version
from sftpipe.evaluate.execution.runners.python import python_info, single_file_python
from sftpipe.evaluate.execution.sandbox import Completed, Limits, Sandbox
from sftpipe.evaluate.execution.verdicts import ExecResult, excerpt

MULTIPL_E_TIMEOUT_S = 15.0
PROFILE_VERSION = "multipl-e-1"


def exit_status_verdict(done: Completed, timeout_s: float) -> ExecResult:
    """MultiPL-E's three outcomes: exit 0 passes, a timeout is a timeout, anything else is an exception."""
    output = excerpt(done.stderr or done.stdout_tail)
    if done.timed_out or done.signal == signal.SIGXCPU:
        result = ExecResult("timeout", f"run exceeded {timeout_s:g}s", output)
    elif done.returncode == 0:
        result = ExecResult("pass", "exit 0")
    elif done.signal is not None:
        result = ExecResult("runtime_error", f"killed by {signal.Signals(done.signal).name}", output)
    else:
        result = ExecResult("runtime_error", f"exit code {done.returncode}", output)
    result.run_s = done.wall_s
    return result


class SingleFileRunner(Runner):
    """Writes one program per sample and runs it with a plain interpreter (subclasses say which)."""

    file_name: str
    ro_paths: tuple[Path, ...] = ()  # what the interpreter needs mounted in the sandbox
    memory_mb: int = 0  # 0: the run memory limit

    def __init__(self, limits: ExecLimits, sandbox: Sandbox, *, timeout_s: float = MULTIPL_E_TIMEOUT_S):
        self.limits = limits
        self.sandbox = sandbox
        self.timeout_s = timeout_s

    @abstractmethod
    def program(self, job: Job) -> str:
        """The whole program text for one sample."""

    @abstractmethod
    def argv(self, path: Path) -> list[str]:
        """The command that runs the program at `path` (run in its directory)."""

    def run_batch(self, jobs: list[Job]) -> list[ExecResult]:
        return [self.run(job) for job in jobs]

    def run(self, job: Job) -> ExecResult:
        limits = Limits(self.timeout_s, self.memory_mb or self.limits.run_memory_mb, self.limits.file_size_mb,
                        self.limits.output_kb * 1024)
        with tempfile.TemporaryDirectory(prefix="sftpipe-one-") as tmp:
            path = Path(tmp) / self.file_name
            path.write_text(self.program(job), encoding="utf-8")
            done = self.sandbox.run(self.argv(path), Path(tmp), limits, ro_paths=self.ro_paths)
        return exit_status_verdict(done, self.timeout_s)


class RunghcRunner(SingleFileRunner):
    """`runghc Main.hs` per sample. runghc compiles and interprets in one process, so it gets the larger of
    the compile and run memory limits."""

    file_name = "Main.hs"

    def __init__(self, ghc: str, limits: ExecLimits, sandbox: Sandbox, *, timeout_s: float = MULTIPL_E_TIMEOUT_S):
        super().__init__(limits, sandbox, timeout_s=timeout_s)
        ghc_path = find_ghc(ghc)
        sibling = Path(ghc_path).with_name("runghc")
        runghc = str(sibling) if sibling.is_file() else shutil.which("runghc")
        if runghc is None:
            raise SftpipeError(f"eval.code.profile: multipl-e runs Haskell with runghc, which is not next to "
                               f"{ghc_path} nor on PATH; install GHC's runghc (Debian/Ubuntu: apt-get install ghc)")
        self.runghc = runghc
        self.version = ghc_version(ghc_path)
        self.ro_paths = ghc_paths(ghc_path)
        self.memory_mb = max(limits.compile_memory_mb, limits.run_memory_mb)

    @classmethod
    def from_config(cls, cfg: CodeEvalConfig, sandbox: Sandbox) -> RunghcRunner:
        return cls(cfg.ghc, cfg.limits, sandbox)

    @property
    def toolchain(self) -> str:
        return f"runghc {self.version} {PROFILE_VERSION} {self.timeout_s:g}s"

    def program(self, job: Job) -> str:
        return single_file_haskell(answer=job.code, tests=job.problem.tests)

    def argv(self, path: Path) -> list[str]:
        return [self.runghc, path.name]


class PlainPythonRunner(SingleFileRunner):
    """`python prog.py` per sample."""

    file_name = "prog.py"

    def __init__(self, python: str | None, limits: ExecLimits, sandbox: Sandbox, *,
                 timeout_s: float = MULTIPL_E_TIMEOUT_S):
        super().__init__(limits, sandbox, timeout_s=timeout_s)
        self.python = python or sys.executable
        self.version, self.ro_paths = python_info(self.python)

    @classmethod
    def from_config(cls, cfg: CodeEvalConfig, sandbox: Sandbox) -> PlainPythonRunner:
        return cls(cfg.python, cfg.limits, sandbox)

    @property
    def toolchain(self) -> str:
        return f"python {self.version} {PROFILE_VERSION} {self.timeout_s:g}s"

    def program(self, job: Job) -> str:
        return single_file_python(job.problem, job.code)

    def argv(self, path: Path) -> list[str]:
        return [self.python, path.name]
