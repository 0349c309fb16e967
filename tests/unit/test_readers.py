import json

import datasets
import pytest

from sftpipe.config import SourceConfig
from sftpipe.data.readers import read_source
from sftpipe.data.records import RecordError
from sftpipe.errors import SftpipeError


def _read(path, **kw):
    return list(read_source(SourceConfig(path=str(path), **kw)))


def test_jsonl_bad_lines_become_errors_with_line_numbers(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "a", "completion": "b"}\n{bad json\n\n[1, 2]\n'
                     b'{"prompt": "\xff\xfe"}\n{"prompt": "c", "completion": "d"}\n')
    rows = _read(path)
    assert [loc.rsplit(":", 1)[1] for loc, _ in rows] == ["1", "2", "4", "5", "6"]
    kinds = [r.reason if isinstance(r, RecordError) else "ok" for _, r in rows]
    assert kinds == ["ok", "invalid_json", "not_an_object", "not_utf8", "ok"]
    assert rows[0][1] == {"prompt": "a", "completion": "b"}  # BOM stripped


def test_json_array_and_wrapper(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"data": [{"text": "a"}, {"text": "b"}]}))
    rows = _read(path)
    assert [r for _, r in rows] == [{"text": "a"}, {"text": "b"}]
    assert rows[1][0].endswith("d.json[1]")


def test_invalid_json_file_names_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n{"a": 1},\n{oops}\n]')
    with pytest.raises(SftpipeError, match=r"d.json:3: invalid JSON"):
        _read(path)


def test_csv_ragged_rows(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('question,answer\n"What, exactly?",Yes\nonly-one\na,b,c\n')
    rows = _read(path)
    assert rows[0][1] == {"question": "What, exactly?", "answer": "Yes"}
    assert [r.reason for _, r in rows[1:]] == ["ragged_row", "ragged_row"]
    assert rows[1][0].endswith("d.csv:3")


def test_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    datasets.Dataset.from_list([{"question": "q", "answer": "a"}] * 3).to_parquet(str(path))
    assert [r for _, r in _read(path)] == [{"question": "q", "answer": "a"}] * 3


def test_text_paragraphs_with_start_lines(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("first para\nstill first\n\n\nsecond\n")
    assert _read(path) == [(f"{path}:1", {"text": "first para\nstill first"}), (f"{path}:5", {"text": "second"})]


def test_saved_dataset_dir(tmp_path):
    datasets.Dataset.from_list([{"prompt": "p", "completion": "c"}]).save_to_disk(str(tmp_path / "ds"))
    assert [r for _, r in _read(tmp_path / "ds")] == [{"prompt": "p", "completion": "c"}]


def test_hf_dataset_through_load_dataset(tmp_path):
    """The real datasets.load_dataset path, on a local folder since no hub is reachable."""
    folder = tmp_path / "hub_like"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"question": "q1", "answer": "a1"}\n{"question": "q2", "answer": "a2"}\n')
    rows = list(read_source(SourceConfig(hf_dataset=str(folder))))
    assert [r["question"] for _, r in rows] == ["q1", "q2"]


def test_missing_file_and_bad_suffix(tmp_path):
    with pytest.raises(SftpipeError, match="not found"):
        _read(tmp_path / "nope.jsonl")
    (tmp_path / "d.xml").write_text("<a/>")
    with pytest.raises(SftpipeError, match="unsupported file type"):
        _read(tmp_path / "d.xml")


def test_source_needs_exactly_one_location():
    with pytest.raises(ValueError, match="exactly one"):
        SourceConfig()
