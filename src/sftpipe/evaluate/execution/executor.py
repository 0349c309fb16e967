"""Judge code answers by running them: de-duplication, a verdict cache, parallel workers, per-language runners
(`runners/`, all behind `runners.base.Runner`).

`Executor.run` takes (problem, solution source) pairs and returns one `ExecResult` each, in order.
Identical samples (same toolchain, limits, tests and normalised code) are executed once per run and
looked up in an SQLite cache across runs. Timeouts are not cached: they depend on the machine's load.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from sftpipe.config.schema import CodeEvalConfig
from sftpipe.errors import SftpipeError
from sftpipe.evaluate.execution.extract import normalise_code
from sftpipe.evaluate.execution.problem import CodeProblem
from sftpipe.evaluate.execution.runners import RUNNERS, Job, Runner
from sftpipe.evaluate.execution.sandbox import Sandbox
from sftpipe.evaluate.execution.verdicts import ExecResult

CACHE_FILE = "verdicts.sqlite"


class VerdictCache:
    """key -> ExecResult, in SQLite (safe for several processes and threads)."""

    def __init__(self, directory: str):
        if directory == "auto":
            directory = os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "sftpipe", "exec")
        self.path = Path(directory).expanduser() / CACHE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, result TEXT NOT NULL)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def get(self, key: str) -> ExecResult | None:
        with self.lock, self._connect() as db:
            row = db.execute("SELECT result FROM verdicts WHERE key = ?", (key,)).fetchone()
        return ExecResult(**json.loads(row[0])) if row else None

    def put(self, key: str, result: ExecResult) -> None:
        with self.lock, self._connect() as db:
            db.execute("INSERT OR REPLACE INTO verdicts VALUES (?, ?)", (key, json.dumps(result.as_dict())))


def plan_batches(n: int, workers: int, max_batch: int) -> list[range]:
    """Split n samples into equal batches of at most `max_batch`, in a multiple of `workers` batches so no
    worker idles in the last round."""
    if n == 0:
        return []
    count = math.ceil(n / max_batch)
    count = min(n, math.ceil(count / workers) * workers)
    size = math.ceil(n / count)
    return [range(start, min(start + size, n)) for start in range(0, n, size)]


class Executor:
    """Runs answers for problems of any supported language under `cfg` (limits, sandbox, workers, cache)."""

    def __init__(self, cfg: CodeEvalConfig):
        self.cfg = cfg
        self.sandbox = Sandbox(cfg.sandbox)
        self.workers = cfg.workers or os.cpu_count() or 1
        self.cache = VerdictCache(cfg.cache_dir) if cfg.cache_dir else None
        self._runners: dict[str, Runner] = {}

    def runner(self, language: str) -> Runner:
        """The runner for `language` (SftpipeError naming the missing toolchain and how to install it)."""
        if language not in self._runners:
            runners = RUNNERS[self.cfg.profile]
            runner_class = runners.get(language)
            if runner_class is None:
                raise SftpipeError(f"no executor for language {language!r}; supported: {', '.join(runners)}")
            self._runners[language] = runner_class.from_config(self.cfg, self.sandbox)
        return self._runners[language]

    def missing_toolchain(self, language: str) -> str | None:
        try:
            self.runner(language)
        except SftpipeError as exc:
            return str(exc)
        return None

    def key(self, problem: CodeProblem, code: str) -> str:
        # The profile is in the key on its own too, so two profiles never share a verdict whatever their
        # runners' toolchain strings say.
        payload = [self.cfg.profile, self.runner(problem.language).toolchain, self.cfg.limits.model_dump(), problem.language,
                   problem.style, problem.tests, problem.entry_point, normalise_code(code)]
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()

    def run(self, jobs: list[tuple[CodeProblem, str]]) -> list[ExecResult]:
        """One result per (problem, code), in order."""
        keys = [self.key(problem, code) for problem, code in jobs]
        done: dict[str, ExecResult] = {}
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key in first or key in done:
                continue
            cached = self.cache.get(key) if self.cache else None
            if cached is not None:
                done[key] = replace(cached, cached=True)
            else:
                first[key] = i
        todo: dict[str, list[tuple[str, int]]] = {}  # language -> (key, index) of the samples to run
        for key, i in first.items():
            todo.setdefault(jobs[i][0].language, []).append((key, i))
        runners = {language: self.runner(language) for language in todo}
        # The largest batches are the longest tasks: submitted first, they do not end up alone in the last round.
        languages = sorted(todo, key=lambda language: -runners[language].max_batch)
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            futures = []
            for language in languages:
                runner, pending = runners[language], todo[language]
                for batch in plan_batches(len(pending), self.workers, runner.max_batch):
                    members = [pending[j] for j in batch]
                    batch_jobs = [Job(*jobs[i]) for _, i in members]
                    futures.append(([key for key, _ in members], pool.submit(runner.run_batch, batch_jobs)))
            for batch_keys, future in futures:
                for key, result in zip(batch_keys, future.result()):
                    done[key] = result
                    if self.cache is not None and result.verdict != "timeout":
                        self.cache.put(key, result)
        out = []
        seen: set[str] = set()
        for key in keys:
            result = done[key]
            # Later copies of a sample share the first one's execution: mark them as not run again.
            out.append(result if key not in seen else replace(result, cached=True))
            seen.add(key)
        return out
