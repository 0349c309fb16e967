"""Generate for eval items, judge the answers of items with tests, and summarise both.

Shared by `sftpipe eval` (run.py) and the in-training hook, so both measure the same thing the same way.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sftpipe.config.schema import CodeEvalConfig
from sftpipe.errors import SftpipeError
from sftpipe.evaluate.execution.executor import Executor
from sftpipe.evaluate.execution.extract import program_for
from sftpipe.evaluate.generation import DecodingSettings, generate_samples
from sftpipe.evaluate.genmetrics import GenerationStats, generation_stats
from sftpipe.evaluate.passk import mean_pass_at_k
from sftpipe.evaluate.problems import EvalItem
from sftpipe.evaluate.execution.verdicts import VERDICTS


@dataclass
class SampleRecord:
    """One generated sample: a line of generations.jsonl."""

    id: str
    sample: int
    prompt: str
    generation: str
    num_tokens: int
    ended_with_eos: bool
    reference: str | None = None
    code: str | None = None
    verdict: str | None = None
    detail: str | None = None
    error_excerpt: str | None = None
    stage: str | None = None
    cached: bool | None = None
    not_run: str | None = None  # why a sample of a problem with tests has no verdict (execution skipped)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class CodeSummary:
    """Execution results over all samples of problems with tests."""

    problems: int = 0
    samples: int = 0
    samples_per_problem: int = 0
    pass_at_k: dict[str, float] = field(default_factory=dict)
    verdicts: dict[str, int] = field(default_factory=dict)
    languages: list[str] = field(default_factory=list)
    sandbox: str = ""
    executed: int = 0
    cached: int = 0
    exec_wall_s: float = 0.0
    samples_per_s: float = 0.0
    skipped: str | None = None
    not_run: int = 0  # samples of problems with tests left without a verdict (their records say why)
    profile: str = "default"  # eval.code.profile: how answers were run and judged (default or multipl-e)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class SuiteResult:
    records: list[SampleRecord]
    generation: GenerationStats | None
    code: CodeSummary | None
    generate_s: float


def prompt_text(messages: list[dict[str, str]]) -> str:
    """The last user message: what a reader of the report needs to see of the prompt."""
    users = [m["content"] for m in messages if m["role"] == "user"]
    return users[-1] if users else ""


def make_executor(cfg: CodeEvalConfig, items: list[EvalItem]) -> tuple[Executor | None, str | None]:
    """An executor when some item has tests and execution is on; else (None, why not)."""
    languages = sorted({i.problem.language for i in items if i.problem is not None})
    if not languages:
        return None, None
    if cfg.enabled is False:
        return None, "eval.code.enabled is false"
    executor = Executor(cfg)
    missing = [m for m in (executor.missing_toolchain(lang) for lang in languages) if m]
    if missing and cfg.enabled is True:
        raise SftpipeError(missing[0])
    if len(missing) == len(languages):
        return None, "; ".join(missing)
    return executor, "; ".join(missing) or None


def run_suite(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, items: list[EvalItem],
              decoding: DecodingSettings, code_cfg: CodeEvalConfig, executor: Executor | None,
              skipped: str | None = None) -> SuiteResult:
    """Generate `decoding.num_samples` answers per item; execute those of items with tests (if `executor`)."""
    if not items:
        return SuiteResult([], None, None, 0.0)
    start = time.perf_counter()
    generations = generate_samples(model, tokenizer, [i.messages for i in items], decoding)
    generate_s = time.perf_counter() - start
    records = [SampleRecord(item.id, s, prompt_text(item.messages), g.text, g.num_tokens, g.ended, item.reference)
               for item, gens in zip(items, generations) for s, g in enumerate(gens)]
    flat = [g for gens in generations for g in gens]
    stats = generation_stats([g.text for g in flat], [g.num_tokens for g in flat], [g.ended for g in flat])
    code = judge(items, records, code_cfg, executor, skipped)
    return SuiteResult(records, stats, code, generate_s)


def judge(items: list[EvalItem], records: list[SampleRecord], cfg: CodeEvalConfig, executor: Executor | None,
          skipped: str | None) -> CodeSummary | None:
    """Run the answers of items with tests; fill the records' verdicts; pass@k over problems."""
    by_id = {item.id: item for item in items}
    with_tests = [r for r in records if by_id[r.id].problem is not None]
    if not with_tests:
        return None
    if executor is None:
        reason = skipped or "execution is off"
        for record in with_tests:
            record.not_run = f"execution skipped: {reason}"
        return CodeSummary(skipped=reason, not_run=len(with_tests), profile=cfg.profile)
    runnable = []
    for record in with_tests:
        missing = executor.missing_toolchain(by_id[record.id].problem.language)
        if missing is None:
            runnable.append(record)
        else:
            record.not_run = f"execution skipped: {missing}"
    jobs = []
    for record in runnable:
        problem = by_id[record.id].problem
        record.code = program_for(problem, record.generation)
        jobs.append((problem, record.code))
    start = time.perf_counter()
    results = executor.run(jobs)
    wall = time.perf_counter() - start
    for record, result in zip(runnable, results):
        record.verdict, record.detail, record.stage = result.verdict, result.detail, result.stage
        record.error_excerpt, record.cached = result.excerpt or None, result.cached
    per_problem: dict[str, list[bool]] = {}
    for record in runnable:
        per_problem.setdefault(record.id, []).append(record.verdict == "pass")
    counts = [(len(v), sum(v)) for v in per_problem.values()]
    verdicts = Counter(r.verdict for r in runnable)
    executed = sum(not r.cached for r in runnable)
    return CodeSummary(
        problems=len(per_problem), samples=len(runnable),
        samples_per_problem=min((n for n, _ in counts), default=0),
        pass_at_k=mean_pass_at_k(counts, cfg.k), verdicts={v: verdicts.get(v, 0) for v in VERDICTS},
        languages=sorted({by_id[r.id].problem.language for r in runnable}), sandbox=executor.sandbox.mode,
        executed=executed, cached=len(runnable) - executed, exec_wall_s=wall,
        samples_per_s=executed / wall if wall > 0 and executed else 0.0, skipped=skipped,
        not_run=len(with_tests) - len(runnable), profile=cfg.profile,
    )
