"""Code-quality figures of verified solutions: length, compile warnings, hlint (Haskell), ruff (Python).

Each figure is measured on a whole chunk's solutions at once (one tool call per chunk, not per record) and
only on records that passed their tests. A tool that is not installed is named once with the package that
provides it, and its figure is skipped, never replaced by a made-up value; a threshold on a figure whose
tool is missing is an error before any work (a filter that silently does nothing would keep what the user
asked to drop). Figures are cached by (tool versions, figures, normalised code) in `quality.sqlite` beside
the verdict cache, so a second prepare of the same data measures nothing.

No figure runs the solution: hlint and ruff parse it, Python's `compile` compiles it, and GHC type-checks it
with `-fno-code` in the execution sandbox (compile-time code execution, e.g. Template Haskell, is refused
as the Haskell runner refuses it).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

from sftpipe.config.schema import CodeEvalConfig
from sftpipe.config.verify_section import VerifyConfig
from sftpipe.errors import SftpipeError
from sftpipe.evaluate.execution.extract import forbidden_haskell, normalise_code, split_haskell
from sftpipe.evaluate.execution.runners.haskell import find_ghc, ghc_paths, ghc_version
from sftpipe.evaluate.execution.sandbox import Limits, Sandbox

SOLUTION_LINES = "solution_lines"
COMPILE_WARNINGS = "compile_warnings"
HLINT = "hlint_per_100_lines"
RUFF = "ruff_findings"
FIGURES = (SOLUTION_LINES, COMPILE_WARNINGS, HLINT, RUFF)
# figure -> (rejection reason, data.verify field of its threshold)
THRESHOLDS = {SOLUTION_LINES: ("quality_solution_lines", "max_solution_lines"),
              COMPILE_WARNINGS: ("quality_compile_warnings", "max_compile_warnings"),
              HLINT: ("quality_hlint", "max_hlint_per_100_lines"),
              RUFF: ("quality_ruff", "max_ruff_findings")}
LANGUAGE_FIGURES = {"haskell": (SOLUTION_LINES, COMPILE_WARNINGS, HLINT), "python": (SOLUTION_LINES, COMPILE_WARNINGS, RUFF)}
TOOL_TIMEOUT_S = 300
CACHE_FILE = "quality.sqlite"
QUALITY_VERSION = "quality-1"  # bump when a figure's definition changes: cached figures are then not reused
GHC_MESSAGE = re.compile(r"^(?:\S*/)?Q(\d+)\.hs:[\d:(),-]+: (warning|error):", re.M)


def wanted_figures(verify: VerifyConfig) -> tuple[str, ...]:
    """The figures to measure: all with `quality: true`, else those that have a threshold."""
    return tuple(f for f in FIGURES if verify.quality or threshold(verify, f) is not None)


def threshold(verify: VerifyConfig, figure: str) -> float | None:
    value = getattr(verify, THRESHOLDS[figure][1])
    return None if value is None else float(value)


def ruff_path() -> str | None:
    """ruff on PATH, or next to this interpreter (a venv's bin/ that is not on PATH)."""
    sibling = Path(sys.executable).with_name("ruff")
    return shutil.which("ruff") or (str(sibling) if sibling.is_file() else None)


def missing_tools(figures: tuple[str, ...], languages: set[str], ghc: str) -> dict[str, str]:
    """figure -> why it cannot be measured here (naming the package to install), for the languages used."""
    missing = {}
    if HLINT in figures and "haskell" in languages and shutil.which("hlint") is None:
        missing[HLINT] = "hlint is not installed (Debian/Ubuntu: apt-get install hlint)"
    if RUFF in figures and "python" in languages and ruff_path() is None:
        missing[RUFF] = "ruff is not installed (pip install ruff, or pip install 'sftpipe[quality]')"
    if COMPILE_WARNINGS in figures and "haskell" in languages and shutil.which(ghc) is None:
        missing[COMPILE_WARNINGS + " (haskell)"] = "ghc is not installed (Debian/Ubuntu: apt-get install ghc)"
    return missing


def tool_versions(figures: tuple[str, ...], languages: set[str]) -> dict[str, str]:
    """Versions of the linters the wanted figures use (those installed), for the manifest."""
    versions = {}
    if HLINT in figures and "haskell" in languages and shutil.which("hlint"):
        versions["hlint"] = _version(["hlint", "--numeric-version"])
    ruff = ruff_path()
    if RUFF in figures and "python" in languages and ruff:
        versions["ruff"] = _version([ruff, "--version"]).removeprefix("ruff ")
    return versions


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() or "unknown"


def check_thresholds(verify: VerifyConfig, missing: dict[str, str]) -> None:
    """Raises SftpipeError when a threshold is set on a figure whose tool is missing."""
    problems = [f"data.verify.{THRESHOLDS[figure.split(' ')[0]][1]} is set but {why}"
                for figure, why in missing.items() if threshold(verify, figure.split(" ")[0]) is not None]
    if problems:
        raise SftpipeError("; ".join(problems) + "; install it or remove the threshold")


class FigureCache:
    """key -> a solution's figures, in SQLite next to the verdict cache (safe for several processes)."""

    def __init__(self, directory: Path):
        self.path = directory / CACHE_FILE
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS figures (key TEXT PRIMARY KEY, figures TEXT NOT NULL)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def get(self, keys: list[str]) -> dict[str, dict[str, float]]:
        with self._connect() as db:
            rows = db.execute(f"SELECT key, figures FROM figures WHERE key IN ({','.join('?' * len(keys))})",
                              keys).fetchall()
        return {key: json.loads(figures) for key, figures in rows}

    def put(self, items: dict[str, dict[str, float]]) -> None:
        with self._connect() as db:
            db.executemany("INSERT OR REPLACE INTO figures VALUES (?, ?)",
                           [(key, json.dumps(figures)) for key, figures in items.items()])


class QualityMeter:
    """Measures the wanted figures of one language's solutions, a chunk at a time; with a cache directory,
    a solution measured before with the same tools is not measured again."""

    def __init__(self, verify: VerifyConfig, code: CodeEvalConfig, sandbox: Sandbox, cache_dir: Path | None = None):
        self.figures = wanted_figures(verify)
        self.code = code
        self.sandbox = sandbox
        self.missing = missing_tools(self.figures, {"haskell", "python"}, code.ghc)
        self.cache = FigureCache(cache_dir) if cache_dir is not None else None
        self._versions: dict[str, dict[str, str]] = {}

    def applicable(self, language: str) -> list[str]:
        """The wanted figures of `language` whose tools are here."""
        return [f for f in LANGUAGE_FIGURES[language] if f in self.figures and f not in self.missing
                and f"{f} ({language})" not in self.missing]

    def measure(self, language: str, solutions: list[str]) -> list[dict[str, float]]:
        """Per solution, figure -> value for each wanted figure this language has and whose tool is here."""
        if self.cache is None or not solutions:
            return self._measure(language, solutions)
        keys = [self._key(language, code) for code in solutions]
        found = self.cache.get(sorted(set(keys)))
        todo = sorted({keys[i]: i for i in reversed(range(len(keys))) if keys[i] not in found}.values())
        fresh = dict(zip((keys[i] for i in todo), self._measure(language, [solutions[i] for i in todo])))
        # Only complete figures are kept: a figure missing for a record (a linter that crashed, a compiler
        # past its limit) is measured again next time rather than remembered as absent.
        wanted = set(self.applicable(language))
        self.cache.put({key: figures for key, figures in fresh.items() if set(figures) == wanted})
        return [dict(found.get(key) or fresh[key]) for key in keys]

    def _key(self, language: str, code: str) -> str:
        if language not in self._versions:
            versions = tool_versions(self.figures, {language})
            if COMPILE_WARNINGS in self.applicable(language):
                versions["compiler"] = (sys.version if language == "python"
                                        else ghc_version(find_ghc(self.code.ghc)))
            self._versions[language] = versions
        payload = [QUALITY_VERSION, language, self.applicable(language), self._versions[language],
                   normalise_code(code)]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def _measure(self, language: str, solutions: list[str]) -> list[dict[str, float]]:
        if not solutions:
            return []  # (a linter given no file would lint its working directory)
        out: list[dict[str, float]] = [{} for _ in solutions]
        lines = [len([ln for ln in s.splitlines() if ln.strip()]) for s in solutions]
        for figure in self.applicable(language):
            if figure == SOLUTION_LINES:
                values: list[float | None] = [float(n) for n in lines]
            elif figure == COMPILE_WARNINGS:
                values = (python_warnings(solutions) if language == "python"
                          else self.ghc_warnings(solutions))
            elif figure == HLINT:
                values = [None if hints is None else round(100.0 * hints / max(n, 1), 2)
                          for hints, n in zip(hlint_hints(solutions), lines)]
            else:
                values = ruff_findings(solutions)
            for record, value in zip(out, values):
                if value is not None:
                    record[figure] = value
        return out

    def ghc_warnings(self, solutions: list[str]) -> list[float | None]:
        """`ghc -fno-code -Wall` warnings of each solution as a module of its own, all in one sandboxed call.
        None for a solution that asks for compile-time code execution (not type-checked, as in the runner)."""
        ghc = find_ghc(self.code.ghc)
        limits = self.code.limits
        with tempfile.TemporaryDirectory(prefix="sftpipe-quality-") as tmp:
            names, values = [], [None] * len(solutions)
            for i, code in enumerate(solutions):
                source = split_haskell(code)
                if forbidden_haskell(source):
                    continue
                (Path(tmp) / f"Q{i}.hs").write_text(source.module(f"Q{i}"), encoding="utf-8")
                names.append(f"Q{i}.hs")
                values[i] = 0.0
            if not names:
                return values
            run_limits = Limits(limits.compile_timeout_s + 2.0 * len(names), limits.compile_memory_mb,
                                limits.file_size_mb, limits.output_kb * 1024 * 16)
            done = self.sandbox.run([ghc, "-fno-code", "-Wall", "-fkeep-going", "-v0", "-outputdir", tmp, *names],
                                    Path(tmp), run_limits, ro_paths=ghc_paths(ghc))
        if done.timed_out:
            return [None] * len(solutions)
        failed = set()
        for match in GHC_MESSAGE.finditer(done.stderr + "\n" + done.stdout):
            i = int(match.group(1))
            if match.group(2) == "error":
                failed.add(i)  # alone, without its tests, it does not type-check: no count to give
            elif values[i] is not None:
                values[i] += 1
        return [None if i in failed else v for i, v in enumerate(values)]


def python_warnings(solutions: list[str]) -> list[float | None]:
    """Warnings Python's compiler gives for each solution (invalid escapes, `is` with a literal, ...)."""
    values: list[float | None] = []
    for code in solutions:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                compile(code, "solution.py", "exec")
            except (SyntaxError, ValueError):
                values.append(None)
                continue
        values.append(float(len(caught)))
    return values


def _lint_json(solutions: list[str], suffix: str, argv: list[str]) -> list[dict] | None:
    """Run a linter once over all solutions, written as s<i><suffix> in a fresh directory, and parse its JSON
    report; None when it did not give one (it crashed or ran past TOOL_TIMEOUT_S): no figure, not a zero."""
    with tempfile.TemporaryDirectory(prefix="sftpipe-lint-") as tmp:
        for i, code in enumerate(solutions):
            (Path(tmp) / f"s{i}{suffix}").write_text(code, encoding="utf-8")
        try:
            done = subprocess.run([*argv, *(f"s{i}{suffix}" for i in range(len(solutions)))], cwd=tmp,
                                  capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False)
            report = json.loads(done.stdout)
        except (subprocess.TimeoutExpired, json.JSONDecodeError):
            return None
    return report if isinstance(report, list) else None


def hlint_hints(solutions: list[str]) -> list[int | None]:
    """hlint's suggestions (hints of every severity) per solution; None where hlint could not parse it."""
    report = _lint_json(solutions, ".hs", ["hlint", "--json", "--no-exit-code"])
    if report is None:
        return [None] * len(solutions)
    counts: list[int | None] = [0] * len(solutions)
    for hint in report:
        i = int(Path(hint["file"]).stem[1:])
        if str(hint.get("hint", "")).startswith("Parse error"):
            counts[i] = None
        elif counts[i] is not None:
            counts[i] += 1
    return counts


def ruff_findings(solutions: list[str]) -> list[float | None]:
    """ruff's findings per solution with its default rules, no user config (`--isolated`)."""
    ruff = ruff_path()
    assert ruff is not None  # missing_tools
    report = _lint_json(solutions, ".py", [ruff, "check", "--isolated", "--no-cache", "--exit-zero",
                                           "--output-format", "json"])
    if report is None:
        return [None] * len(solutions)
    counts: list[float | None] = [0.0] * len(solutions)
    for finding in report:
        i = int(Path(finding["filename"]).stem[1:])
        counts[i] = (counts[i] or 0.0) + 1
    return counts
