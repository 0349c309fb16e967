"""Eval items from files in every supported shape and container, and clear errors for bad ones."""

import json

import datasets
import pytest

from sftpipe.errors import SftpipeError
from sftpipe.evaluate.problems import items_from_split, load_items
from tests.conftest import EXAMPLES, make_config, write_jsonl

RECORDS = [
    {"prompt": "Say hi."},
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
    {"id": "p1", "instruction": "Write f.", "tests": "main = pure ()", "entry_point": "f", "solution": "f = 1"},
    {"name": "HumanEval_1_f", "language": "py", "prompt": "def f():\n", "tests": "check(f)", "stop_tokens": []},
]


def check_items(items):
    assert [i.id for i in items][2:] == ["p1", "HumanEval_1_f"]
    plain, chat, sftpipe_problem, multiple = items
    assert plain.problem is None and plain.messages == [{"role": "user", "content": "Say hi."}]
    assert chat.problem is None and chat.reference == "Hello" and chat.messages[-1]["role"] == "user"
    assert sftpipe_problem.problem.style == "sftpipe" and sftpipe_problem.problem.language == "haskell"
    assert sftpipe_problem.reference == "```haskell\nf = 1\n```"
    assert multiple.problem.style == "multipl-e" and multiple.problem.language == "python"
    assert multiple.problem.entry_point == "f" and multiple.problem.prompt_code == "def f():\n"


def test_jsonl_json_parquet_and_dataset_dir(tmp_path):
    check_items(load_items(str(write_jsonl(tmp_path / "a.jsonl", RECORDS)), "haskell"))
    (tmp_path / "b.json").write_text(json.dumps(RECORDS))
    check_items(load_items(str(tmp_path / "b.json"), "haskell"))
    rows = [{k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()} for r in RECORDS[2:]]
    columns = sorted({k for r in rows for k in r})  # a columnar table: fields a row lacks are null
    ds = datasets.Dataset.from_dict({c: [r.get(c) for r in rows] for c in columns})
    ds.save_to_disk(str(tmp_path / "saved"))
    assert [i.id for i in load_items(str(tmp_path / "saved"), "haskell")] == ["p1", "HumanEval_1_f"]
    ds.to_parquet(str(tmp_path / "c.parquet"))
    assert [i.problem.style for i in load_items(str(tmp_path / "c.parquet"), "haskell")] == ["sftpipe", "multipl-e"]


@pytest.mark.parametrize("line,message", [
    ('{"foo": 1}', r"bad\.jsonl:2: unrecognised record with fields \['foo'\]"),
    ("not json", r"bad\.jsonl:2: invalid JSON"),
    ('{"name": "x", "language": "rs", "prompt": "fn f", "tests": "t"}', r"bad\.jsonl:2: language 'rs'"),
    ('{"instruction": "x", "tests": ""}', r"bad\.jsonl:2: field 'tests' must be a non-empty string"),
    ('{"name": "x", "language": "py", "prompt": "def f():", "tests": "assert f(("}',
     r"bad\.jsonl:2: field 'tests' is not valid Python \(line 1"),
])
def test_bad_records_name_file_and_line(tmp_path, line, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok"}, line])
    with pytest.raises(SftpipeError, match=message):
        load_items(str(path), "haskell")


@pytest.mark.parametrize("line,message", [
    (b'{"prompt": "caf\xe9"}', r"bad\.jsonl:4: bytes that are not UTF-8 at column 16"),
    (b'{"id": "p", "id": "q", "prompt": "x"}', r"bad\.jsonl:4: key 'id' is given more than once"),
    (b"{not json", r"bad\.jsonl:4: invalid JSON"),
])
def test_a_bad_line_in_a_problems_file_names_file_and_line(tmp_path, line, message):
    """Problem files are read as prepare reads its sources: a BOM and blank lines are fine, and a bad record
    is named by its line in the file."""
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "a"}\n\n{"prompt": "b"}\n' + line + b"\n")
    with pytest.raises(SftpipeError, match=message):
        load_items(str(path), "haskell")
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "a"}\n\n{"prompt": "b"}\n')
    assert [i.id for i in load_items(str(path), "haskell")] == [f"{path}:1", f"{path}:2"]  # ids count records


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(SftpipeError, match="eval.generation.source.*does not exist"):
        load_items(str(tmp_path / "nope.jsonl"), "haskell")


