"""`sftpipe demo` end to end (several minutes on 2 cores: marked slow, run with `pytest -m slow`)."""

import json
import re
import shutil

import pytest

from sftpipe.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.slow]


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
