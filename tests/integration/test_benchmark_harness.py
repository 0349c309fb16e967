"""The training benchmark harness still runs end to end (a benchmark that rots is found here, not in a report).

Runs sftpipe and the bare loop on sftpipe's kernels for one measured step on a few hundred conversations;
TRL is a benchmark-only extra, so its contenders are left out here.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.heavy  # ~35 s: .ci/run runs it after make test
def test_train_benchmark_harness_measures_sftpipe_against_the_bare_loop(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train" / "run.py"), "--rounds", "1", "--steps", "1",
         "--conversations", "200", "--threads", "1", "--max-wait", "0", "--only", "sftpipe-full",
         "--only", "bare-kernels-full", "--workdir", str(tmp_path / "work"), "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "cpu-compare-threads1-partial.json").read_text())
    assert set(result["summary"]) == {"sftpipe-full", "bare-kernels-full"}
    for name, summary in result["summary"].items():
        assert "error" not in summary, (name, summary)
        assert summary["tokens_per_s"] > 0 and summary["supervised_per_s"] < summary["tokens_per_s"]
    # sftpipe's flat rows hold no padding; the bare loop trains on the very same batches
    assert result["summary"]["sftpipe-full"]["packing_efficiency"] == 1.0
    assert result["summary"]["bare-kernels-full"]["packing_efficiency"] == 1.0
    ratio = result["ratios"]["tokens_per_cpu_s"]["full"]["vs_bare_kernels"]
    assert 0.2 < ratio < 5, ratio  # the same computation: a ratio far from 1 means one side measures wrong
    assert result["data"]["examples"] > 150 and result["machine"]["versions"]["sftpipe"] != "missing"
    assert "| sftpipe-full |" in (out / "cpu-compare-threads1-partial.md").read_text()
