"""Dedup and decontamination: near-duplicates never straddle train and val/test, n-gram overlap with eval
sets is removed from train, and every removal is counted."""

import json
import random

import datasets
import numpy as np
import pytest

from sftpipe.contracts.data_dir import DataDir, Overlap, SourceCounts
from sftpipe.data import prepare
from sftpipe.data.prepare.fingerprint import NgramIndex, Signer, compared_turns, content_hash
from sftpipe.data.records import Conversation
from tests.conftest import distinct_records, write_jsonl
from tests.conftest import make_config as _make_config


def make_config(tmp, tiny_dir, sources, data=None):
    return _make_config(tmp, tiny_dir, sources, data={"max_length": 1024, **(data or {})})


def _split_members(out) -> dict[str, set[str]]:
    return {s: {loc.rsplit(":", 1)[1] for loc in datasets.load_from_disk(f"{out}/{s}")["location"]}
            for s in ("train", "val", "test")}


def _rejected(out) -> list[dict]:
    return [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]


def _near_copy(record: dict, rng: random.Random) -> dict:
    words = record["completion"].split()
    words[rng.randrange(len(words))] = "changedword"
    return {"prompt": record["prompt"], "completion": " ".join(words)}


def test_planted_near_duplicates_across_train_and_test_are_removed_from_train(tmp_path, tiny_dir):
    rng = random.Random(0)
    base = distinct_records(150, seed=1, words=100)  # one word changed: Jaccard 0.95, 5 sigma above 0.85
    copies = [_near_copy(r, rng) for r in base]
    path = write_jsonl(tmp_path / "in.jsonl", base + copies)  # line i and line 150 + i are a planted pair
    pairs = [(str(i + 1), str(i + 151)) for i in range(150)]

    # Negative control: without near-dedup the same split puts planted pairs on both sides.
    control = make_config(tmp_path / "control", tiny_dir, [{"path": str(path)}], data={"dedup": {"near": False}})
    prepare.run(control)
    before = _split_members(control.data.output_dir)
    held_out = before["val"] | before["test"]
    straddling = [(a, b) for a, b in pairs if (a in before["train"] and b in held_out)
                  or (b in before["train"] and a in held_out)]
    assert len(straddling) >= 10

    cfg = make_config(tmp_path / "dedup", tiny_dir, [{"path": str(path)}])
    result = prepare.run(cfg)
    after = _split_members(cfg.data.output_dir)
    held_out = after["val"] | after["test"]
    for a, b in pairs:
        assert not ((a in after["train"] and b in held_out) or (b in after["train"] and a in held_out)), (a, b)
    # exactly the less protected copy (train < val < test) of each pair split apart went, naming its twin
    removed = {r["location"].rsplit(":", 1)[1]: r for r in _rejected(tmp_path / "dedup" / "data")}
    rank = {loc: order for order, split in enumerate(("train", "val", "test")) for loc in before[split]}
    expected = {min(a, b, key=rank.get) for a, b in pairs if rank[a] != rank[b]}
    contaminated = {loc for loc, r in removed.items() if r["reason"] == "contamination_near"}
    assert contaminated == expected and {a if a in before["train"] else b for a, b in straddling} <= expected
    twins = dict(pairs + [(b, a) for a, b in pairs])
    for loc in contaminated:
        assert removed[loc]["duplicate_of"].endswith(f":{twins[loc]}")
        assert removed[loc]["against"] in ("val", "test") and removed[loc]["similarity"] >= 0.85
    # pairs inside one split lose one copy as a plain near duplicate; nothing else is removed
    assert result.rejected["near_duplicate"] + result.rejected["contamination_near"] == 150
    assert set(result.rejected) <= {"near_duplicate", "contamination_near"}
    # the split is made before dedup: val/test keep exactly the records the control run put there
    assert after["val"] | after["test"] <= before["val"] | before["test"]


def test_exact_duplicates_after_normalisation_are_removed_within_and_across_sources(tmp_path, tiny_dir):
    records = distinct_records(20, seed=2)
    variant = {"prompt": "  " + records[3]["prompt"].upper(),
               "completion": records[3]["completion"].replace(" ", "\n ")}
    a = write_jsonl(tmp_path / "a.jsonl", records + [records[5]])
    b = write_jsonl(tmp_path / "b.jsonl", [records[7], variant, *distinct_records(5, seed=3)])
    result = prepare.run(make_config(tmp_path, tiny_dir, [{"path": str(a)}, {"path": str(b)}]))
    assert result.rejected == {"exact_duplicate": 3}
    removed = _rejected(tmp_path / "data")
    assert sorted((r["source"], r["duplicate_of"].rsplit("/", 1)[1]) for r in removed) == [
        ("a.jsonl", "a.jsonl:6"), ("b.jsonl", "a.jsonl:4"), ("b.jsonl", "a.jsonl:8")]
    manifest = DataDir(tmp_path / "data").manifest
    assert manifest.sources["b.jsonl"] == SourceCounts(read=7, kept=5, rejected=2)


