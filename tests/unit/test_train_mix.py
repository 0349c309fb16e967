"""Train-time mixing of several prepared data dirs (`train.data`): proportions met, memory-mapped stores,
packing that mixes dirs without crossing examples, the tokenizer check, the resume fingerprint, and a real
2-dir run that logs per-dir validation loss and train tokens."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest

from sftpipe.config.schema import TrainConfig
from sftpipe.contracts.data_dir import FEATURES, DataDir
from sftpipe.contracts.run_dir import RunDir
from sftpipe.data import prepare
from sftpipe.data.batches.collate import TokenStore, collate_packed
from sftpipe.data.batches.mix import MixedStore, SourceTokens, mix_stores, open_train_data
from sftpipe.data.batches.plan import build_plan
from sftpipe.data.records import IGNORE_INDEX
from sftpipe.errors import SftpipeError
from sftpipe.train.resume import fingerprint_differences, run_fingerprint
from tests.conftest import EXAMPLES, make_config


def synthetic_store(n: int, low: int, high: int, seed: int, first_id: int, trained: float = 0.5) -> TokenStore:
    """`n` examples of `low`..`high` tokens, ids starting at `first_id` (so each store's tokens are told apart);
    the first (1 - trained) of every example is prompt."""
    rng = np.random.default_rng(seed)
    ids, labels = [], []
    for i in range(n):
        length = int(rng.integers(low, high))
        row = (first_id + np.arange(length) + i) % 30_000
        cut = int(length * (1 - trained))
        ids.append(row.tolist())
        labels.append([IGNORE_INDEX] * cut + row[cut:].tolist())
    empty = [""] * n
    ds = datasets.Dataset.from_dict({"input_ids": ids, "labels": labels, "source": empty, "location": empty,
                                     "messages": empty, "meta": empty}, features=FEATURES)
    return TokenStore(ds)


def mix_config(weights: tuple[float, float], unit: str, seed: int = 42) -> TrainConfig:
    return TrainConfig(data=[{"dir": "a", "weight": weights[0]}, {"dir": "b", "weight": weights[1]}],
                       mix_unit=unit, seed=seed)


def shares(store: MixedStore, amount_by_store: list[np.ndarray]) -> np.ndarray:
    """Achieved share per store, measured on the mixed examples themselves."""
    totals = np.zeros(len(store.stores))
    for s, amounts in enumerate(amount_by_store):
        mine = store.source == s
        totals[s] = amounts[store.local[mine]].sum()
    return totals / totals.sum()


@pytest.fixture(scope="module")
def two_stores() -> list[TokenStore]:
    # a: many short examples, b: few long ones with a larger trained part: every unit weighs them differently
    return [synthetic_store(400, 20, 80, 0, 10), synthetic_store(60, 150, 400, 1, 20_000, trained=0.8)]


@pytest.mark.parametrize("unit", ["samples", "tokens", "trained_tokens"])
@pytest.mark.parametrize("weights", [(0.7, 0.3), (0.2, 0.8)])
def test_achieved_proportions_are_within_one_percent_of_the_weights(two_stores, unit, weights):
    amounts = {"samples": [np.ones(len(s)) for s in two_stores], "tokens": [s.lengths for s in two_stores],
               "trained_tokens": [s.trained_lengths() for s in two_stores]}[unit]
    mixed, counts = mix_stores(mix_config(weights, unit), two_stores)
    target = np.array(weights) / sum(weights)
    assert np.allclose(shares(mixed, amounts), target, atol=0.01), shares(mixed, amounts)
    # the epoch is as large as both dirs together in the unit (within one example for token units)
    total = sum(float(a.sum()) for a in amounts)
    per_dir = np.split(counts, [len(two_stores[0])])
    achieved = sum(float((a * n).sum()) for a, n in zip(amounts, per_dir))
    assert abs(achieved - total) / total < 0.01
    # negative control: the unweighted concatenation of the two dirs is far from these shares
    natural = np.array([float(a.sum()) for a in amounts])
    assert not np.allclose(natural / natural.sum(), target, atol=0.01)


def test_small_dirs_are_repeated_large_ones_subsampled_deterministically(two_stores):
    mixed, counts = mix_stores(mix_config((0.5, 0.5), "samples"), two_stores)
    assert Counter(mixed.source.tolist()) == {0: 230, 1: 230}
    assert set(counts[:400].tolist()) == {0, 1} and counts[:400].sum() == 230  # a subset of a, each once
    assert sorted(set(counts[400:].tolist())) == [3, 4] and counts[400:].sum() == 230  # b 3-4 times each
    again, _ = mix_stores(mix_config((0.5, 0.5), "samples"), two_stores)
    other, _ = mix_stores(mix_config((0.5, 0.5), "samples", seed=7), two_stores)
    assert np.array_equal(mixed.local, again.local) and not np.array_equal(mixed.local, other.local)


def test_mixed_examples_are_read_from_their_own_dir(two_stores):
    mixed, _ = mix_stores(mix_config((0.3, 0.7), "tokens"), two_stores)
    for i in range(0, len(mixed), 37):
        ids, labels = mixed.example(i)
        want_ids, want_labels = two_stores[mixed.source[i]].example(int(mixed.local[i]))
        assert np.array_equal(ids, want_ids) and np.array_equal(labels, want_labels)
        assert len(ids) == mixed.lengths[i]


def test_token_store_reads_the_mapped_files_in_place(tmp_path):
    store = synthetic_store(50, 10, 30, 0, 5)
    ds = datasets.Dataset.from_dict({"input_ids": [store.example(i)[0].tolist() for i in range(50)],
                                     "labels": [store.example(i)[1].tolist() for i in range(50)],
                                     **{k: [""] * 50 for k in ("source", "location", "messages", "meta")}},
                                    features=FEATURES)
    ds.save_to_disk(str(tmp_path / "split"), max_shard_size="2KB")
    mapped = TokenStore(datasets.load_from_disk(str(tmp_path / "split")))
    assert len(mapped._ids) > 1  # several record batches / shards
    assert all(not a.flags.owndata for a in mapped._ids + mapped._labels)  # views of Arrow buffers, not copies
    for i in range(50):
        assert np.array_equal(mapped.example(i)[0], store.example(i)[0])
        assert np.array_equal(mapped.example(i)[1], store.example(i)[1])
    assert np.array_equal(mapped.trained_lengths(), store.trained_lengths())
    assert np.array_equal(store.trained_lengths(), [int((store.example(i)[1] != IGNORE_INDEX).sum())
                                                     for i in range(50)])


def test_packed_rows_mix_dirs_and_every_example_keeps_its_own_positions(two_stores):
    tc = mix_config((0.5, 0.5), "samples").model_copy(update={"packing": True, "pack_length": 512})
    mixed, _ = mix_stores(tc, two_stores)
    plan, layout = build_plan(tc, mixed.lengths, 512, 1, 0)
    both = [row for g in range(plan.micro_batches_per_epoch) for row in plan.rows(g)[0]
            if len({int(mixed.source[i]) for i in row}) == 2]
    assert both, "no packed row holds examples of both dirs"
    row = both[0]
    batch = collate_packed(mixed, [row], pad_id=0).inputs
    at = 0
    for index in row:
        ids, labels = mixed.example(index)
        n = len(ids)
        assert batch["input_ids"][0, at : at + n].tolist() == ids.tolist()
        assert batch["position_ids"][0, at : at + n].tolist() == list(range(n))  # restarts: no crossing
        assert batch["labels"][0, at].item() == IGNORE_INDEX
        assert batch["labels"][0, at + 1 : at + n].tolist() == labels[1:].tolist()
        at += n


@pytest.mark.parametrize("world_size", [1, 2])
def test_source_tokens_count_every_real_token_once(two_stores, world_size):
    tc = mix_config((0.6, 0.4), "tokens").model_copy(update={"tokens_per_batch": 800})
    mixed, _ = mix_stores(tc, two_stores)
    plan, _ = build_plan(tc, mixed.lengths, 512, world_size, 0)
    tally = SourceTokens(plan, world_size, mixed, ["a", "b"])
    epoch = plan.micro_batches_per_epoch
    half = tally.upto(epoch // 2)
    full = tally.upto(epoch)
    fresh = SourceTokens(plan, world_size, mixed, ["a", "b"]).upto(epoch)  # a resumed run counts from scratch
    assert full == fresh
    for s, name in enumerate(["a", "b"]):
        assert full[f"train_tokens/{name}"] == int(mixed.lengths[mixed.source == s].sum())  # one epoch: all
        assert 0 < half[f"train_tokens/{name}"] < full[f"train_tokens/{name}"]


def test_names_of_a_mix_must_differ():
    with pytest.raises(ValueError, match="more than one entry"):
        TrainConfig(data=[{"dir": "x/data"}, {"dir": "y/data"}])
    TrainConfig(data=[{"dir": "x/data", "name": "x"}, {"dir": "y/data", "name": "y"}])


# --- real data dirs ------------------------------------------------------------------------------------------

def prepared(tmp: Path, tiny_dir: Path, name: str, source: Path, template: str) -> Path:
    cfg = make_config(tmp / name, tiny_dir, [{"path": str(source)}],
                      data={"template": template, "split": {"train": 0.8, "val": 0.2, "test": 0.0}})
    prepare.run(cfg)
    return Path(cfg.data.output_dir)


@pytest.fixture(scope="module")
def two_dirs(tmp_path_factory, tiny_dir) -> tuple[Path, Path]:
    """Alpaca in ChatML and the chat sample in the Instruct template: prepared once each."""
    tmp = tmp_path_factory.mktemp("mix_dirs")
    return (prepared(tmp, tiny_dir, "alpaca", EXAMPLES / "alpaca" / "alpaca_sample.jsonl", "chatml"),
            prepared(tmp, tiny_dir, "chat", EXAMPLES / "chat" / "messages_sample.jsonl", "instruct"))


def mix_run_config(tmp: Path, tiny_dir: Path, dirs: tuple[Path, Path], weights=(0.7, 0.3), **train):
    return make_config(tmp, tiny_dir, [], train={
        "data": [{"dir": str(dirs[0]), "weight": weights[0], "name": "alpaca"},
                 {"dir": str(dirs[1]), "weight": weights[1], "name": "chat"}], **train})


def test_a_dir_with_another_tokenizer_is_refused_naming_every_dir(tmp_path, tiny_dir, two_dirs, tokenizer):
    other = tmp_path / "other_tok"
    shutil.copytree(two_dirs[1], other)
    manifest = DataDir(other).manifest
    DataDir(other).write_manifest(manifest.model_copy(update={
        "tokenizer": manifest.tokenizer.model_copy(update={"sha256": "f" * 64, "name_or_path": "some/other"})}))
    cfg = mix_run_config(tmp_path, tiny_dir, (two_dirs[0], other))
    with pytest.raises(SftpipeError) as err:
        open_train_data(cfg, tokenizer, str(tiny_dir))
    message = str(err.value)
    assert f"alpaca ({two_dirs[0]})" in message and f"chat ({other})" in message
    assert manifest.tokenizer.sha256[:12] in message and "ffffffffffff" in message and "<- differs" in message
    assert message.count("<- differs") == 1
    open_train_data(mix_run_config(tmp_path, tiny_dir, two_dirs), tokenizer, str(tiny_dir))  # control: accepted


def test_changing_a_weight_or_a_dir_is_a_different_run(tmp_path, tiny_dir, two_dirs):
    cfg = mix_run_config(tmp_path, tiny_dir, two_dirs)
    saved = run_fingerprint(cfg, list(two_dirs), "tok", 1)
    assert fingerprint_differences(saved, run_fingerprint(cfg, list(two_dirs), "tok", 1)) == []
    reweighted = mix_run_config(tmp_path, tiny_dir, two_dirs, weights=(0.5, 0.5))
    diffs = fingerprint_differences(saved, run_fingerprint(reweighted, list(two_dirs), "tok", 1))
    assert len(diffs) == 1 and diffs[0].startswith("train.data:") and "0.7" in diffs[0] and "0.5" in diffs[0]
    swapped = list(reversed(two_dirs))
    diffs = fingerprint_differences(saved, run_fingerprint(mix_run_config(tmp_path, tiny_dir, swapped), swapped,
                                                           "tok", 1))
    assert any(d.startswith("train.data:") for d in diffs) and any(d.startswith("data (") for d in diffs)
    unit = mix_run_config(tmp_path, tiny_dir, two_dirs, mix_unit="tokens")
    assert [d.split(":")[0] for d in fingerprint_differences(
        saved, run_fingerprint(unit, list(two_dirs), "tok", 1))] == ["train.mix_unit"]


def test_a_two_dir_run_logs_per_dir_validation_and_train_tokens(tmp_path, tiny_dir, two_dirs):
    from sftpipe import stages

    cfg = mix_run_config(tmp_path, tiny_dir, two_dirs, packing=True, eval_every=2, max_steps=4)
    result = stages.train(cfg, resume="never")
    records = [json.loads(x) for x in RunDir(result.run_dir).metrics.read_text().splitlines()]
    validations = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in validations] == [0, 2, 4]
    for r in validations:
        per = {name: (r[f"val_loss/{name}"], r[f"val_tokens/{name}"]) for name in ("alpaca", "chat")}
        assert all(np.isfinite(loss) and tokens > 0 for loss, tokens in per.values())
        overall = sum(loss * tokens for loss, tokens in per.values()) / sum(t for _, t in per.values())
        assert r["val_loss"] == pytest.approx(overall, rel=1e-9)
        assert r["val_tokens"] == sum(t for _, t in per.values())
    seen = {r["step"]: r for r in records if "train_tokens/alpaca" in r}
    steps = {r["step"]: r for r in records if "loss" in r}
    assert sorted(seen) == [2, 4]
    for step, r in seen.items():  # per-dir train tokens add up to the run's own count of tokens seen
        assert r["train_tokens/alpaca"] > 0 and r["train_tokens/chat"] > 0
        assert r["train_tokens/alpaca"] + r["train_tokens/chat"] == steps[step]["tokens"]
    mix = RunDir(result.run_dir).manifest.data_mix
    assert mix is not None and [d.name for d in mix.dirs] == ["alpaca", "chat"]
    assert [d.template for d in mix.dirs] == ["chatml", "instruct"]
    epoch = sum(d.available_examples for d in mix.dirs)
    assert sum(d.examples for d in mix.dirs) == epoch  # an epoch is as large as both dirs together
    assert [d.achieved_share for d in mix.dirs] == pytest.approx([0.7, 0.3], abs=1 / epoch)  # samples: exact
    assert [d.examples / epoch for d in mix.dirs] == [d.achieved_share for d in mix.dirs]
    logged = next(r["data_mix"] for r in records if "data_mix" in r)
    assert logged["chat"]["examples"] == mix.dirs[1].examples


def test_validate_shows_the_planned_mix(tmp_path, tiny_dir, two_dirs):
    from sftpipe.preflight import validate

    result = validate.run(mix_run_config(tmp_path, tiny_dir, two_dirs))
    mix = [c for c in result.checks if c.name == "train mix"]
    assert [c.status for c in mix] == ["ok"] * 3, [c.detail for c in mix]
    alpaca, chat, total = (c.detail for c in mix)
    assert alpaca.startswith("alpaca (") and "template chatml" in alpaca and "epochs of the dir" in alpaca
    assert chat.startswith("chat (") and "template instruct" in chat
    assert "optimizer steps planned" in total
    assert not [c for c in result.checks if c.name == "data dir"]  # data.output_dir is not what trains
    assert [c.status for c in result.checks if c.name == "sources"] == ["skip"]
    missing = validate.run(mix_run_config(tmp_path, tiny_dir, (two_dirs[0], tmp_path / "nowhere")))
    failed = [c.detail for c in missing.failed if c.name == "train mix"]
    assert len(failed) == 1 and "nowhere" in failed[0] and "not a prepared data dir" in failed[0]


@pytest.mark.heavy  # ~50 s on 2 busy cores: four fresh interpreters over 4 k and 40 k examples
def test_mixed_stream_memory_stays_flat_from_1x_to_10x_data(tmp_path):
    """The benchmark at a small size: peak anonymous memory of 10x data (more dirs, bigger ones) within +20% of
    1x; the control (stores that copy the tokens into memory) grows past that, so the measurement can fail."""
    import subprocess
    import sys

    out = tmp_path / "memory.json"
    bench = Path(__file__).resolve().parents[2] / "benchmarks" / "mix_memory.py"
    proc = subprocess.run([sys.executable, str(bench), "--examples", "2000", "--workdir", str(tmp_path),
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ratios = json.loads(out.read_text())["ratios_10x_over_1x"]
    assert ratios["mapped"]["peak_anon"] < 1.2, ratios
    assert ratios["copy"]["peak_anon"] > 1.2, ratios  # control


def test_data_fingerprint_reads_content_not_how_it_is_cut_into_files(tmp_path):
    """The resume fingerprint of each dir is hashed one memory-mapped record batch at a time: the same examples
    cut into other shards hash alike, a changed label (a mask, not a token) does not."""
    from sftpipe.train.resume import data_fingerprint

    store = synthetic_store(300, 10, 60, 3, 7)
    rows = {"input_ids": [store.example(i)[0].tolist() for i in range(300)],
            "labels": [store.example(i)[1].tolist() for i in range(300)],
            **{k: [""] * 300 for k in ("source", "location", "messages", "meta")}}
    datasets.Dataset.from_dict(rows, features=FEATURES).save_to_disk(str(tmp_path / "one" / "train"))
    datasets.Dataset.from_dict(rows, features=FEATURES).save_to_disk(str(tmp_path / "many" / "train"),
                                                                      max_shard_size="4KB")
    assert len(list((tmp_path / "many" / "train").glob("*.arrow"))) > 3
    assert data_fingerprint(tmp_path / "many") == data_fingerprint(tmp_path / "one")
    rows["labels"][150] = [IGNORE_INDEX] * len(rows["labels"][150])
    datasets.Dataset.from_dict(rows, features=FEATURES).save_to_disk(str(tmp_path / "masked" / "train"))
    assert data_fingerprint(tmp_path / "masked") != data_fingerprint(tmp_path / "one")


def test_the_dry_run_steps_on_the_mix(tmp_path, tiny_dir, two_dirs):
    """`train --dry-run` reads what the run would read: the train.data dirs, not the unprepared data.output_dir."""
    from sftpipe.preflight import dry_run

    cfg = mix_run_config(tmp_path, tiny_dir, two_dirs, micro_batch_size=2)
    assert not DataDir(Path(cfg.data.output_dir)).is_prepared()
    result = dry_run.run(cfg)
    assert result.ran and not result.failed, [c.line() for c in result.failed]
    # the largest micro-batch is the two longest examples of both dirs together, padded
    lengths = sorted(int(n) for d in two_dirs for n in TokenStore(DataDir(d).load_split("train")).lengths)
    assert result.rows == 2 and result.tokens == 2 * lengths[-1]  # padded to the longest
