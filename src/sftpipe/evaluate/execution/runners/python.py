"""Run Python answers against their tests: one fresh isolated interpreter (`python -I`) per sample.

The runner below is passed with `-c`; the answer, the tests and a per-run nonce arrive on stdin, so the
sample's directory is empty. The runner compiles the answer (SyntaxError: compile_error), executes it and
then the tests in one namespace (AssertionError: wrong_answer; any other exception, including SystemExit:
runtime_error) and prints `SFTPIPE-RESULT <nonce> <verdict>` through a copy of stdout taken before any
answer code ran. An answer that exits early (`os._exit(0)`) never prints that line and cannot pass. It
is not a defence against code that deliberately searches the runner's frames for the nonce.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

from sftpipe.config.schema import CodeEvalConfig, ExecLimits
from sftpipe.errors import SftpipeError
from sftpipe.evaluate.execution.problem import CodeProblem
from sftpipe.evaluate.execution.runners.base import Job, Runner
from sftpipe.evaluate.execution.sandbox import Limits, Sandbox
from sftpipe.evaluate.execution.verdicts import ExecResult, classify_run

HARNESS_VERSION = "py-1"
RUNNER = r"""
import json, os, sys, traceback
def _sftpipe_run():
    payload = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    sys.stdin = open(os.devnull)
    out = os.fdopen(os.dup(1), "w")
    nonce = payload["nonce"]
    def report(verdict, detail=""):
        if detail:
            sys.stderr.write(detail[-6000:])
            sys.stderr.flush()
        try:
            sys.stdout.flush()
        except Exception:
            pass
        out.write("\nSFTPIPE-RESULT " + nonce + " " + verdict + "\n")
        out.flush()
    try:
        solution = compile(payload["solution"], "solution.py", "exec")
    except (SyntaxError, ValueError) as exc:
        return report("compile_error", "".join(traceback.format_exception_only(type(exc), exc)))
    tests = compile(payload["tests"], "tests.py", "exec")
    namespace = {"__name__": "__sftpipe_solution__", "__builtins__": __builtins__}
    try:
        exec(solution, namespace)
        exec(tests, namespace)
        if payload["call"]:
            namespace["check"](namespace[payload["call"]])
    except AssertionError:
        return report("wrong_answer", traceback.format_exc())
    except BaseException:
        return report("runtime_error", traceback.format_exc())
    report("pass")
_sftpipe_run()
"""


@lru_cache(maxsize=None)
def python_info(python: str) -> tuple[str, tuple[Path, ...]]:
    """The interpreter's version and the prefixes it needs mounted (venv and base) to start."""
    probe = "import os, sys; print(sys.version.split()[0]); print(os.path.realpath(sys.prefix)); " \
            "print(os.path.realpath(sys.base_prefix))"
    try:
        out = subprocess.run([python, "-I", "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    except OSError:
        out = None
    if out is None or out.returncode != 0:
        raise SftpipeError(f"eval.code.python: cannot run {python!r}; set it to a Python 3 interpreter")
    version, *prefixes = out.stdout.split("\n")[:3]
    return version.strip(), tuple(sorted({Path(p.strip()) for p in prefixes if p.strip()}))


def check_call(problem: CodeProblem) -> str | None:
    """HumanEval-style tests define `check(candidate)` and leave the call to the evaluator: call it on the
    entry point unless the tests call `check`/`test_check` themselves at top level."""
    defines = re.search(r"^def\s+check\s*\(", problem.tests, re.M)
    calls = re.search(r"^(?:test_)?check\s*\(", problem.tests, re.M)
    return problem.entry_point if defines and not calls and problem.entry_point else None


def single_file_python(problem: CodeProblem, code: str) -> str:
    """answer + tests as one program for plain `python prog.py` (MultiPL-E's and HumanEval's), with the
    `check(entry_point)` call appended when the tests leave it to the evaluator."""
    call = check_call(problem)
    return code + "\n\n" + problem.tests + (f"\ncheck({call})\n" if call else "")


class PythonRunner(Runner):
    """Runs Python samples, one sandboxed interpreter each (call `run` from several threads in parallel)."""

    def __init__(self, python: str | None, limits: ExecLimits, sandbox: Sandbox):
        self.python = python or sys.executable
        self.version, self.prefixes = python_info(self.python)
        self.limits = limits
        self.sandbox = sandbox

    @classmethod
    def from_config(cls, cfg: CodeEvalConfig, sandbox: Sandbox) -> PythonRunner:
        return cls(cfg.python, cfg.limits, sandbox)

    @property
    def toolchain(self) -> str:
        return f"python {self.version} {HARNESS_VERSION}"

    def run_batch(self, jobs: list[Job]) -> list[ExecResult]:
        return [self.run(job.problem, job.code) for job in jobs]

    def run(self, problem: CodeProblem, code: str) -> ExecResult:
        nonce = secrets.token_hex(16)
        payload = {"nonce": nonce, "solution": code, "tests": problem.tests, "call": check_call(problem)}
        limits = Limits(self.limits.run_timeout_s, self.limits.run_memory_mb, self.limits.file_size_mb,
                        self.limits.output_kb * 1024)
        with tempfile.TemporaryDirectory(prefix="sftpipe-py-") as tmp:
            done = self.sandbox.run([self.python, "-I", "-c", RUNNER], Path(tmp), limits,
                                    stdin=json.dumps(payload).encode(), ro_paths=self.prefixes)
        result = classify_run(done, nonce, judged=True, timeout_s=self.limits.run_timeout_s)
        result.run_s = done.wall_s
        return result
