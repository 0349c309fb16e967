"""`sftpipe demo` end to end (several minutes on 2 cores: marked slow, run with `pytest -m slow`)."""

import json
import re
import shutil

import pytest

from sftpipe.cli import main

pytestmark = [pytest.mark.integration]


@pytest.mark.slow
def test_demo_ends_with_an_eval_report_with_pass_at_1(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "held-out pass@1:" in printed
    page = re.sub(r">\s+<", "><", (tmp_path / "eval_compare" / "report.html").read_text())
    assert "<th>base</th><th>fine-tuned</th>" in page
    tuned = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    records = [json.loads(x) for x in (tmp_path / "run" / "eval" / "generations.jsonl").read_text().splitlines()]
    assert len(records) == 8  # the held-out test problems
    if shutil.which("ghc"):
        assert "pass@1" in page
        passes = sum(r["verdict"] == "pass" for r in records)
        assert tuned["code"]["problems"] == 8 and tuned["code"]["pass_at_k"]["pass@1"] == passes / 8
    else:
        assert "execution skipped" in page


def test_quick_demo_without_ghc_says_once_that_pass_at_k_is_not_measured(tmp_path, capsys, monkeypatch):
    # from another directory, with no GHC on PATH: the samples come from the package, the skip is said twice
    # in all (one line at the start, once in the summary), never per eval
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo")]) == 0
    printed = capsys.readouterr().out
    reason = "'ghc' not found on PATH"
    assert printed.count(reason) == 2, printed
    first, summary = [line for line in printed.splitlines() if reason in line]
    assert first.startswith("note: pass@k will not be measured") and printed.index(first) < printed.index("== init")
    assert summary.startswith("held-out pass@1: not measured")
    assert "execution skipped" not in printed
    assert (tmp_path / "demo" / "merged" / "model.safetensors").is_file()
    report = tmp_path / "demo" / "run" / "report.html"
    assert f"run report (curves, data, config, eval): {report}" in printed
    assert 'id="chart-loss"' in report.read_text() and 'id="eval"' in report.read_text()
    assert "## Evaluation" in (tmp_path / "demo" / "run" / "final" / "README.md").read_text()
    assert "## Evaluation" in (tmp_path / "demo" / "merged" / "README.md").read_text()  # the merge keeps it
