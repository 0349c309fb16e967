"""Execution summaries agree with the per-sample records, and report.html shows them, self-contained."""

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from sftpipe.config import Config
from sftpipe.config.schema import CodeEvalConfig
from sftpipe.evaluate.execution.executor import Executor
from sftpipe.evaluate.genmetrics import generation_stats
from sftpipe.evaluate.metrics import LossMetrics
from sftpipe.evaluate.passk import pass_at_k
from sftpipe.evaluate.problems import CodeProblem, EvalItem
from sftpipe.evaluate.report_html import render_report
from sftpipe.evaluate.result import EvalResult
from sftpipe.evaluate.run import deltas
from sftpipe.evaluate.suite import SampleRecord, SuiteResult, judge

TESTS = "assert double(2) == 4\nassert double(0) == 0\n"
GOOD, BAD, BROKEN = "def double(x):\n    return 2 * x\n", "def double(x):\n    return x + 2\n", "def double(x)\n"


def fenced(code):
    return f"Here you go:\n```python\n{code}```\n<script>alert(1)</script>"


def suite_for(answers: dict[str, list[str]], tmp_path: Path, executor=None) -> SuiteResult:
    items = [EvalItem(pid, [{"role": "user", "content": f"Write double ({pid})"}], "ref",
                      CodeProblem(pid, "python", TESTS, "sftpipe", "double")) for pid in answers]
    records = [SampleRecord(pid, s, f"Write double ({pid})", fenced(code), 10 + 5 * s, s % 2 == 0, "ref")
               for pid, codes in answers.items() for s, code in enumerate(codes)]
    executor = executor or Executor(CodeEvalConfig(cache_dir=None, workers=2, k=[1, 2, 3]))
    code = judge(items, records, executor.cfg, executor, None)
    stats = generation_stats([r.generation for r in records], [r.num_tokens for r in records],
                             [r.ended_with_eos for r in records])
    return SuiteResult(records, stats, code, 1.0)


@pytest.fixture(scope="module")
def two_suites(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    executor = Executor(CodeEvalConfig(cache_dir=None, workers=2, k=[1, 2, 3]))
    base = suite_for({"p1": [BAD, BROKEN, BAD], "p2": [BAD, BAD, BAD]}, tmp, executor)
    tuned = suite_for({"p1": [GOOD, BAD, GOOD], "p2": [BAD, GOOD, BROKEN]}, tmp, executor)
    return base, tuned


def test_pass_at_k_and_verdicts_agree_with_the_records(two_suites):
    _, tuned = two_suites
    code = tuned.code
    assert code.problems == 2 and code.samples == 6 and code.samples_per_problem == 3
    assert code.verdicts == {"pass": 3, "wrong_answer": 2, "compile_error": 1, "runtime_error": 0, "timeout": 0}
    for k in (1, 2, 3):
        expected = (pass_at_k(3, 2, k) + pass_at_k(3, 1, k)) / 2
        assert code.pass_at_k[f"pass@{k}"] == pytest.approx(expected)
    assert [r.verdict for r in tuned.records if r.id == "p1"] == ["pass", "wrong_answer", "pass"]
    assert all(r.code.startswith("def double") for r in tuned.records)  # extracted from the fence


def result(label, suite, loss):
    metrics = LossMetrics(loss, 2.0 ** loss, 0.5, 0.1, 100, 8)
    return EvalResult(label, "test", metrics, Path("."), suite,
                      {"data_dir": "data", "decoding": {"source": "split", "prompts": 2, "num_samples": 3,
                                                       "temperature": 0.8, "top_p": 0.95, "max_new_tokens": 64,
                                                       "seed": 0}})


class Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.external = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href") and value and not value.startswith("#"):
                self.external.append(value)


def test_compare_report_is_self_contained_and_shows_both_models(two_suites):
    base, tuned = two_suites
    page = render_report([("base", result("base-model", base, 3.0)), ("fine-tuned", result("run", tuned, 2.5))],
                         Config())
    page = re.sub(r">\s+<", "><", page)  # layout whitespace between tags does not matter
    parser = Collector()
    parser.feed(page)
    assert "script" not in parser.tags and parser.external == []  # nothing to fetch, nothing to run
    assert parser.tags.count("svg") == 2  # verdict bars and length histogram
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # generations are escaped, not executed
    for k, value in (("pass@1", 0.5), ("pass@2", (pass_at_k(3, 2, 2) + pass_at_k(3, 1, 2)) / 2)):
        assert f"<td>{k}</td><td>0.000</td><td>{value:.3f}</td>" in page
    assert "<td>3 (50%)</td>" in page  # tuned passes
    assert "<td>2 / 3</td>" in page and "<td>0 / 3</td>" in page  # per-problem table
    assert "<td>loss</td><td>3.0000</td><td>2.5000</td><td>−0.5000</td>" in page
    assert page.count("Write double (p1)") >= 1 and "temperature 0.8" in page


def test_deltas_are_run_minus_base():
    d = deltas({"loss": 3.0, "code": {"pass_at_k": {"pass@1": 0.1}}, "generation": {"distinct_2": 0.5}},
               {"loss": 2.0, "code": {"pass_at_k": {"pass@1": 0.4}}, "generation": {"distinct_2": 0.25}})
    assert d == pytest.approx({"loss": -1.0, "pass@1": 0.3, "distinct_2": -0.25})


def test_skipped_execution_is_said_in_the_report(tmp_path):
    items = [EvalItem("p", [{"role": "user", "content": "x"}], None, CodeProblem("p", "python", TESTS))]
    records = [SampleRecord("p", 0, "x", "def double(x): pass", 5, True)]
    code = judge(items, records, CodeEvalConfig(), None, "ghc not found")
    suite = SuiteResult(records, generation_stats(["a"], [5], [True]), code, 0.1)
    page = render_report([("model", result("m", suite, 1.0))], Config())
    assert "execution skipped: ghc not found" in page and records[0].verdict is None
    assert records[0].not_run == "execution skipped: ghc not found"  # the record in generations.jsonl says so
    assert code.not_run == 1 and "1 samples without a verdict" in page
    assert "not run</span>" in page  # and so does the example in the report
