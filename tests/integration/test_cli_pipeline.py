"""Drive the real `sftpipe` CLI end to end: init-tiny -> prepare -> train -> eval -> merge -> infer."""

import json
import os
import subprocess
import sys

import datasets
import peft
import pytest
from transformers import AutoModelForCausalLM

from tests.conftest import EXAMPLES

pytestmark = pytest.mark.integration


def sftpipe(*args, cwd, expect=0):
    # One thread: on a loaded 2-core machine OpenMP spinning makes tiny-model steps many times slower.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "sftpipe.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == expect, f"{args}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


@pytest.mark.heavy  # ~40 s: .ci/run runs it after make test
def test_cli_pipeline(tmp_path):
    sftpipe("init-tiny", "--out", "tiny", "--size", "micro", "--corpus", EXAMPLES, cwd=tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
preset: fast_test
model: {{name_or_path: tiny}}
data:
  sources:
    - {{path: {EXAMPLES / 'haskell' / 'problems.jsonl'}, format: code, fields: {{code: solution}}}}
  output_dir: data
  max_length: 512
train: {{output_dir: run, max_steps: 3, save_every: 2}}
export: {{output_dir: merged}}
"""
    )
    out = sftpipe("prepare", config, cwd=tmp_path).stdout
    assert "79 records read, 79 kept, 0 rejected" in out
    out = sftpipe("train", config, "--set", "train.lr=2e-3", cwd=tmp_path).stdout
    assert "trained 3 steps" in out and "val loss after" in out and "run report: run/report.html" in out
    resolved = (tmp_path / "run" / "config.yaml").read_text()
    assert "lr: 0.002" in resolved  # the --set override is in the saved resolved config
    out = sftpipe("eval", config, cwd=tmp_path).stdout
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert metrics["examples"] == 8 and metrics["loss"] > 0 and "ppl" in out
    assert "run report: run/report.html (and the model card run/final gained the eval figures)" in out
    assert 'id="eval"' in (tmp_path / "run" / "report.html").read_text()
    sftpipe("merge", config, cwd=tmp_path)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Write sumList."}\n{"messages": [{"role": "user", "content": "Hi"}]}\n')
    sftpipe("infer", "--model", "merged", "--prompts-file", prompts, "--output", "out.jsonl",
            "--max-new-tokens", "8", cwd=tmp_path)
    completions = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(completions) == 2 and all(isinstance(c["completion"], str) for c in completions)
    sftpipe("infer", "--model", "run", "--prompt", "Write sumList.", "--max-new-tokens", "4", cwd=tmp_path)

    # every artifact loads with the plain libraries
    assert len(datasets.load_from_disk(str(tmp_path / "data" / "train"))) == 63
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "tiny")
    peft.PeftModel.from_pretrained(base, str(tmp_path / "run" / "final"))
    AutoModelForCausalLM.from_pretrained(tmp_path / "merged")


def test_cli_reports_bad_input_without_traceback(tmp_path):
    config = tmp_path / "config.yaml"
    (tmp_path / "d.jsonl").write_text('{"prompt": "p", "completion": "c"}\n')
    config.write_text("model: {name_or_path: ./does-not-exist}\ndata: {sources: [{path: missing.jsonl}]}\n")
    err = sftpipe("prepare", config, cwd=tmp_path, expect=2).stderr
    assert err.startswith("error: ") and "Traceback" not in err and "data.sources[0].path: 'missing.jsonl'" in err
    config.write_text("model: {name_or_path: ./does-not-exist}\ndata: {sources: [{path: d.jsonl}]}\n")
    err = sftpipe("prepare", config, cwd=tmp_path, expect=2).stderr
    assert "model.name_or_path './does-not-exist': no such directory" in err and "Traceback" not in err
