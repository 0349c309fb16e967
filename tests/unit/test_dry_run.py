"""`sftpipe train --dry-run`: one real step, figures beside the estimate, nothing written; exit 1 when the estimate
does not fit the budget. And `sftpipe estimate` on the command line (table, JSON, exit status)."""

from __future__ import annotations

import json
import os

import pytest

from sftpipe.cli import main
from sftpipe.data import prepare
from tests.conftest import make_config, pc_records, write_jsonl


def tree(root) -> dict[str, tuple[int, int]]:
    """Every path under `root` with its size and modification time."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.stat(path)
            found[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns)
    return found


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_dir):
    tmp = tmp_path_factory.mktemp("dry")
    source = write_jsonl(tmp / "pc.jsonl", pc_records(10))
    cfg = make_config(tmp, tiny_dir, [{"path": str(source)}], train={"micro_batch_size": 4})
    prepare.run(cfg)
    return tmp


def test_dry_run_steps_once_and_writes_nothing(prepared, capsys, monkeypatch):
    pytest.importorskip("bitsandbytes", reason="the dry run is of a QLoRA run: pip install 'sftpipe[qlora]'")
    monkeypatch.chdir(prepared)
    before = tree(prepared)
    assert main(["train", str(prepared / "config.json"), "--dry-run", "--method", "qlora"]) == 0
    out = capsys.readouterr().out
    assert tree(prepared) == before, "the dry run wrote or touched a file"
    assert not (prepared / "run").exists()
    assert "train.method qlora" in out and "dry run: one step on the largest micro-batch (4 rows" in out
    assert "peak memory:" in out and "measured (process peak RSS" in out and "nothing was written" in out


def test_dry_run_fails_when_the_estimate_does_not_fit(prepared, capsys):
    before = tree(prepared)
    assert main(["train", str(prepared / "config.json"), "--dry-run", "--gpu-memory", "2MiB"]) == 1
    out = capsys.readouterr().out
    assert "does NOT fit" in out and "no step tried" in out
    assert tree(prepared) == before


def test_estimate_cli_table_json_and_exit_status(prepared, capsys):
    config = str(prepared / "config.json")
    assert main(["estimate", config, "--gpu-memory", "4GiB"]) == 0
    out = capsys.readouterr().out
    assert "peak in tensors (max_memory_allocated)" in out and "fits" in out and "recommended:" in out
    assert main(["estimate", config, "--json", "--gpus", "4", "--sharding", "fsdp", "--set", "train.method=full"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["planned"]["sharded"] and figures["planned"]["devices"] == 4 and figures["fits"] is None
    assert main(["estimate", config, "--gpu-memory", "1MiB"]) == 1
    assert "nothing fits" in capsys.readouterr().out
