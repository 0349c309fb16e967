import json
import pickle

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


def test_csv_unclosed_quote_is_reported_on_the_line_it_opens_with_its_text(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('question,answer\n"What is, this,answer\nsecond,line\n')
    [(where, err)] = _read(path)
    assert where == f"{path}:2" and err.reason == "bad_csv"
    assert "(lines 2-3)" in err.detail and err.excerpt == '"What is, this,answer'
    assert pickle.loads(pickle.dumps(err)).excerpt == err.excerpt  # as it travels to prepare's workers


def test_csv_bad_rows_in_a_row_each_name_their_own_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b'question,answer\r\n"a"b,c\r\n\r\n"\xffd"e,f\r\nq,a\r\n')
    rows = _read(path)
    assert [(loc.rsplit(":", 1)[1], getattr(r, "reason", "ok")) for loc, r in rows] == [
        ("2", "bad_csv"), ("4", "bad_csv"), ("5", "ok")]
    assert [r.excerpt for _, r in rows[:2]] == ['"a"b,c', '"\ufffdd"e,f']  # bytes that are not UTF-8 shown as U+FFFD
    assert "(lines 4-4)" in rows[1][1].detail


def test_csv_header_that_cannot_be_read_is_a_file_error(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('"question"x,answer\nq,a\n')
    with pytest.raises(SftpipeError, match=r"d.csv:1: the header row cannot be read"):
        _read(path)


@pytest.mark.parametrize(("line", "detail"), [
    ('{"prompt": "a", "completion": "b"', "Expecting ',' delimiter at line 2, column 34"),
    ('{"prompt": "a\x01b", "completion": "b"}', "Invalid control character at line 2, column 14"),
    ('{"prompt": "abc', "Unterminated string starting at line 2, column 12"),
])
@pytest.mark.parametrize("ending", ["\n", "\r\n", ""])
def test_jsonl_errors_name_the_line_and_true_column(tmp_path, line, detail, ending):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "p", "completion": "c"}\n' + line + ending, encoding="utf-8", newline="")
    [_, (where, err)] = _read(path)
    assert where == f"{path}:2" and err.reason == "invalid_json" and err.detail == detail


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


# --- .json arrays are streamed: the same records as parsing the whole file, one record in memory at a time ---

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sftpipe.data import readers  # noqa: E402

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**30, 10**30) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)
# mostly records, some bare values (numbers cut by a chunk boundary parse short: "12|3" must not give 12)
records = st.lists(st.dictionaries(st.text(max_size=8), json_values, max_size=5) | json_values, max_size=8)


@settings(max_examples=120, deadline=None)
@given(records=records, indent=st.sampled_from([None, 0, 1, 3]), chunk=st.integers(1, 24),
       wrapped=st.booleans(), ascii_only=st.booleans())
def test_streamed_json_array_equals_whole_file_parse(tmp_path_factory, monkeypatch_module, records, indent, chunk,
                                                     wrapped, ascii_only):
    path = tmp_path_factory.mktemp("json") / "d.json"
    text = json.dumps({"data": records} if wrapped else records, indent=indent, ensure_ascii=ascii_only)
    path.write_text(text, encoding="utf-8")
    monkeypatch_module.setattr(readers._JsonStream, "CHUNK", chunk)  # boundaries inside every kind of token
    comparable = lambda rows: [(loc, r if isinstance(r, dict) else str(r)) for loc, r in rows]  # noqa: E731
    assert comparable(_read(path)) == comparable((f"{path}[{i}]", readers._as_object(r, None)) for i, r in enumerate(records))


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_streamed_json_numbers_cut_at_every_position(tmp_path, monkeypatch):
    text = '[0.5, 12, -3e+2, 1E-2, 7, {"n": 10.25}, 123456789]'
    path = tmp_path / "d.json"
    path.write_text(text)
    expected = [str(readers._as_object(v, None)) if not isinstance(v, dict) else v for v in json.loads(text)]
    for chunk in range(1, len(text) + 1):  # every boundary, inside every number
        monkeypatch.setattr(readers._JsonStream, "CHUNK", chunk)
        got = [r if isinstance(r, dict) else str(r) for _, r in _read(path)]
        assert got == expected, chunk