def test_records_below_the_threshold_are_kept(tmp_path, tiny_dir):
    rng = random.Random(1)
    base = distinct_records(30, seed=4, words=20)
    far = []
    for r in base:  # a third of the words changed: Jaccard of 3-word shingles far below 0.85
        words = r["completion"].split()
        for i in rng.sample(range(len(words)), 7):
            words[i] = f"other{i}"
        far.append({"prompt": r["prompt"] + " again", "completion": " ".join(words)})
    path = write_jsonl(tmp_path / "in.jsonl", base + far)
    assert prepare.run(make_config(tmp_path, tiny_dir, [{"path": str(path)}])).rejected == {}


def test_signatures_estimate_jaccard_and_hash_ignores_system_case_and_spacing():
    signer = Signer(256, 3)
    words = [f"word{i}" for i in range(100)]
    changed = list(words)
    changed[50] = "other"
    estimate = float(np.mean(signer(words) == signer(changed)))
    assert abs(estimate - 95 / 101) < 0.06  # 3 of 98 shingles differ: Jaccard 95/101
    assert float(np.mean(signer(words) == signer([f"x{i}" for i in range(100)]))) < 0.05

    def conv(system, user):
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}, {"role": "assistant", "content": "Answer."}]
        return Conversation(messages, "s", "l")

    assert content_hash(compared_turns(conv("Be brief.", "Hello  World"))) == content_hash(
        compared_turns(conv(None, "hello world")))
    assert content_hash(compared_turns(conv(None, "hello world"))) != content_hash(
        compared_turns(conv(None, "hello world!")))


def test_ngram_index_matches_long_runs_and_short_texts_whole():
    index = NgramIndex(5)
    index.add("the quick brown fox jumps over the lazy dog".split(), 1)
    index.add("reverse a list".split(), 2)
    assert index.find("so the quick brown fox jumps high".split()) == 1
    assert index.find("how do i reverse a list in haskell".split()) == 2
    assert index.find("the quick brown fox sleeps over the lazy dog".split()) is None  # no 5-word run shared
    assert index.find("reverse the list".split()) is None


def test_train_records_overlapping_an_eval_set_are_removed(tmp_path, tiny_dir):
    bench = [{"task_id": "t1", "prompt": "Write a function that returns the sum of the squares of all odd "
                                        "numbers in a list of integers"},
             {"task_id": "t2", "prompt": "Check whether a string is a palindrome"}]
    eval_path = write_jsonl(tmp_path / "bench.jsonl", bench)
    records = distinct_records(30, seed=5)
    records[4] = {"prompt": "Please: write a function that returns the sum of the squares of all odd numbers "
                            "in a list of integers, in Haskell.", "completion": "sumOddSquares = sum . map (^2)"}
    records[9] = {"prompt": "check whether a STRING is a palindrome", "completion": "isPal s = s == reverse s"}
    records[12] = {"prompt": "Write a function that returns the product of a list", "completion": "product"}  # kept
    path = write_jsonl(tmp_path / "in.jsonl", records)
    cfg = make_config(tmp_path, tiny_dir, [{"path": str(path)}], data={
        "split": {"train": 1.0, "val": 0.0, "test": 0.0},
        "decontam": {"ngram": 8, "eval_sets": [{"path": str(eval_path), "fields": ["prompt"], "name": "bench"}]}})
    result = prepare.run(cfg)
    assert result.rejected == {"contamination_ngram": 2}
    removed = sorted(_rejected(tmp_path / "data"), key=lambda r: r["location"])
    assert [r["location"].rsplit(":", 1)[1] for r in removed] == ["10", "5"]
    assert [r["against"] for r in removed] == ["eval:bench", "eval:bench"]
    assert removed[0]["duplicate_of"].endswith("bench.jsonl:2") and removed[1]["duplicate_of"].endswith("bench.jsonl:1")
    manifest = DataDir(tmp_path / "data").manifest
    assert manifest.overlaps == [Overlap(reason="contamination_ngram", against="eval:bench", count=2)]
    assert "| contamination_ngram | eval:bench | 2 |" in (tmp_path / "data" / "DATA_CARD.md").read_text()


