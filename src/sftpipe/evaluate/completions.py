"""Score completions made elsewhere (vLLM, an API, MultiPL-E, bigcode-evaluation-harness): no model.

A completions file is JSONL with one of two shapes per record (both may be mixed):
  {"name" | "task_id": ID, "completion": TEXT}            one sample; several records may name one problem
  {"name" | "task_id": ID, "completions": [TEXT, ...]}     MultiPL-E's shape: all samples of a problem
ID is the id of a problem of `eval.generation.source` (a MultiPL-E problem's `name`, an sftpipe problem's
`id`). A text becomes a program as a generated answer does (`extract.program_for`): the code of fenced
blocks if there are any; for a MultiPL-E problem, a text that defines the entry point at the start of a
line is a whole answer (so is a full program, prompt included), anything else continues the prompt and
is cut at the problem's stop tokens. Records naming no known problem, problems without completions and
empty completions are counted in metrics.json and the report, never dropped silently.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sftpipe.config.schema import Config
from sftpipe.errors import SftpipeError
from sftpipe.evaluate.problems import EvalItem
from sftpipe.evaluate.result import EvalResult
from sftpipe.evaluate.suite import SampleRecord, SuiteResult, judge, make_executor, prompt_text


@dataclass
class CompletionCounts:
    """What a completions file held and what of it could be scored."""

    file: str
    records: int = 0
    samples: int = 0  # scored
    empty: int = 0  # empty or whitespace-only completions (scored: they fail)
    unknown_ids: list[str] = field(default_factory=list)  # records naming no problem of the source
    problems_without_completions: list[str] = field(default_factory=list)  # problems with tests, no samples

    def as_dict(self) -> dict:
        return asdict(self)


def read_completions(path: Path) -> list[tuple[str, list[str]]]:
    """(problem id, texts) per record of a completions JSONL file.

    Raises:
        SftpipeError: naming the file and line of a record of neither shape.
    """
    if not path.is_file():
        raise SftpipeError(f"--completions {path}: no such file")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SftpipeError(f"{where}: not JSON ({exc.msg})") from None
        name = record.get("name", record.get("task_id")) if isinstance(record, dict) else None
        if not isinstance(name, (str, int)):
            raise SftpipeError(f"{where}: a record needs `name` or `task_id` (the problem's id) and `completion` "
                               "or `completions`")
        if isinstance(record.get("completion"), str):
            texts = [record["completion"]]
        elif isinstance(record.get("completions"), list) and all(isinstance(t, str) for t in record["completions"]):
            texts = record["completions"]
        else:
            raise SftpipeError(f"{where}: expected `completion` (a string) or `completions` (a list of strings)")
        out.append((str(name), texts))
    return out


def score(cfg: Config, items: list[EvalItem], completions: list[tuple[str, list[str]]], counts: CompletionCounts
          ) -> SuiteResult:
    """Judge each completion against its problem; fill `counts`."""
    by_id = {item.id: item for item in items if item.problem is not None}
    texts: dict[str, list[str]] = {}
    for name, samples in completions:
        counts.records += 1
        if name not in by_id:
            counts.unknown_ids.append(name)
            continue
        texts.setdefault(name, []).extend(samples)
    records = []
    for item_id, item in by_id.items():
        for s, text in enumerate(texts.get(item_id, [])):
            counts.empty += not text.strip()
            records.append(SampleRecord(item_id, s, prompt_text(item.messages), text, 0, True, item.reference))
    counts.samples = len(records)
    counts.problems_without_completions = [i for i in by_id if i not in texts]
    executor, skipped = make_executor(cfg.eval.code, list(by_id.values()))
    code = judge(list(by_id.values()), records, cfg.eval.code, executor, skipped)
    return SuiteResult(records, None, code, 0.0)


def run(cfg: Config, completions_file: str, output_dir: str | None = None) -> EvalResult:
    """Score the completions in `completions_file` against the problems of `eval.generation.source`; write
    metrics.json, generations.jsonl and report.html into `output_dir` (default: <file>.eval next to it)."""
    from sftpipe.evaluate.report_html import write_report
    from sftpipe.evaluate.run import load_eval_items

    path = Path(completions_file)
    out = Path(output_dir) if output_dir else path.with_suffix(".eval")
    completions = read_completions(path)
    items, _ = load_eval_items(cfg)
    if not any(item.problem is not None for item in items):
        raise SftpipeError(f"eval.generation.source {cfg.eval.generation.source!r} has no problems with tests to "
                           "score completions against; set it to a problem file (sftpipe, MultiPL-E or HumanEval-style)")
    counts = CompletionCounts(str(path))
    suite = score(cfg, items, completions, counts)
    settings = {"source": cfg.eval.generation.source, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "completions": counts.as_dict()}
    result = EvalResult(str(path), "completions", None, out, suite, settings)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result.as_dict(), indent=2), encoding="utf-8")
    with (out / "generations.jsonl").open("w", encoding="utf-8") as fh:
        for record in suite.records:
            fh.write(json.dumps(record.as_dict(), ensure_ascii=False) + "\n")
    write_report(out / "report.html", [("completions", result)], cfg)
    return result