@pytest.mark.parametrize("chunk", [1, 3, 1 << 20])
@pytest.mark.parametrize(("text", "message"), [
    ('[\n{"a": 1},\n{oops}\n]', r"d.json:3: invalid JSON \(Expecting property name"),
    ('[\n{"a": 1}\n{"b": 2}\n]', r"d.json:3: invalid JSON \(Expecting ',' delimiter"),
    ('[{"a": 1}]\n\nxyz', r"d.json:3: invalid JSON \(Extra data"),
    ('[{"a": 1},', r"d.json:1: invalid JSON \(Expecting value"),
    ("", r"d.json:1: invalid JSON \(Expecting value"),
    ('{"a": [], "b": []}', r"expected a JSON array of records, got dict"),
    ('{"a": 5}', r"expected a JSON array of records, got dict"),
    ("12345", r"expected a JSON array of records, got int"),
    ('"text"', r"expected a JSON array of records, got str"),
])
def test_streamed_json_errors_name_the_line(tmp_path, monkeypatch, chunk, text, message):
    monkeypatch.setattr(readers._JsonStream, "CHUNK", chunk)
    path = tmp_path / "d.json"
    path.write_text(text)
    with pytest.raises(SftpipeError, match=message):
        _read(path)


@pytest.mark.parametrize("chunk", [1, 3, 1 << 20])
def test_streamed_json_error_gives_the_whole_message_with_line_and_column(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(readers._JsonStream, "CHUNK", chunk)
    path = tmp_path / "d.json"
    path.write_text('[\n{"a": 1},\n  {"b": "never closed')
    with pytest.raises(SftpipeError, match=r"d.json:3: invalid JSON \(Unterminated string starting at line 3, "
                                           r"column 9\)"):
        _read(path)


def test_streamed_json_yields_records_before_reading_the_rest(tmp_path, monkeypatch):
    # a parse of the whole file would fail before the first record; the stream hands out the good ones first
    monkeypatch.setattr(readers._JsonStream, "CHUNK", 64)
    path = tmp_path / "d.json"
    path.write_text("[" + ",\n".join(json.dumps({"text": f"record {i}"}) for i in range(200)) + ",\n{broken")
    rows = readers._read_json(path)
    assert [next(rows)[1]["text"] for _ in range(3)] == ["record 0", "record 1", "record 2"]
    assert len(list(zip(range(197), rows))) == 197
    with pytest.raises(SftpipeError, match=r"d.json:201: invalid JSON"):
        next(rows)


@pytest.mark.parametrize("chunk", [1, 2, 5, 7, 1 << 20])  # the BOM, a split multi-byte character, whole file
def test_streamed_json_names_the_byte_that_is_not_utf8(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(readers._JsonStream, "CHUNK", chunk)
    path = tmp_path / "d.json"
    data = b'\xef\xbb\xbf[{"text": "caf\xc3\xa9"}, {"text": "\xff"}]'
    path.write_bytes(data)
    bad = data.index(b"\xff")
    with pytest.raises(SftpipeError, match=rf"not UTF-8 \(byte {bad}\)"):
        _read(path)


def test_text_is_read_line_by_line_with_the_same_breaks_as_splitlines(tmp_path):
    text = "\ufeffone\r\ntwo\x0cthree\n\n\u2028\nfour\rfive\n\n\nsix"
    path = tmp_path / "d.txt"
    path.write_text(text, encoding="utf-8", newline="")
    expected, start, block = [], 0, []
    for n, line in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
        if line.strip():
            start = start if block else n
            block.append(line)
        elif block:
            expected.append((f"{path}:{start}", {"text": "\n".join(block)}))
            block = []
    expected.append((f"{path}:{start}", {"text": "\n".join(block)}))
    assert _read(path) == expected
    assert [loc.rsplit(":", 1)[1] for loc, _ in expected] == ["1", "7", "11"]
