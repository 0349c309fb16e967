"""Build and run Haskell answers against their tests with GHC, many samples per compiler call.

Each sample is two modules, `<S>.Solution` (the answer) and `<S>.Harness` (the problem's tests with a
main of ours), where `<S>` is a per-batch random prefix plus the sample's index, so no answer can import
another's. One `ghc --make -fkeep-going` call builds all samples of a batch plus a dispatcher `Main`
(`prog <index>` runs that sample's harness): GHC's start-up (~0.7 s) and the link (~1 s) are paid once
per batch instead of once per sample, which is what makes ≥ 5 samples/s possible on 2 cores (see
benchmarks/exec/). A sample that fails to compile is judged from GHC's errors about its own files, or
from a build of its own: samples GHC did not blame are rebuilt without the culprits, and a failure that
names no sample (a header error that stops GHC early, a link error) is bisected, so no verdict carries
another sample's messages. Every sample then RUNS in its own process, in its own empty directory, under
its own limits: isolation is per sample at run time; at compile time the batch shares one compiler
process (Template Haskell, CPP, plugins and OPTIONS pragmas are refused, so no answer code runs then),
and a batch that exhausts its compile budget is rebuilt one sample at a time.

The harness reads a per-run random nonce from stdin before it evaluates anything and prints
`SFTPIPE-RESULT <nonce> <checks> <failed> <errored>` after the last check. A pass needs exit code 0 and
that line: an answer that calls `exitSuccess` or prints a summary of its own cannot pass.
"""

from __future__ import annotations

import itertools
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from sftpipe.config.schema import CodeEvalConfig, ExecLimits
from sftpipe.errors import SftpipeError
from sftpipe.evaluate.execution.extract import HaskellSource, forbidden_haskell, split_haskell
from sftpipe.evaluate.execution.problem import CodeProblem
from sftpipe.evaluate.execution.runners.base import Job, Runner
from sftpipe.evaluate.execution.sandbox import Completed, Limits, Sandbox
from sftpipe.evaluate.execution.verdicts import ExecResult, classify_run, excerpt

HARNESS_VERSION = "hs-1"
FIXED_FLAGS = ("-w", "-v0", "-fkeep-going")
RUNNER_IMPORTS = """import qualified Prelude as SftpipeP
import qualified Control.Exception as SftpipeExc
"""
CHECKS_RUNNER = """
sftpipeRun :: SftpipeP.IO ()
sftpipeRun = do
  sftpipeNonce <- SftpipeP.getLine
  sftpipeOutcomes <- SftpipeP.mapM sftpipeCheck checks
  let sftpipeCount k = SftpipeP.length (SftpipeP.filter (SftpipeP.== k) sftpipeOutcomes)
  SftpipeP.putStrLn ("SFTPIPE-RESULT " SftpipeP.++ sftpipeNonce SftpipeP.++ " "
    SftpipeP.++ SftpipeP.show (SftpipeP.length sftpipeOutcomes) SftpipeP.++ " "
    SftpipeP.++ SftpipeP.show (sftpipeCount (1 :: SftpipeP.Int)) SftpipeP.++ " "
    SftpipeP.++ SftpipeP.show (sftpipeCount 2))

sftpipeCheck :: (SftpipeP.String, SftpipeP.Bool) -> SftpipeP.IO SftpipeP.Int
sftpipeCheck (sftpipeName, sftpipeOk) = do
  sftpipeR <- SftpipeExc.try (SftpipeExc.evaluate sftpipeOk)
  case sftpipeR of
    SftpipeP.Right SftpipeP.True -> SftpipeP.return 0
    SftpipeP.Right SftpipeP.False -> SftpipeP.putStrLn ("FAIL: " SftpipeP.++ sftpipeName) SftpipeP.>> SftpipeP.return 1
    SftpipeP.Left sftpipeE -> do
      SftpipeP.putStrLn ("ERROR: " SftpipeP.++ sftpipeName SftpipeP.++ ": "
        SftpipeP.++ SftpipeP.show (sftpipeE :: SftpipeExc.SomeException))
      SftpipeP.return 2
"""
GENERIC_RUNNER = """
sftpipeRun :: SftpipeP.IO ()
sftpipeRun = do
  sftpipeNonce <- SftpipeP.getLine
  sftpipeTestsMain
  SftpipeP.putStrLn ("SFTPIPE-RESULT " SftpipeP.++ sftpipeNonce SftpipeP.++ " -1 0 0")
"""


