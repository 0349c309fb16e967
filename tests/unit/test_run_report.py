"""RUN/report.html: every curve, the data summary and the config changes, for a finished run (written by train)
and for a run killed by SIGKILL (written by `sftpipe report`); checked in a headless browser where one is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest

from sftpipe.cli import main
from sftpipe.contracts.run_dir import RunDir
from sftpipe.train.faults import ENV
from sftpipe.train.run_report import CHARTS, MAX_DRAWN, line_chart_svg, read_run, render_run_report, write_run_report
from sftpipe.train.tracking import read_metrics
from tests.conftest import make_config


class Charts(HTMLParser):
    """Per chart id: its polylines' labels and its point count (one <circle> per logged value); table ids; text."""

    def __init__(self, page: str):
        super().__init__()
        self.charts: dict[str, dict] = {}
        self.tables: set[str] = set()
        self.text: list[str] = []
        self._chart: str | None = None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "svg" and (a.get("id") or "").startswith("chart-"):
            self._chart = a["id"].removeprefix("chart-")
            self.charts[self._chart] = {"lines": [], "points": 0}
        elif tag == "polyline" and self._chart:
            self.charts[self._chart]["lines"].append(a["data-label"])
        elif tag == "circle" and self._chart:
            self.charts[self._chart]["points"] += 1
        elif tag == "table" and a.get("id"):
            self.tables.add(a["id"])

    def handle_endtag(self, tag):
        if tag == "svg":
            self._chart = None

    def handle_data(self, data):
        self.text.append(data)


def logged_points(run_dir: Path, key: str) -> int:
    return sum(1 for m in read_metrics(RunDir(run_dir).metrics) if isinstance(m.get(key), (int, float)))


def test_a_finished_run_has_its_report_with_every_curve(lora_run):
    cfg, result = lora_run
    report = RunDir(result.run_dir).report
    assert report.is_file(), "train writes report.html at the end"
    page = Charts(report.read_text(encoding="utf-8"))
    assert set(page.charts) == {chart_id for chart_id, _, _ in CHARTS} | {"lengths"}
    for chart_id, _, keys in CHARTS:
        expected = sum(logged_points(result.run_dir, key) for key, _ in keys)
        assert expected > 0, f"{chart_id}: nothing logged to draw"
        assert page.charts[chart_id]["points"] == expected, chart_id
    assert page.charts["loss"]["lines"] == ["train", "validation"]
    assert {"splits", "sources", "config"} <= page.tables
    text = " ".join(page.text)
    assert f"finished: final/ holds the weights of step {result.steps}, the last step" in text
    assert "train.output_dir" in text and str(cfg.train.output_dir) in text  # a change from the default


def test_a_chart_without_values_says_so(lora_run):
    _, result = lora_run
    run = read_run(RunDir(result.run_dir))
    without = [{k: v for k, v in m.items() if k != "grad_norm"} for m in run.metrics]
    page = Charts(render_run_report(replace(run, metrics=without)))
    assert page.charts["grad_norm"]["points"] == 0 and page.charts["loss"]["points"] > 0
    assert "nothing logged" in " ".join(page.text)


def test_an_unfinished_run_gets_a_report_from_sftpipe_report(lora_run, tmp_path, capsys):
    """A finished run made to look killed before its end: no final/, no final in the manifest, a cut last line."""
    _, result = lora_run
    run_dir = RunDir(tmp_path / "run")
    shutil.copytree(result.run_dir, run_dir.path)
    shutil.rmtree(run_dir.final)
    run_dir.report.unlink()
    run_dir.write_manifest(run_dir.manifest.model_copy(update={"final": None}))
    val_points = logged_points(run_dir.path, "val_loss")
    with run_dir.metrics.open("a") as fh:
        fh.write('{"step": 99, "loss": 1.2')

    assert main(["report", str(run_dir.path)]) == 0
    assert f"run report: {run_dir.report}" in capsys.readouterr().out
    page = Charts(run_dir.report.read_text(encoding="utf-8"))
    text = " ".join(page.text)
    assert f"not finished (killed, failed or still running): last logged step {result.steps}; newest complete " \
           f"checkpoint: step {result.steps}" in text
    assert "1 line(s) of logs/metrics.jsonl are not JSON" in text
    assert page.charts["loss"]["points"] == result.steps + val_points
    assert all(page.charts[c]["points"] > 0 for c, _, _ in CHARTS)


