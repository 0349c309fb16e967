import pytest

from sftpipe.config import SourceConfig
from sftpipe.data.formats import detect_format, to_conversation
from sftpipe.data.records import RecordError

SRC = SourceConfig(path="x.jsonl")

CASES = [
    ("alpaca", {"instruction": "Add", "input": "1 2", "output": "3"},
     [("user", "Add\n\n1 2"), ("assistant", "3")]),
    ("alpaca", {"instruction": "Hi", "input": "", "output": "Hello"}, [("user", "Hi"), ("assistant", "Hello")]),
    ("messages", {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                               {"role": "assistant", "content": "A"}, {"role": "user", "content": "U2"},
                               {"role": "assistant", "content": "A2"}]},
     [("system", "S"), ("user", "U"), ("assistant", "A"), ("user", "U2"), ("assistant", "A2")]),
    ("sharegpt", {"conversations": [{"from": "human", "value": "U"}, {"from": "gpt", "value": "A"}]},
     [("user", "U"), ("assistant", "A")]),
    ("qa", {"question": "Q?", "answer": "A.", "source": "faq"}, [("user", "Q?"), ("assistant", "A.")]),
    ("prompt_completion", {"prompt": "P", "completion": "C"}, [("user", "P"), ("assistant", "C")]),
]


@pytest.mark.parametrize("fmt,record,expected", CASES)
def test_formats_become_canonical_conversations(fmt, record, expected):
    assert detect_format(record, SRC) == fmt
    conv = to_conversation(record, fmt, SRC, "x.jsonl:1", None)
    assert [(m["role"], m["content"]) for m in conv.messages] == expected
    assert conv.location == "x.jsonl:1" and conv.kind == "chat"


def test_code_record_gets_expert_system_prompt_and_fence():
    src = SourceConfig(path="h.jsonl", format="code", fields={"code": "solution"})
    rec = {"instruction": "Write f.", "solution": "f :: Int -> Int\nf = id", "id": "hs_1", "tests": "main = pure ()"}
    conv = to_conversation(rec, "code", src, "h.jsonl:3", None)
    assert conv.messages[0]["content"].startswith("You are an expert Haskell programmer")
    assert conv.messages[-1]["content"] == "```haskell\nf :: Int -> Int\nf = id\n```"
    assert conv.meta == {"id": "hs_1", "tests": "main = pure ()"}


def test_code_record_without_instruction():
    conv = to_conversation({"code": "x = 1"}, "code", SRC, "l", None)
    assert conv.messages[1] == {"role": "user", "content": "Write idiomatic Haskell code."}


@pytest.mark.parametrize(("source_prompt", "data_prompt", "expected"), [
    ("Answer in Python 3.12.", "Be brief.", "Answer in Python 3.12."),
    (None, "Be brief.", "Be brief."),
    (None, None, "You are an expert Python programmer. Answer with code in a fenced block."),
])
def test_code_record_system_prompt_source_over_data_over_builtin(source_prompt, data_prompt, expected):
    src = SourceConfig(path="c.jsonl", format="code", code_language="python", system_prompt=source_prompt)
    conv = to_conversation({"code": "x = 1"}, "code", src, "c.jsonl:1", data_prompt)
    assert conv.messages[0] == {"role": "system", "content": expected}
    assert [m["role"] for m in conv.messages] == ["system", "user", "assistant"]


def test_qa_keeps_source_as_metadata():
    conv = to_conversation({"question": "Q?", "answer": "A.", "source": "faq", "id": 7}, "qa", SRC, "l", None)
    assert conv.meta == {"id": 7, "source": "faq"}
    src = SourceConfig(path="x", fields={"source": "origin"})
    assert to_conversation({"question": "Q?", "answer": "A.", "origin": "faq"}, "qa", src, "l", None).meta == \
        {"source": "faq"}


def test_text_record_is_one_trained_block():
    conv = to_conversation({"text": "Some prose."}, "text", SRC, "t.txt:1", None)
    assert conv.kind == "text" and conv.messages == [{"role": "assistant", "content": "Some prose."}]


def test_field_mapping():
    src = SourceConfig(path="x", fields={"question": "q", "answer": "a"})
    rec = {"q": "Why?", "a": "Because."}
    assert detect_format(rec, src) == "qa"
    assert to_conversation(rec, "qa", src, "l", None).messages[1]["content"] == "Because."


def test_global_system_prompt_only_where_missing():
    conv = to_conversation({"prompt": "P", "completion": "C"}, "prompt_completion", SRC, "l", "Be brief.")
    assert conv.messages[0] == {"role": "system", "content": "Be brief."}


BAD = [
    ({"instruction": "x"}, "alpaca", "missing_field"),
    ({"instruction": ["x"], "output": "y"}, "alpaca", "wrong_type"),
    ({"instruction": "x", "output": "   "}, "alpaca", "empty_response"),
    ({"messages": [{"role": "assistant", "content": "A"}, {"role": "user", "content": "U"}]}, "messages",
     "bad_role_order"),
    ({"messages": [{"role": "user", "content": "U"}, {"role": "assistant", "content": "A"},
                   {"role": "user", "content": "U2"}]}, "messages", "bad_role_order"),
    ({"messages": [{"role": "user", "content": "U"}, {"role": "wizard", "content": "A"}]}, "messages",
     "unknown_role"),
    ({"messages": [{"role": "system", "content": "S"}]}, "messages", "no_assistant_turn"),
    ({"messages": "not a list"}, "messages", "wrong_type"),
    ({"messages": [["user", "hi"]]}, "messages", "bad_message"),
    ({"conversations": [{"from": "bot", "value": "x"}]}, "sharegpt", "unknown_role"),
    ({"messages": []}, "messages", "no_messages"),
]


@pytest.mark.parametrize("record,fmt,reason", BAD)
def test_bad_records_raise_with_reason(record, fmt, reason):
    with pytest.raises(RecordError) as info:
        to_conversation(record, fmt, SRC, "l", None)
    assert info.value.reason == reason


def test_unknown_format_is_a_record_error():
    with pytest.raises(RecordError) as info:
        detect_format({"foo": 1}, SRC)
    assert info.value.reason == "unknown_format"
