import json

import datasets
import pytest

from sftpipe.contracts.data_dir import DataDir, SourceCounts, tokenizer_sha256
from sftpipe.data import prepare
from sftpipe.errors import SftpipeError
from tests.conftest import make_config, write_jsonl

GOOD = [{"prompt": f"Question {i}?", "completion": f"Answer number {i}."} for i in range(40)]
BAD_LINES = [
    "{not json",
    {"prompt": "no completion"},
    {"prompt": "p", "completion": ""},
    {"prompt": ["list"], "completion": "c"},
    {"prompt": "p", "completion": "word " * 400},  # over max_length (256) -> too_long
]


def test_every_record_is_accounted_for(tmp_path, tiny_dir, tokenizer):
    path = write_jsonl(tmp_path / "in.jsonl", GOOD[:20] + BAD_LINES + GOOD[20:])
    cfg = make_config(tmp_path, tiny_dir, [{"path": str(path)}])
    result = prepare.run(cfg)
    kept = sum(s.examples for s in result.splits.values())
    assert result.records_read == 45
    assert kept == 40 and sum(result.rejected.values()) == 5
    assert result.rejected == {"invalid_json": 1, "missing_field": 1, "empty_response": 1, "wrong_type": 1,
                               "too_long": 1}
    out = cfg.data.output_dir
    rejected = [json.loads(x) for x in (tmp_path / "data" / "rejected.jsonl").read_text().splitlines()]
    assert sorted(r["location"].rsplit(":", 1)[1] for r in rejected) == ["21", "22", "23", "24", "25"]
    manifest = DataDir(tmp_path / "data").manifest
    assert manifest.tokenizer.sha256 == tokenizer_sha256(tokenizer)
    assert manifest.rejected == dict(sorted(result.rejected.items()))
    assert manifest.sources["in.jsonl"] == SourceCounts(read=45, kept=40, rejected=5)
    card = (tmp_path / "data" / "DATA_CARD.md").read_text()
    assert "| too_long | 1 |" in card and tokenizer_sha256(tokenizer) in card
    splits = {s: datasets.load_from_disk(f"{out}/{s}") for s in ("train", "val", "test")}
    assert {s: len(d) for s, d in splits.items()} == {"train": 32, "val": 4, "test": 4}
    row = splits["train"][0]
    assert len(row["input_ids"]) == len(row["labels"]) and json.loads(row["messages"])[0]["role"] == "user"


def test_split_is_deterministic_and_disjoint(tmp_path, tiny_dir):
    path = write_jsonl(tmp_path / "in.jsonl", GOOD)
    firsts = []
    for run in range(2):
        cfg = make_config(tmp_path / str(run), tiny_dir, [{"path": str(path)}])
        prepare.run(cfg)
        locs = {s: set(datasets.load_from_disk(f"{cfg.data.output_dir}/{s}")["location"]) for s in ("train", "val", "test")}
        assert not (locs["train"] & locs["test"]) and not (locs["train"] & locs["val"])
        firsts.append(locs)
    assert firsts[0] == firsts[1]
    cfg = make_config(tmp_path / "other", tiny_dir, [{"path": str(path)}], data={"split": {"seed": 99}})
    prepare.run(cfg)
    assert set(datasets.load_from_disk(f"{cfg.data.output_dir}/test")["location"]) != firsts[0]["test"]


def test_strict_mode_stops_at_first_problem_with_location(tmp_path, tiny_dir):
    path = write_jsonl(tmp_path / "in.jsonl", GOOD[:3] + ["{oops"] + GOOD[3:])
    cfg = make_config(tmp_path, tiny_dir, [{"path": str(path)}], data={"on_error": "raise"})
    with pytest.raises(SftpipeError, match=r"in.jsonl:4: invalid_json"):
        prepare.run(cfg)
    assert not (tmp_path / "data").exists()


def test_empty_source_is_an_error(tmp_path, tiny_dir):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(SftpipeError, match="has no records"):
        prepare.run(make_config(tmp_path, tiny_dir, [{"path": str(path)}]))


def test_empty_train_split_is_an_error_naming_what_happened(tmp_path, tiny_dir):
    # exact duplicates share a split: all 50 land in val, and dedup keeps one of them there
    path = write_jsonl(tmp_path / "in.jsonl", [GOOD[0]] * 50)
    cfg = make_config(tmp_path, tiny_dir, [{"path": str(path)}])
    with pytest.raises(SftpipeError, match=r"the train split is empty: of 50 records read, 1 went to val and 0 to "
                                           r"test; rejected: exact_duplicate 49") as info:
        prepare.run(cfg)
    assert "data.split.val" in str(info.value) and str(tmp_path / "data.failed" / "rejected.jsonl") in str(info.value)
    assert not (tmp_path / "data").exists()
    assert DataDir(tmp_path / "data.failed").manifest.splits["val"].examples == 1
    # a later run that succeeds removes the report of the failed one
    write_jsonl(path, GOOD)
    prepare.run(cfg)
    assert (tmp_path / "data").is_dir() and not (tmp_path / "data.failed").exists()


