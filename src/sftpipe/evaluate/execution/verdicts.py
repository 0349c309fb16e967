"""The five verdicts of execution and how a finished harness run is classified into one.

pass          exit 0 AND the harness's own summary line (with this run's nonce) reports no failed check
wrong_answer  the tests ran and at least one check was false (or an assertion failed)
compile_error the answer does not build with the tests (syntax, types, missing names, refused pragmas)
runtime_error an exception or crash while running the checks, a memory or output limit, or an exit
              before the harness finished (e.g. the answer calls exitSuccess)
timeout       the compile or run wall-clock (or CPU) limit was exceeded
"""

from __future__ import annotations

import re
import signal
from dataclasses import asdict, dataclass

from sftpipe.evaluate.execution.sandbox import Completed

VERDICTS = ("pass", "wrong_answer", "compile_error", "runtime_error", "timeout")
EXCERPT_CHARS = 1500
MEMORY_MARKERS = ("heap exhausted", "heap overflow", "out of memory", "memoryerror", "cannot allocate memory",
                  "resource limit for virtual memory")


@dataclass
class ExecResult:
    """The outcome of one sample. `stage` is where it ended: compile or run."""

    verdict: str
    detail: str
    excerpt: str = ""
    stage: str = "run"
    compile_s: float = 0.0
    run_s: float = 0.0
    cached: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """The first `limit` characters of an error text (errors come first), marked when cut."""
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + f"\n… [{len(text) - limit} more characters]"


def result_line(done: Completed, nonce: str) -> list[str] | None:
    """The fields after `SFTPIPE-RESULT <nonce>` on the harness's summary line, if it was printed."""
    marker = f"SFTPIPE-RESULT {nonce} "
    for text in (done.stdout_tail, done.stdout):
        for line in reversed(text.splitlines()):
            if line.startswith(marker):
                return line[len(marker):].split()
    return None


def classify_run(done: Completed, nonce: str, judged: bool, timeout_s: float) -> ExecResult:
    """Classify a harness run. `judged`: the harness evaluates named checks and reports counts (else the
    tests' own main ran, and only exit status and output tell a failed assertion from a crash)."""
    output = _failure_output(done)
    if done.timed_out or done.signal == signal.SIGXCPU:
        return ExecResult("timeout", f"run exceeded {timeout_s:g}s", output)
    fields = result_line(done, nonce)
    if fields is not None:
        if fields and fields[0] in VERDICTS:  # the Python runner reports a verdict name
            verdict = fields[0]
        else:
            total, failed, errored = (int(x) for x in fields[:3])
            if errored:
                return ExecResult("runtime_error", f"{errored} of {total} checks raised an exception", output)
            if failed:
                return ExecResult("wrong_answer", f"{failed} of {total} checks failed", output)
            verdict = "pass"
        if verdict == "pass" and done.returncode != 0:
            return ExecResult("runtime_error", f"exit code {done.returncode} after the tests passed", output)
        if verdict == "pass":
            return ExecResult("pass", "tests passed" if fields[0] in ("pass", "-1") else f"{fields[0]} checks passed")
        return ExecResult(verdict, _verdict_detail(verdict, done), output, stage="compile" if verdict ==
                          "compile_error" else "run")
    lowered = (done.stderr + done.stdout_tail).lower()
    if any(marker in lowered for marker in MEMORY_MARKERS) or done.returncode == 251:
        return ExecResult("runtime_error", "memory limit exceeded", output)
    if done.signal == signal.SIGXFSZ or done.output_truncated:
        return ExecResult("runtime_error", "output or file size limit exceeded", output)
    if done.returncode == 0:
        return ExecResult("runtime_error", "exited before the tests finished (exit 0 without the harness's "
                          "summary line)", output)
    if not judged and (re.search(r"^FAIL\b", done.stdout, re.M) or "assertion failed" in lowered):
        return ExecResult("wrong_answer", "an assertion of the tests failed", output)
    if done.signal is not None:
        return ExecResult("runtime_error", f"killed by {signal.Signals(done.signal).name}", output)
    return ExecResult("runtime_error", f"exit code {done.returncode}", output)


def _failure_output(done: Completed) -> str:
    """FAIL/ERROR lines of the harness first, then stderr: what a reader needs to see why it failed."""
    marks = [ln for ln in done.stdout.splitlines() if ln.startswith(("FAIL", "ERROR"))]
    parts = ["\n".join(marks)] if marks else []
    if done.stderr.strip():
        parts.append(done.stderr.strip())
    return excerpt("\n".join(parts))


def _verdict_detail(verdict: str, done: Completed) -> str:
    lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
    last = lines[-1].strip() if lines else ""
    return {"compile_error": "does not compile", "wrong_answer": "an assertion failed",
            "runtime_error": "raised an exception"}.get(verdict, verdict) + (f": {last[:200]}" if last else "")