@pytest.mark.parametrize("against_splits", [False, True])
def test_ngram_overlap_with_val_and_test_only_when_asked(tmp_path, tiny_dir, against_splits):
    rng = random.Random(3)
    base = distinct_records(60, seed=6, words=40)
    carriers = []
    for r in base:  # shares a 15-word run with its base record, otherwise unrelated
        run = r["completion"].split()[10:25]
        carriers.append({"prompt": "Tell me more " + " ".join(rng.choices(["alpha", "beta", "gamma"], k=5)),
                         "completion": " ".join([f"pre{i}" for i in range(30)] + run
                                                + [f"post{i}" for i in range(30)])})
    path = write_jsonl(tmp_path / "in.jsonl", base + carriers)
    cfg = make_config(tmp_path, tiny_dir, [{"path": str(path)}],
                      data={"decontam": {"ngram_against_splits": against_splits}})
    result = prepare.run(cfg)
    members = _split_members(cfg.data.output_dir)
    crossing = [str(i + 61) for i in range(60) if str(i + 1) in members["val"] | members["test"]]
    assert crossing  # some bases land in val/test
    if against_splits:
        assert not any(c in members["train"] for c in crossing)
        assert result.rejected["contamination_ngram"] >= len(crossing) > 0
    else:  # negative control: the carriers stay in train
        assert all(c in members["train"] for c in crossing) and "contamination_ngram" not in result.rejected


def test_every_removal_is_counted_once(tmp_path, tiny_dir):
    rng = random.Random(7)
    base = distinct_records(80, seed=8, words=100)
    lines = base + [base[0], base[1]] + [_near_copy(r, rng) for r in base[10:30]] + [
        "{broken json", {"prompt": "p"}, {"prompt": "Spam?", "completion": "\n".join(["same long line of spam"] * 5)},
        {"prompt": "p", "completion": "word " * 1100}]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    result = prepare.run(make_config(tmp_path, tiny_dir, [{"path": str(path)}]))
    out = tmp_path / "data"
    kept = sum(s.examples for s in result.splits.values())
    total = sum(result.rejected.values())
    assert result.records_read == len(lines) == kept + total
    assert result.rejected["exact_duplicate"] == 2
    assert result.rejected["near_duplicate"] + result.rejected["contamination_near"] == 20
    assert {k: result.rejected[k] for k in ("invalid_json", "missing_field", "repeated_lines", "too_long")} == {
        "invalid_json": 1, "missing_field": 1, "repeated_lines": 1, "too_long": 1}
    rejected = _rejected(out)
    assert len(rejected) == total and len({r["location"] for r in rejected}) == total  # each once
    manifest = DataDir(out).manifest
    assert manifest.rejected == dict(sorted(result.rejected.items()))
    assert sum(sum(v.values()) for v in manifest.removed_by_stage.values()) == total
    assert manifest.sources["in.jsonl"] == SourceCounts(read=len(lines), kept=kept, rejected=total)
    locations = {loc for s in ("train", "val", "test") for loc in datasets.load_from_disk(f"{out}/{s}")["location"]}
    assert not locations & {r["location"] for r in rejected} and len(locations) == kept


def test_repeated_marks_exactly_the_values_that_occur_twice_or_more():
    from sftpipe.data.prepare.fingerprint import repeated

    values = np.array([5, 3, 5, 9, 1, 3, 3, 7], dtype=np.uint64)
    assert repeated(values).tolist() == [True, True, True, False, False, True, True, False]
    assert not repeated(np.arange(10, dtype=np.uint64)).any()


def test_only_band_colliding_rows_are_candidates(tmp_path):
    from sftpipe.data.prepare.fingerprint import NearDuplicateIndex, SignatureStore

    signer = Signer(128, 3)
    words = [[f"t{k}w{i}" for i in range(40)] for k in range(50)]
    near = list(words[7])
    near[20] = "changed"
    store = SignatureStore(tmp_path / "sig.u32", 128)
    store.append(np.stack([signer(w) for w in [*words, near]]))
    store.finish_writing()
    index = NearDuplicateIndex(0.85, 128, store)
    colliding = index.colliding_rows(51, tmp_path)
    store.close()
    assert np.flatnonzero(colliding).tolist() == [7, 50]  # the planted pair, and nothing unrelated