def find_ghc(ghc: str) -> str:
    """The path of `ghc` (a name looked up on PATH, or a path), or SftpipeError naming how to install GHC.

    Looked up at every call, not cached: PATH may change within a process (and a cached answer by name would
    keep a compiler that is no longer there).
    """
    path = shutil.which(ghc)
    if path is None:
        raise SftpipeError(f"eval.code.ghc: {ghc!r} not found on PATH; install GHC (Debian/Ubuntu: "
                           "apt-get install ghc) or set eval.code.ghc to its path")
    return path


@lru_cache(maxsize=None)
def ghc_version(path: str) -> str:
    """`ghc --numeric-version` of the GHC at `path`."""
    out = subprocess.run([path, "--numeric-version"], capture_output=True, text=True, timeout=60, check=False)
    if out.returncode != 0:
        raise SftpipeError(f"eval.code.ghc: `{path} --numeric-version` failed: {out.stderr.strip()[:200]}")
    return out.stdout.strip()


@lru_cache(maxsize=None)
def ghc_links_dynamically(ghc: str) -> bool:
    """Whether this GHC ships shared libraries (`-dynamic` links in a fraction of a static link's time)."""
    out = subprocess.run([ghc, "--info"], capture_output=True, text=True, timeout=60, check=False)
    return '("GHC Dynamic","YES")' in out.stdout.replace(" ", "")


@lru_cache(maxsize=None)
def ghc_paths(ghc: str) -> tuple[Path, ...]:
    """Directories GHC reads outside /usr (Debian links its package database to /var/lib/ghc), for bwrap."""
    out = subprocess.run([ghc, "--print-libdir"], capture_output=True, text=True, timeout=60, check=False)
    libdir = Path(out.stdout.strip()) if out.returncode == 0 else None
    if libdir is None or not libdir.is_dir():
        return ()
    paths = {libdir.resolve(), (libdir / "package.conf.d").resolve()}
    return tuple(sorted(p for p in paths if p.exists() and not str(p).startswith("/usr/")))


