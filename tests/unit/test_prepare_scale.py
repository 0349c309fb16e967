"""Prepare at scale: sharded output readable by datasets and the training loop, the same output for any
num_proc, a content-keyed split with exact ratios, and peak memory that does not grow with the input."""

import importlib.util
import json
import random
import subprocess
import sys
import textwrap

import datasets
import pytest

from sftpipe.contracts.data_dir import DataDir
from sftpipe.data import prepare
from sftpipe.data.prepare import scan
from sftpipe.errors import SftpipeError
from tests.conftest import REPO, distinct_records, make_config, write_jsonl


def _rows(out, split):
    return datasets.load_from_disk(f"{out}/{split}").to_list()


def test_sharded_splits_load_with_datasets_and_load_split(tmp_path, tiny_dir):
    path = write_jsonl(tmp_path / "in.jsonl", distinct_records(40, seed=20))
    one = make_config(tmp_path / "one", tiny_dir, [{"path": str(path)}])
    many = make_config(tmp_path / "many", tiny_dir, [{"path": str(path)}], data={"shard_size": 7})
    prepare.run(one)
    result = prepare.run(many)
    assert result.splits["train"].shards == 5 and result.splits["val"].shards == 1  # 32 rows by 7; 4 rows
    shard_files = sorted(p.name for p in (tmp_path / "many" / "data" / "train").glob("*.arrow"))
    assert shard_files == [f"data-0000{i}-of-00005.arrow" for i in range(5)]
    for split in ("train", "val", "test"):
        rows = _rows(many.data.output_dir, split)
        assert rows == _rows(one.data.output_dir, split) and len(rows) == result.splits[split].examples
        assert DataDir(tmp_path / "many" / "data").load_split(split).to_list() == rows


def test_empty_split_is_still_a_loadable_dataset(tmp_path, tiny_dir):
    path = write_jsonl(tmp_path / "in.jsonl", distinct_records(10, seed=21))
    cfg = make_config(tmp_path, tiny_dir, [{"path": str(path)}], data={"split": {"train": 1.0, "val": 0, "test": 0}})
    prepare.run(cfg)
    data = DataDir(tmp_path / "data")
    assert len(data.load_split("val")) == 0 and len(data.load_split("train")) == 10


def test_output_is_the_same_for_one_or_two_worker_processes(tmp_path, tiny_dir, monkeypatch):
    monkeypatch.setattr(scan, "CHUNK_RECORDS", 40)  # several chunks, so num_proc=2 really uses a pool
    records = distinct_records(150, seed=22, words=12)
    records[30:30] = ["{bad json", records[5], {"prompt": "p", "completion": "..."}]
    path = write_jsonl(tmp_path / "in.jsonl", records)
    outs = []
    for procs in (1, 2):
        cfg = make_config(tmp_path / str(procs), tiny_dir, [{"path": str(path)}], data={"num_proc": procs})
        prepare.run(cfg)
        out = tmp_path / str(procs) / "data"
        manifest = json.loads((out / "manifest.json").read_text())
        for key in ("created", "data_config"):
            manifest.pop(key)
        outs.append(({s: _rows(out, s) for s in ("train", "val", "test")}, (out / "rejected.jsonl").read_text(),
                     manifest))
    assert outs[0] == outs[1]
    assert outs[0][2]["rejected"] == {"exact_duplicate": 1, "invalid_json": 1, "no_alphanumeric": 1}


def _die(chunk):
    import os

    os._exit(1)  # a worker killed mid-chunk (e.g. by the OOM killer)


def test_a_dying_worker_is_an_error_not_a_hang(tmp_path, tiny_dir, monkeypatch):
    monkeypatch.setattr(scan, "CHUNK_RECORDS", 10)
    monkeypatch.setattr(scan, "scan_chunk", _die)
    path = write_jsonl(tmp_path / "in.jsonl", distinct_records(30, seed=24))
    cfg = make_config(tmp_path, tiny_dir, [{"path": str(path)}], data={"num_proc": 2})
    with pytest.raises(SftpipeError, match="worker process died"):
        prepare.run(cfg)
    assert not (tmp_path / "data").exists() and not (tmp_path / "data.tmp").exists()