def test_no_train_split_asked_for_is_not_an_error_but_nothing_kept_is(tmp_path, tiny_dir):
    path = write_jsonl(tmp_path / "in.jsonl", [GOOD[0]] * 5)
    eval_only = {"split": {"train": 0.0, "val": 0.0, "test": 1.0}}
    result = prepare.run(make_config(tmp_path / "a", tiny_dir, [{"path": str(path)}], data=eval_only))
    assert result.splits["test"].examples == 1 and result.rejected == {"exact_duplicate": 4}
    write_jsonl(path, [{"prompt": "no completion"}] * 5)
    with pytest.raises(SftpipeError, match=r"prepare kept none of the 5 records read; rejected: unknown_format 5\. "
                                           r"First .*in.jsonl:1: unknown_format: fields \['prompt'\] match no known"):
        prepare.run(make_config(tmp_path / "b", tiny_dir, [{"path": str(path)}], data=eval_only))


def test_truncate_policy_counts_truncations(tmp_path, tiny_dir):
    path = write_jsonl(tmp_path / "in.jsonl", GOOD[:10] + [{"prompt": "p", "completion": "word " * 400}])
    cfg = make_config(tmp_path, tiny_dir, [{"path": str(path)}], data={"overlong": "truncate",
                                                                       "split": {"train": 1.0, "val": 0.0, "test": 0.0}})
    result = prepare.run(cfg)
    assert result.splits["train"].truncated == 1 and result.splits["train"].examples == 11
    assert result.splits["train"].max_tokens == 256


class _EncodeSpy:
    """The tokenizer's Rust backend, recording the length of every text it is asked to tokenize."""

    def __init__(self, backend, lengths: list[int]):
        self.backend, self.lengths = backend, lengths

    def encode_batch(self, texts, **kwargs):
        self.lengths.extend(len(t) for t in texts)
        return self.backend.encode_batch(texts, **kwargs)

    def __getattr__(self, name):
        return getattr(self.backend, name)


def test_huge_record_is_dropped_as_too_long_without_tokenizing_it(tmp_path, tiny_dir, monkeypatch):
    from sftpipe.data import tokenize

    lengths: list[int] = []
    real = tokenize.plain_backend
    monkeypatch.setattr(tokenize, "plain_backend", lambda tok: _EncodeSpy(real(tok), lengths))
    huge = {"prompt": "Say it many times.", "completion": "again " * 850_000}  # 5.1 MB
    path = write_jsonl(tmp_path / "in.jsonl", GOOD[:10] + [BAD_LINES[-1], huge])
    cfg = make_config(tmp_path, tiny_dir, [{"path": str(path)}],
                      data={"split": {"train": 1.0, "val": 0.0, "test": 0.0}, "num_proc": 1})
    result = prepare.run(cfg)
    assert result.records_read == 12 and result.splits["train"].examples == 10
    assert result.rejected == {"too_long": 2} and result.removed_by_stage == {"tokenize": {"too_long": 2}}
    assert lengths and max(lengths) < 10_000  # the huge text never reached the tokenizer
    just_over, huge_entry = [json.loads(x) for x in (tmp_path / "data" / "rejected.jsonl").read_text().splitlines()]
    assert (just_over["location"], huge_entry["location"]) == (f"{path}:11", f"{path}:12")
    assert just_over.keys() == huge_entry.keys()  # the same entry, whichever way the length was found
    assert {k: v for k, v in huge_entry.items() if k not in ("location", "detail", "excerpt")} == \
        {k: v for k, v in just_over.items() if k not in ("location", "detail", "excerpt")}
    assert all("tokens" in e["detail"] and "> data.max_length 256 (data.overlong: drop)" in e["detail"]
               for e in (just_over, huge_entry))
    assert len(huge_entry["excerpt"]) == 500
    assert DataDir(tmp_path / "data").manifest.sources["in.jsonl"] == SourceCounts(read=12, kept=10, rejected=2)


def test_all_shipped_samples_prepare_without_rejections(tmp_path, tiny_dir):
    from tests.conftest import EXAMPLES

    sources = [
        {"path": str(EXAMPLES / "alpaca" / "alpaca_sample.jsonl")},
        {"path": str(EXAMPLES / "chat" / "messages_sample.jsonl")},
        {"path": str(EXAMPLES / "chat" / "sharegpt_sample.jsonl")},
        {"path": str(EXAMPLES / "qa" / "qa_sample.jsonl")},
        {"path": str(EXAMPLES / "qa" / "qa_sample.csv"), "name": "qa-csv"},
        {"path": str(EXAMPLES / "prompt_completion" / "pc_sample.jsonl")},
        {"path": str(EXAMPLES / "text" / "plain_sample.txt")},
        {"path": str(EXAMPLES / "code" / "python_code.jsonl"), "code_language": "python"},
        {"path": str(EXAMPLES / "haskell" / "problems.jsonl"), "format": "code", "fields": {"code": "solution"}},
    ]
    result = prepare.run(make_config(tmp_path, tiny_dir, sources, data={"max_length": 1024}))
    # qa_sample.csv is documented as the first 20 records of qa_sample.jsonl: dedup across sources removes
    # exactly those copies (the later source's), and nothing else is rejected.
    assert result.rejected == {"exact_duplicate": 20}
    rejected = [json.loads(x) for x in (tmp_path / "data" / "rejected.jsonl").read_text().splitlines()]
    assert {r["source"] for r in rejected} == {"qa-csv"}
    assert all("qa_sample.jsonl:" in r["duplicate_of"] for r in rejected)
    assert result.records_read == sum(s.examples for s in result.splits.values()) + 20 >= 300