def haskell_string(text: str) -> str:
    """A Haskell string literal for `text` (decimal escapes for anything outside printable ASCII)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.append(f"\\{ord(ch)}\\&")
    return '"' + "".join(out) + '"'


def multiple_checks(tests: str) -> str | None:
    """MultiPL-E Haskell tests (`if <cond> then pure () else error "assertion failed"` lines in `main`) as a
    `checks` list, so each assertion is judged on its own; None when the tests have another shape."""
    candidate, conditions, in_main = None, [], False
    for line in tests.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("--") or re.match(r"main\s*::", stripped):
            continue
        if re.match(r"main\s*=\s*do$", stripped):
            in_main = True
            continue
        if not in_main:
            return None
        if match := re.fullmatch(r"let\s+candidate\s*=\s*(.+)", stripped):
            candidate = match.group(1)
        elif match := re.fullmatch(r'if\s+(.+)\s+then\s+(pure|return)\s*\(\)\s+else\s+error\s+"[^"]*"', stripped):
            conditions.append(match.group(1))
        elif stripped not in ("pure ()", "return ()"):
            return None
    if not conditions:
        return None
    rows = "\n  , ".join(f"({haskell_string(c)}, {c})" for c in conditions)
    where = f"\n  where candidate = {candidate}" if candidate else ""
    return f"checks :: [(String, Bool)]\nchecks =\n  [ {rows}\n  ]{where}\n"


def harness_module(problem: CodeProblem, prefix: str, answer: HaskellSource) -> tuple[str, bool]:
    """The `<prefix>.Harness` module for `problem`, exporting `sftpipeRun`; and whether it judges named
    checks one by one (True) or runs the tests' own main (False).

    The tests see what they would see in the single-file program answer + tests (MultiPL-E's, and what
    a user compiles): the answer's LANGUAGE pragmas and imports are repeated in the harness. So a Prelude
    name the answer hides and redefines (`import Prelude hiding (maximum)`) is hidden here too, and a
    module the answer imports (`import qualified Data.Map as M`) is in scope for the tests.
    """
    solution_import = f"import {prefix}.Solution"
    if problem.style == "multipl-e":
        checks = multiple_checks(problem.tests)
        tests = split_haskell(checks or problem.tests, drop_main=checks is not None)
        tests.imports.insert(0, solution_import)
    else:
        # Named checks of exactly this type are judged one by one; tests of any other shape run their main.
        checks = re.search(r"^checks\s*::\s*\[\s*\(\s*String\s*,\s*Bool\s*\)\s*\]", problem.tests, re.M)
        tests = split_haskell(problem.tests, drop_main=checks is not None)
        tests.imports = [re.sub(r"^import\s+Solution\b", solution_import, i) for i in tests.imports]
    if checks:
        runner, judged = CHECKS_RUNNER, True
    else:
        tests.body = re.sub(r"^main\b", "sftpipeTestsMain", tests.body, flags=re.M)
        runner, judged = GENERIC_RUNNER, False
    pragmas = _unique([*answer.pragmas, *tests.pragmas])
    imports = _unique([*answer.imports, *tests.imports])
    # Any Prelude import turns the implicit one off (as in a single file): restore it unless one is there.
    implicit = [] if any(re.match(r"import\s+(qualified\s+)?Prelude\b", i) for i in imports) else ["import Prelude"]
    imports = [*implicit, *RUNNER_IMPORTS.strip().splitlines(), *imports]
    module = HaskellSource(pragmas, imports, tests.body + "\n" + runner)
    return module.module(f"{prefix}.Harness", " (sftpipeRun)"), judged


def _unique(lines: list[str]) -> list[str]:
    """`lines` without repeats (by text, ignoring surrounding whitespace), in order."""
    first: dict[str, str] = {}
    for line in lines:
        first.setdefault(line.strip(), line)
    return list(first.values())


class HaskellRunner(Runner):
    """Builds and runs batches of Haskell samples (call `run_batch` from several threads in parallel)."""

    def __init__(self, ghc: str, flags: list[str], limits: ExecLimits, sandbox: Sandbox, *, max_batch: int):
        self.ghc = find_ghc(ghc)
        self.version = ghc_version(self.ghc)
        self.flags = list(flags) + (["-dynamic"] if ghc_links_dynamically(self.ghc) else [])
        self.limits = limits
        self.sandbox = sandbox
        self.ro_paths = ghc_paths(self.ghc)
        self.max_batch = max_batch

    @classmethod
    def from_config(cls, cfg: CodeEvalConfig, sandbox: Sandbox) -> HaskellRunner:
        return cls(cfg.ghc, cfg.ghc_flags, cfg.limits, sandbox, max_batch=cfg.haskell_batch_size)

    @property
    def toolchain(self) -> str:
        return f"ghc {self.version} {' '.join(self.flags)} {HARNESS_VERSION}"

    def run_batch(self, jobs: list[Job]) -> list[ExecResult]:
        """Build all jobs with one compiler call (falling back to one call per job), then run each."""
        results: list[ExecResult | None] = [None] * len(jobs)
        with tempfile.TemporaryDirectory(prefix="sftpipe-hs-") as tmp:
            root = Path(tmp)
            prefix = "S" + secrets.token_hex(4)
            judged: dict[int, bool] = {}
            for i, job in enumerate(jobs):
                refused = self._write_sample(root, prefix, i, job, judged)
                if refused is not None:
                    results[i] = refused
            pending = [i for i in range(len(jobs)) if results[i] is None]
            exes, compile_s = self._build(root, prefix, pending, results)
            per_sample_compile = compile_s / max(len(pending), 1)
            for i in pending:
                if i in exes:
                    results[i] = self._run(root, exes[i], prefix, i, judged[i], per_sample_compile)
                else:
                    results[i].compile_s = per_sample_compile
        return [r for r in results if r is not None]

    def _write_sample(self, root: Path, prefix: str, i: int, job: Job, judged: dict[int, bool]
                      ) -> ExecResult | None:
        source = split_haskell(job.code)
        refused = forbidden_haskell(source)
        if refused:
            return ExecResult("compile_error", "refused: " + "; ".join(refused), stage="compile")
        name = f"{prefix}_{i}"
        folder = root / "src" / name
        folder.mkdir(parents=True)
        (folder / "Solution.hs").write_text(source.module(f"{name}.Solution"), encoding="utf-8")
        harness, judged[i] = harness_module(job.problem, name, source)
        (folder / "Harness.hs").write_text(harness, encoding="utf-8")
        return None

    def _build(self, root: Path, prefix: str, pending: list[int], results: list[ExecResult | None]
               ) -> tuple[dict[int, Path], float]:
        """Compile `pending` samples into dispatcher executables; record compile failures in `results`.

        Returns the executable of each sample that built, and the builds' wall time.
        """
        start = time.perf_counter()
        exes = self._build_isolated(root, prefix, pending, results, itertools.count())
        return exes, time.perf_counter() - start

    def _build_isolated(self, root: Path, prefix: str, indices: list[int], results: list[ExecResult | None],
                        builds: Iterator[int]) -> dict[int, Path]:
        """Build `indices` with one compiler call; a failure GHC does not pin on a sample is narrowed down.

        A sample is judged `compile_error` only from GHC's error blocks about its own files, or from a
        build of that sample alone: a header-level error (an unclosed import list, an unknown pragma) stops
        GHC before it compiles any module, and a link error names no source file, so the samples without an
        error block of their own are rebuilt without the culprits found, and halved (bisected) while the
        failure names no sample. Modules that compiled are not compiled again (same -outputdir).
        """
        if not indices:
            return {}
        exe = root / f"prog{next(builds)}"
        timeout = _batch_timeout(self.limits.compile_timeout_s, len(indices))
        done = self._ghc(root, prefix, indices, exe, timeout)
        if done.timed_out or done.returncode not in (0, 1):
            # The compiler itself died (time, memory): find the culprit by building one sample per call.
            return self._build_one_by_one(root, prefix, indices, results)
        if done.returncode == 0 and exe.is_file():
            return {i: exe for i in indices}
        built = {i for i in indices if (root / "build" / f"{prefix}_{i}" / "Harness.o").is_file()}
        errors = _errors_by_sample(done.stderr, prefix)
        own_errors = [i for i in indices if i not in built and i in errors]
        for i in own_errors:
            results[i] = ExecResult("compile_error", _first_error_line(errors[i]),
                                    excerpt(_strip_prefix(errors[i], prefix)), stage="compile")
        rest = [i for i in indices if i not in own_errors]
        if own_errors:
            return self._build_isolated(root, prefix, rest, results, builds)
        if len(indices) == 1:  # the failure is this sample's alone
            results[indices[0]] = _compile_failure(done, timeout, prefix)
            return {}
        half = len(indices) // 2
        return {**self._build_isolated(root, prefix, indices[:half], results, builds),
                **self._build_isolated(root, prefix, indices[half:], results, builds)}

    def _build_one_by_one(self, root: Path, prefix: str, pending: list[int], results: list[ExecResult | None]
                          ) -> dict[int, Path]:
        """Each sample with its own compiler call, limit and executable."""
        shutil.rmtree(root / "build", ignore_errors=True)
        exes = {}
        for i in pending:
            exe = root / f"single_{i}"
            done = self._ghc(root, prefix, [i], exe, self.limits.compile_timeout_s)
            if done.timed_out or done.returncode != 0 or not exe.is_file():
                results[i] = _compile_failure(done, self.limits.compile_timeout_s, prefix)
            else:
                exes[i] = exe
        return exes

    def _ghc(self, root: Path, prefix: str, indices: list[int], exe: Path, timeout: float) -> Completed:
        cases = "\n".join(f'    ["{i}"] -> {prefix}_{i}.Harness.sftpipeRun' for i in indices)
        imports = "\n".join(f"import qualified {prefix}_{i}.Harness" for i in indices)
        main = root / "src" / "Main.hs"
        main.write_text(f"module Main (main) where\n\nimport System.Environment (getArgs)\n{imports}\n\n"
                        f"main :: IO ()\nmain = do\n  args <- getArgs\n  case args of\n{cases}\n"
                        '    _ -> error "sftpipe: unknown sample"\n', encoding="utf-8")
        (root / "tmp").mkdir(exist_ok=True)
        argv = [self.ghc, "--make", *self.flags, *FIXED_FLAGS, "-i" + str(root / "src"),
                "-outputdir", str(root / "build"), "-o", str(exe), str(main)]
        limits = Limits(timeout, self.limits.compile_memory_mb, self.limits.file_size_mb, 256 * 1024)
        return self.sandbox.run(argv, root, limits, env={"TMPDIR": str(root / "tmp")}, ro_paths=self.ro_paths)

    def _run(self, root: Path, exe: Path, prefix: str, i: int, judged: bool, compile_s: float) -> ExecResult:
        workdir = root / "run" / str(i)
        workdir.mkdir(parents=True)
        nonce = secrets.token_hex(16)
        limits = Limits(self.limits.run_timeout_s, self.limits.run_memory_mb, self.limits.file_size_mb,
                        self.limits.output_kb * 1024)
        done = self.sandbox.run([str(exe), str(i)], workdir, limits, stdin=(nonce + "\n").encode(),
                                ro_paths=(exe, *self.ro_paths))
        result = classify_run(done, nonce, judged, self.limits.run_timeout_s)
        result.compile_s, result.run_s = compile_s, done.wall_s
        result.excerpt = _strip_prefix(result.excerpt, prefix)
        return result


def _batch_timeout(per_sample_s: float, n: int) -> float:
    """A batch gets the per-sample limit plus up to 2 s per sample (a normal -O0 build takes ~0.2 s)."""
    return per_sample_s + min(per_sample_s, 2.0) * n


ERROR_HEADER = re.compile(r"^(?:\S*/)?src/(S[0-9a-f]{8}_(\d+))/\w+\.hs:", re.M)


def _errors_by_sample(stderr: str, prefix: str) -> dict[int, str]:
    """GHC's error blocks grouped by the sample whose file they are about."""
    found: dict[int, list[str]] = {}
    current = None
    for line in stderr.splitlines():
        header = ERROR_HEADER.match(line)
        if header and header.group(1).startswith(prefix):
            current = int(header.group(2))
        elif line.startswith("-fkeep-going in use"):
            current = None  # GHC's list of modules it skipped follows; it belongs to no sample
        if current is not None:
            found.setdefault(current, []).append(line)
    return {i: "\n".join(lines) for i, lines in found.items()}