def test_split_items_keep_tests_as_problems(tmp_path, tiny_dir):
    from sftpipe.data import prepare

    sources = [{"path": str(EXAMPLES / "haskell" / "problems.jsonl"), "format": "code", "fields": {"code": "solution"}}]
    cfg = make_config(tmp_path, tiny_dir, sources, data={"max_length": 512})
    prepare.run(cfg)
    items, skipped = items_from_split(tmp_path / "data", "test", "haskell")
    assert len(items) == 8 and skipped == 0
    assert all(i.problem is not None and i.problem.tests.startswith("module Main") for i in items)
    assert all(i.messages[-1]["role"] == "user" and i.reference.startswith("```haskell") for i in items)


def test_split_rows_without_a_prompt_are_counted_not_prompted(tmp_path, tiny_dir):
    from sftpipe.config import load_config
    from sftpipe.data import prepare
    from sftpipe.evaluate.run import load_eval_items

    sources = [{"path": str(EXAMPLES / "text" / "plain_sample.txt")},
               {"path": str(EXAMPLES / "qa" / "qa_sample.jsonl")}]
    cfg = make_config(tmp_path, tiny_dir, sources, data={"split": {"train": 0.5, "val": 0.0, "test": 0.5}})
    prepare.run(cfg)
    cfg = load_config(tmp_path / "config.json", preset="fast_test", overrides=["eval.generation.max_prompts=5"])
    items, counts = load_eval_items(cfg)
    assert len(items) == 5 and all(i.messages and i.messages[-1]["role"] == "user" for i in items)
    assert counts["skipped_without_prompt"] > 0  # the plain-text paragraphs
    assert counts["records"] == counts["skipped_without_prompt"] + 5 + counts["left_out_by_max_prompts"]


def test_repeated_ids_get_a_suffix_instead_of_pooling_samples(tmp_path):
    from sftpipe.evaluate.problems import unique_ids

    problem = {"id": "p", "instruction": "x", "tests": "main = pure ()"}
    items = unique_ids(load_items(str(write_jsonl(tmp_path / "dup.jsonl", [problem, problem, problem])), "haskell"))
    assert [i.id for i in items] == ["p", "p#2", "p#3"] and [i.problem.id for i in items] == ["p", "p#2", "p#3"]


def test_eval_prompts_carry_the_system_prompt_training_records_got(tmp_path):
    """With data.system_prompt set, prepare puts it in every training record without one; eval's prompts
    must carry it too, or the model is asked differently from how it was taught."""
    from sftpipe.config.schema import SourceConfig
    from sftpipe.data.formats import to_conversation

    system = "You are a careful Haskell programmer."
    path = write_jsonl(tmp_path / "a.jsonl", RECORDS)
    items = load_items(str(path), "haskell", system_prompt=system)
    assert [i.messages[0] for i in items] == [{"role": "system", "content": system}] * len(items)
    # the code problem's prompt is exactly what prepare renders for the same instruction as a `code` record
    trained = to_conversation({"instruction": "Write f.", "code": "f = 1"}, "code",
                              SourceConfig(path="-", format="code", code_language="haskell"), "-", system)
    assert items[2].messages == trained.messages[:-1]
    # control: without it, the code problem keeps the code format's own system prompt, the others have none
    plain = load_items(str(path), "haskell")
    assert plain[2].messages[0]["role"] == "system" and plain[2].messages[0]["content"] != system
    assert plain[0].messages[0]["role"] == "user"


def test_eval_writes_beside_the_model_it_evaluates(tmp_path):
    """eval without --out: a checkpoint's figures go to eval/checkpoint-N/ of its run, never over final/'s."""
    from sftpipe.contracts.run_dir import RunDir
    from sftpipe.evaluate.run import default_output_dir

    run = RunDir(tmp_path / "run")
    (run.checkpoints / "checkpoint-3").mkdir(parents=True)
    run.final.mkdir()
    run.manifest_path.write_text("{}")
    cfg = make_config(tmp_path, tmp_path / "tiny", [], train={"output_dir": str(tmp_path / "configured")})
    assert default_output_dir(cfg, str(run.path)) == run.eval
    assert default_output_dir(cfg, str(run.final)) == run.eval
    assert default_output_dir(cfg, str(run.checkpoints / "checkpoint-3")) == run.eval / "checkpoint-3"
    # a model that is no run's (a merged model, a hub id) is evaluated into the configured run's eval/
    assert default_output_dir(cfg, str(tmp_path / "merged")) == tmp_path / "configured" / "eval"
