"""Stage 1b of prepare, run by the scan workers on each chunk: keep code records whose own solution passes
their own tests (sources with `verify: tests`).

A record's solution is the code of its last assistant turn (its fenced blocks in the source's
`code_language`, or the whole turn), after the prompt's code when the answer continues it
(`problem_and_solution`); its tests are the record's `tests` field (an sftpipe problem's `Main` module
importing `Solution`, MultiPL-E's tests, Python asserts run after the solution, or HumanEval's
`check(candidate)` with `entry_point`; map other names with `fields`, e.g. `{tests: test}`). They are judged by `eval`'s own
`Executor` under `eval.code` (runners, limits, sandbox, verdict cache), so a verdict found by `eval` or by
an earlier prepare is not run again, and a second prepare of the same data runs nothing but its timeouts
(timeouts are never cached, and a timeout is judged twice before it rejects a record). A record that does not pass is rejected with its verdict as the reason
(`verify_wrong_answer`, `verify_compile_error`, `verify_runtime_error`, `verify_timeout`) and the
compiler's or tests' output in `rejected.jsonl`. A record without tests is kept or dropped
(`verify_no_tests`) as `data.verify.untested` says, and counted either way.

Passing records may then be measured (`quality.py`) and filtered by thresholds (`quality_*` reasons). Each
chunk's figures come back to the main process as a `VerifyTally`; `verification_figures` sums them into the
manifest's `Verification`.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np

from sftpipe.config.schema import Config
from sftpipe.contracts.data_dir import FigureSummary, Verification
from sftpipe.data.prepare.ledger import Rejection
from sftpipe.data.prepare.quality import (
    THRESHOLDS,
    QualityMeter,
    check_thresholds,
    missing_tools,
    threshold,
    tool_versions,
    wanted_figures,
)
from sftpipe.data.records import EXCERPT_CHARS, Conversation
from sftpipe.errors import SftpipeError
from sftpipe.evaluate.execution.executor import Executor
from sftpipe.evaluate.execution.extract import extract_code
from sftpipe.evaluate.execution.problem import CodeProblem
from sftpipe.evaluate.execution.verdicts import ExecResult
from sftpipe.evaluate.problems import multiple_entry_point

VERIFY_STAGE = "verify"
QUALITY_STAGE = "quality"
NO_TESTS = "verify_no_tests"
LANGUAGES = ("haskell", "python")
HISTOGRAM_BINS = 10


def verdict_reason(verdict: str) -> str:
    """The rejection reason of a verdict other than pass: `verify_<verdict>`."""
    return f"verify_{verdict}"


@dataclass
class VerifyTally:
    """What verification did to some records (a chunk's, or the sum of all chunks)."""

    verified: int = 0
    cached: int = 0
    untested: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    figures: dict[str, list[float]] = field(default_factory=dict)  # figure -> values of the passing records

    def add(self, other: VerifyTally) -> None:
        self.verified += other.verified
        self.cached += other.cached
        self.untested += other.untested
        self.verdicts.update(other.verdicts)
        for name, values in other.figures.items():
            self.figures.setdefault(name, []).extend(values)


def verified_sources(cfg: Config) -> list[int]:
    """Indices of the sources with verify: tests."""
    return [i for i, source in enumerate(cfg.data.sources) if source.verify == "tests"]


def skipped_figures(cfg: Config) -> dict[str, str]:
    """The wanted quality figures that cannot be measured here: figure -> why, naming the package to install."""
    languages = {cfg.data.sources[i].code_language for i in verified_sources(cfg)}
    return missing_tools(wanted_figures(cfg.data.verify), languages, cfg.eval.code.ghc)


def check_verify_inputs(cfg: Config) -> None:
    """Fail before any work when a verified source's language cannot be run or a quality threshold's tool is
    missing.

    Raises:
        SftpipeError: naming the field, the bad value and the fix.
    """
    indices = verified_sources(cfg)
    if not indices:
        return
    problems = []
    executor = Executor(cfg.eval.code)
    for i in indices:
        language = cfg.data.sources[i].code_language
        if language not in LANGUAGES:
            problems.append(f"data.sources[{i}].code_language is {language!r}, but verify: tests runs "
                            f"{' or '.join(LANGUAGES)}; set code_language or verify: none")
            continue
        missing = executor.missing_toolchain(language)
        if missing is not None:
            problems.append(f"data.sources[{i}].verify is tests, but {missing}")
    if problems:
        raise SftpipeError("; ".join(problems))
    check_thresholds(cfg.data.verify, skipped_figures(cfg))


class Verifier:
    """Judges a chunk's records of verified sources (one per scan worker; `workers` execution threads)."""

    def __init__(self, cfg: Config, workers: int):
        self.verify = cfg.data.verify
        self.executor = Executor(cfg.eval.code.model_copy(update={"workers": workers}))
        figures = wanted_figures(self.verify)
        cache_dir = self.executor.cache.path.parent if self.executor.cache is not None else None
        self.meter = QualityMeter(self.verify, cfg.eval.code, self.executor.sandbox, cache_dir) if figures else None

    def run(self, items: list[tuple[int, Conversation, str]], tally: VerifyTally) -> list[tuple[int, Rejection]]:
        """Judge `(position, conversation, language)` items; returns the rejected ones by position. Kept ones get
        `meta.verify` (`pass` or `untested`) and, when measured, `meta.quality`."""
        rejected: list[tuple[int, Rejection]] = []
        jobs: list[tuple[CodeProblem, str]] = []
        judged: list[tuple[int, Conversation, str]] = []
        for pos, conv, language in items:
            tests = conv.meta.get("tests")
            if not isinstance(tests, str) or not tests.strip():
                tally.untested += 1
                if self.verify.untested == "drop":
                    rejected.append((pos, _rejection(conv, VERIFY_STAGE, NO_TESTS, "the record has no `tests` "
                                                     "field (data.verify.untested is drop)")))
                else:
                    conv.meta["verify"] = "untested"
                continue
            jobs.append(problem_and_solution(conv, language, tests))
            judged.append((pos, conv, language))
        passed: list[tuple[int, Conversation, str, str]] = []
        for (pos, conv, language), (_, code), result in zip(judged, jobs, self._judge(jobs)):
            tally.verified += 1
            tally.cached += result.cached
            tally.verdicts[result.verdict] += 1
            if result.verdict == "pass":
                conv.meta["verify"] = "pass"
                passed.append((pos, conv, language, code))
            else:
                rejected.append((pos, _rejection(conv, VERIFY_STAGE, verdict_reason(result.verdict), result.detail,
                                                 verdict=result.verdict, exec_stage=result.stage,
                                                 output=result.excerpt)))
        if self.meter is not None:
            rejected += self._measure(passed, tally)
        return rejected

    def _judge(self, jobs: list[tuple[CodeProblem, str]]) -> list[ExecResult]:
        """One verdict per job. A timeout is judged a second time, with only the other timeouts running: on a
        loaded machine a correct solution can miss the wall-clock limit once, and rejecting it would remove
        good training data for a reason that has nothing to do with the code."""
        results = self.executor.run(jobs)
        again = [i for i, result in enumerate(results) if result.verdict == "timeout"]
        for i, result in zip(again, self.executor.run([jobs[i] for i in again])):
            results[i] = result if result.verdict != "timeout" else replace(result, detail=f"{result.detail} (twice)")
        return results

    def _measure(self, passed: list[tuple[int, Conversation, str, str]], tally: VerifyTally
                 ) -> list[tuple[int, Rejection]]:
        """Quality figures of the passing records, by language; those over a threshold are rejected."""
        assert self.meter is not None
        rejected = []
        for language in LANGUAGES:
            group = [item for item in passed if item[2] == language]
            if not group:
                continue
            for (pos, conv, _, _), figures in zip(group, self.meter.measure(language, [code for *_, code in group])):
                conv.meta["quality"] = figures
                for name, value in figures.items():
                    tally.figures.setdefault(name, []).append(value)
                over = [(name, value) for name, value in figures.items()
                        if (limit := threshold(self.verify, name)) is not None and value > limit]
                if over:
                    name, value = over[0]
                    reason, setting = THRESHOLDS[name]
                    rejected.append((pos, _rejection(conv, QUALITY_STAGE, reason,
                                                     f"{name} is {value:g}, over data.verify.{setting} "
                                                     f"({threshold(self.verify, name):g})", quality=figures)))
        return rejected


def problem_and_solution(conv: Conversation, language: str, tests: str) -> tuple[CodeProblem, str]:
    """The problem the record's tests make, and the solution its answer gives.

    The solution is the code of the last assistant turn (its fenced blocks in `language`, or untagged, else
    the whole turn). When that code does not define the entry point but the user turn before it does (a
    HumanEval or MultiPL-E record: the prompt is a signature and docstring, the answer its body), the
    solution is the prompt's code followed by the answer, as MultiPL-E assembles it. Haskell tests that do
    not `import Solution` are MultiPL-E's (a `main` with `candidate = f`) and are judged as `eval` judges them.
    """
    last = max(i for i, m in enumerate(conv.messages) if m["role"] == "assistant")
    answer = extract_code(conv.messages[last]["content"], language)
    prompt = next((m["content"] for m in reversed(conv.messages[:last]) if m["role"] == "user"), "")
    entry = conv.meta.get("entry_point")
    if not isinstance(entry, str) or not entry:
        entry = multiple_entry_point(language, prompt, tests)
    style = "multipl-e" if language == "haskell" and not re.search(r"^import\s+Solution\b", tests, re.M) \
        else "sftpipe"
    code = answer
    if entry and not _defines(answer, entry, language) and _defines(prompt, entry, language):
        code = prompt.rstrip("\n") + "\n" + answer
    return CodeProblem(str(conv.meta.get("id") or conv.location), language, tests, style, entry), code


def _defines(code: str, entry: str, language: str) -> bool:
    name = re.escape(entry)
    pattern = rf"^{name}\b" if language == "haskell" else rf"^def\s+{name}\s*\("
    return re.search(pattern, code, re.M) is not None


def _rejection(conv: Conversation, stage: str, reason: str, detail: str, **extra: object) -> Rejection:
    excerpt = json.dumps(conv.messages, ensure_ascii=False)[:EXCERPT_CHARS]
    ident = {"id": conv.meta["id"]} if "id" in conv.meta else {}  # the problem's own name, where it has one
    return Rejection(conv.source, conv.location, stage, reason, detail, excerpt, {**ident, **extra})


def tools(cfg: Config) -> dict[str, str]:
    """What the verdicts and figures depend on: each verified language's runner (`eval.code`'s toolchain string:
    compiler or interpreter version, harness version) and the linters' versions."""
    languages = {cfg.data.sources[i].code_language for i in verified_sources(cfg)}
    executor = Executor(cfg.eval.code)
    found = {language: executor.runner(language).toolchain for language in sorted(languages)}
    return found | tool_versions(wanted_figures(cfg.data.verify), languages)


def verification_figures(cfg: Config, tally: VerifyTally, skipped: dict[str, str]) -> Verification:
    """The manifest's summary of verification over all chunks."""
    quality = {name: summarise(np.asarray(values, dtype=float)) for name, values in sorted(tally.figures.items())}
    return Verification(tools=tools(cfg), sources=[cfg.data.sources[i].display_name for i in verified_sources(cfg)],
                        verified=tally.verified, passed=tally.verdicts["pass"], cached=tally.cached,
                        verdicts=dict(sorted(tally.verdicts.items())), untested=tally.untested,
                        untested_policy=cfg.data.verify.untested, quality=quality, skipped_figures=skipped)


def summarise(values: np.ndarray) -> FigureSummary:
    """Mean, percentiles and a histogram of one figure: whole-number bins for counts, HISTOGRAM_BINS equal
    bins from 0 to the maximum otherwise."""
    if not len(values):
        return FigureSummary(records=0, bin_edges=[], histogram=[])
    top = float(values.max())
    integer = bool(np.all(values == np.round(values)))
    if integer:
        width = max(1, math.ceil((top + 1) / HISTOGRAM_BINS))
        edges = np.arange(0, top + 1 + width, width)[: math.ceil((top + 1) / width) + 1]
    else:
        edges = np.linspace(0, top if top > 0 else 1, HISTOGRAM_BINS + 1)
    histogram = np.histogram(values, bins=edges)[0]
    p50, p90 = np.percentile(values, [50, 90])
    return FigureSummary(records=len(values), integer=integer, mean=round(float(values.mean()), 2), p50=round(float(p50), 2),
                         p90=round(float(p90), 2), max=round(top, 2),
                         bin_edges=[round(float(e), 2) for e in edges], histogram=histogram.tolist())