def _strip_prefix(text: str, prefix: str) -> str:
    """Show file and module names as the user knows them (Solution.hs, not <tmp>/src/S1a2b3c4d_7/Solution.hs)."""
    text = re.sub(r"(?:\S*/)?src/" + prefix + r"_\d+/", "", text)
    return re.sub(prefix + r"_\d+\.", "", text)


def _first_error_line(text: str) -> str:
    """`compile error: <GHC's first message>` for the one-line detail of a verdict."""
    lines = text.splitlines()
    for n, line in enumerate(lines):
        if "error" not in line:
            continue
        rest = line.split("error:", 1)[-1].strip()
        following = [ln.strip(" •") for ln in lines[n + 1:n + 3] if ln.strip(" •|")]
        message = rest or (following[0] if following else "")
        return "compile error" + (f": {message[:200]}" if message else "")
    return "compile error"


def _compile_failure(done: Completed, timeout_s: float, prefix: str) -> ExecResult:
    if done.timed_out:
        return ExecResult("timeout", f"compile exceeded {timeout_s:g}s", stage="compile")
    text = _strip_prefix(done.stderr, prefix)
    if "memory" in text.lower() or done.signal is not None:
        return ExecResult("compile_error", "the compiler ran out of memory or was killed", excerpt(text),
                          stage="compile")
    return ExecResult("compile_error", _first_error_line(text), excerpt(text), stage="compile")
