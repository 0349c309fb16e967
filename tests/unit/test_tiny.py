"""The tiny tokenizer's corpus: every file named is read or is an error naming it, never skipped silently."""

import json

import pytest

from sftpipe.errors import SftpipeError
from sftpipe.models.tiny import corpus_texts, init_tiny


def test_json_corpus_file_gives_its_strings(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"data": [{"q": "first", "n": 3, "tags": ["second", {"deep": "third"}]}]}))
    assert list(corpus_texts([path])) == ["first", "second", "third"]


def test_init_tiny_learns_merges_from_a_json_corpus(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps([{"text": f"the quick brown fox number {i} jumps over the lazy dog"}
                                for i in range(50)]))
    result = init_tiny(tmp_path / "tiny", size="micro", corpus=[path], vocab_size=300)
    assert result.vocab_size > 261  # 256 bytes + 5 special tokens: nothing learned from an ignored file


@pytest.mark.parametrize(("name", "content", "message"), [
    ("x.parquet", "PAR1", "unsupported corpus file type '.parquet'"),
    ("x.txt", "", "holds no text"),
    ("x.jsonl", "\n  \n", "holds no text"),
    ("x.json", "[1, 2, {\"n\": null}]", "holds no text"),
    ("x.jsonl", '{"a": "fine"}\n{"a": oops}\n', r"x.jsonl:2: invalid JSON"),
    ("x.json", '{"a": ', r"x.json:1: invalid JSON"),
])
def test_unusable_corpus_file_is_an_error_naming_it(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(SftpipeError, match=message) as info:
        list(corpus_texts([path]))
    assert str(path) in str(info.value)


def test_directory_gives_its_files_of_corpus_types_and_must_hold_one(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jsonl").write_text('{"t": "beta"}\n')
    (tmp_path / "sub" / "notes.yaml").write_text("not: corpus")
    assert list(corpus_texts([tmp_path])) == ["alpha", "beta"]
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "c.yaml").write_text("x: 1")
    with pytest.raises(SftpipeError, match=r"none: no corpus file \(.jsonl, .json"):
        list(corpus_texts([tmp_path / "none"]))