@pytest.mark.heavy
def test_a_killed_run_gets_a_report_from_sftpipe_report(tmp_path, tiny_dir, chat_sources, lora_run, capsys):
    """A real `sftpipe train` killed by SIGKILL after step 3 (checkpoint at step 2)."""
    prepared, _ = lora_run
    cfg = make_config(tmp_path, tiny_dir, chat_sources, data={"output_dir": prepared.data.output_dir},
                      train={"max_steps": 6, "save_every": 2, "eval_every": 2})
    env = {**os.environ, ENV: "train.logged@3", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "sftpipe.cli", "train", str(tmp_path / "config.json")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr  # SIGKILL after step 3 was logged
    run_dir = RunDir(Path(cfg.train.output_dir))
    assert not run_dir.report.exists() and not run_dir.final.exists()
    val_points = logged_points(run_dir.path, "val_loss")

    assert main(["report", str(run_dir.path)]) == 0
    assert f"run report: {run_dir.report}" in capsys.readouterr().out
    page = Charts(run_dir.report.read_text(encoding="utf-8"))
    text = " ".join(page.text)
    assert "not finished (killed, failed or still running): last logged step 3; newest complete checkpoint: " \
           "step 2" in text
    assert page.charts["loss"]["points"] == 3 + val_points
    assert all(page.charts[c]["points"] > 0 for c, _, _ in CHARTS)


def test_a_long_run_is_drawn_thinned_but_counted_whole():
    points = [(float(step), 1.0 / step) for step in range(1, 10_001)]
    svg = str(line_chart_svg("loss", "Loss", [("train", points)]))
    drawn = svg.split('points="')[1].split('"')[0].split()
    assert len(drawn) <= MAX_DRAWN + 1
    assert drawn[0].startswith("64.0,") and drawn[-1].startswith("544.0,")  # first and last step: the plot's edges
    assert "train (10000)" in svg and "<circle" not in svg and len(svg) < 60_000
    short = str(line_chart_svg("loss", "Loss", [("train", points[:50])]))
    assert len(short.split('points="')[1].split('"')[0].split()) == 50 and short.count("<circle") == 50  # control


def test_report_of_a_dir_that_is_no_run_is_an_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a run dir" in capsys.readouterr().err


def test_eval_figures_and_link_appear_when_eval_has_run(lora_run, tmp_path):
    import json

    _, result = lora_run
    run_copy = tmp_path / "run"
    shutil.copytree(result.run_dir, run_copy)
    (run_copy / "eval").mkdir(exist_ok=True)
    (run_copy / "eval" / "metrics.json").write_text(json.dumps({
        "model": str(run_copy), "split": "test", "loss": 1.5, "perplexity": 4.48, "token_accuracy": 0.25,
        "code": {"pass_at_k": {"pass@1": 0.5}, "problems": 4, "samples": 4, "skipped": None}}))
    (run_copy / "eval" / "report.html").write_text("<html></html>")
    page = Charts(write_run_report(RunDir(run_copy)).read_text(encoding="utf-8"))
    text = " ".join(page.text)
    assert "eval" in page.tables and "1.5000" in text and "0.500 (4 problems, 4 samples)" in text
    assert 'href="eval/report.html"' in (run_copy / "report.html").read_text()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def browse(page: Path, shot: Path) -> str:
    """Open `page` in headless Chromium and screenshot it; returns Chromium's log (console messages included)."""
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--window-size=1280,2400", "--enable-logging=stderr", "--v=0",
                           f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def console_errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if "CONSOLE" in line or "Uncaught" in line]


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium: apt-get install chromium (scripts/browser.sh)")
def test_the_report_renders_in_a_headless_browser_without_console_errors(lora_run, tmp_path):
    _, result = lora_run
    shot = tmp_path / "report.png"
    log = browse(RunDir(result.run_dir).report, shot)
    assert shot.is_file() and shot.stat().st_size > 20_000, "a screenshot of a page with charts and tables"
    assert console_errors(log) == []
    # control: a page whose script fails is caught
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><script>undefinedFunction()</script></body></html>")
    assert console_errors(browse(broken, tmp_path / "broken.png"))


def test_a_train_data_mix_shows_each_dir_and_the_mix(lora_run):
    from sftpipe.contracts.run_dir import MixedDataDir, TrainDataMix

    cfg, result = lora_run
    run = read_run(RunDir(result.run_dir))
    assert len(run.data) == 1  # control: a single data dir
    (path, data), = run.data
    dirs = [MixedDataDir(name=name, dir=path, weight=weight, template=data.template.name,
                         template_sha256=data.template.sha256, data_manifest_sha256=data.sha256,
                         available_examples=10, examples=examples, tokens=100 * examples,
                         trained_tokens=50 * examples, epochs=examples / 10, target_share=share, achieved_share=share)
            for name, weight, examples, share in (("code", 3.0, 15, 0.75), ("chat", 1.0, 5, 0.25))]
    mixed = replace(run, manifest=run.manifest.model_copy(update={"data_mix": TrainDataMix(
        unit="samples", seed=cfg.train.seed, dirs=dirs)}), data=[(path, data), (path, data)])
    page = Charts(render_run_report(mixed))
    assert {"mix", "splits", "splits1", "sources", "sources1"} <= page.tables
    assert {"lengths", "lengths1"} <= set(page.charts)
    text = " ".join(page.text)
    assert "A train.data mix of 2 data dirs by samples" in text and "code (" in text and "1.50" in text