def test_split_depends_on_content_not_order_and_has_exact_ratios(tmp_path, tiny_dir):
    records = distinct_records(95, seed=23, words=10)
    shuffled = list(records)
    random.Random(0).shuffle(shuffled)
    members = []
    for name, recs in (("ordered", records), ("shuffled", shuffled)):
        path = write_jsonl(tmp_path / f"{name}.jsonl", recs)
        cfg = make_config(tmp_path / name, tiny_dir, [{"path": str(path)}])
        result = prepare.run(cfg)
        assert [result.splits[s].examples for s in ("train", "val", "test")] == [75, 10, 10]  # 95 - 2 x round(9.5)
        members.append({s: {json.loads(m)[0]["content"] for m in datasets.load_from_disk(
            f"{cfg.data.output_dir}/{s}")["messages"]} for s in ("train", "val", "test")})
    assert members[0] == members[1]


def _load_make_records():
    spec = importlib.util.spec_from_file_location("make_alpaca", REPO / "benchmarks" / "prepare" / "make_alpaca.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_records


# Peak RSS is VmHWM of the process's own address space: ru_maxrss would also count the parent's pages at
# the fork that started it (Linux carries that peak across exec), i.e. pytest's size, not the child's.
HWM = "def hwm(): return int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])"
PREPARE_PEAK = textwrap.dedent("""
    import json, sys
    from sftpipe.cli import main
    import sftpipe.data.prepare
    HWM
    base = hwm()
    rc = main(["prepare", sys.argv[1], "--set", "data.num_proc=1"])
    print(json.dumps({"rc": rc, "base_kb": base, "peak_kb": hwm()}))
""").replace("HWM", HWM)
# Negative control: what prepare did before it streamed (every example held in memory at once).
IN_MEMORY_PEAK = textwrap.dedent("""
    import json, sys
    from sftpipe.config import load_config
    from sftpipe.data.formats import to_conversation
    from sftpipe.data.templates import resolve_template
    from sftpipe.data.tokenize import ConversationTokenizer
    from sftpipe.models.loading import load_tokenizer
    HWM
    base = hwm()
    cfg = load_config(sys.argv[1])
    tok = load_tokenizer(cfg.model)
    encode = ConversationTokenizer(tok, resolve_template(cfg.data, tok), cfg.data.max_length, "truncate")
    source = cfg.data.sources[0]
    convs = [to_conversation(json.loads(line), "alpaca", source, "x", None) for line in open(source.path)]
    examples = encode.encode_batch(convs)
    print(json.dumps({"rc": 0, "base_kb": base, "peak_kb": hwm()}))
""").replace("HWM", HWM)


def _peak_mib(script: str, config) -> float:
    proc = subprocess.run([sys.executable, "-c", script, str(config)], capture_output=True, text=True, timeout=600,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0
    return round(result["peak_kb"] / 1024, 1)


@pytest.mark.heavy  # ~30 s: .ci/run runs it after make test
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc")
def test_peak_rss_at_10x_data_is_within_20_percent_of_1x(tmp_path, tiny_dir):
    make_records = _load_make_records()
    records = make_records(8000, seed=0)  # distinct records (1% duplicates), so dedup indexes grow with them
    configs = {}
    for scale, n in (("1x", 800), ("10x", 8000)):
        path = write_jsonl(tmp_path / f"{scale}.jsonl", records[:n])
        config = tmp_path / f"{scale}.json"
        config.write_text(json.dumps({"model": {"name_or_path": str(tiny_dir)}, "data": {
            "sources": [{"path": str(path)}], "output_dir": str(tmp_path / f"out{scale}"), "max_length": 1024}}))
        configs[scale] = config
    peak = {scale: _peak_mib(PREPARE_PEAK, config) for scale, config in configs.items()}
    kept = json.loads((tmp_path / "out10x" / "manifest.json").read_text())["splits"]["train"]["examples"]
    assert kept > 6000  # the 10x run really processed 10x the data
    assert peak["10x"] <= 1.2 * peak["1x"], peak
    # negative control: holding the tokenized examples in memory, as a non-streaming prepare does, breaks it
    control = {scale: _peak_mib(IN_MEMORY_PEAK, config) for scale, config in configs.items()}
    assert control["10x"] > 1.2 * control["1x"], control
    print(f"\npeak RSS MiB: prepare {peak}; in-memory control {control}")
