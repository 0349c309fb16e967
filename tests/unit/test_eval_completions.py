"""`sftpipe eval --completions FILE`: completions made elsewhere, scored with no model, in both record shapes
(MultiPL-E's `{name, completions: [...]}` and one `{task_id, completion}` per sample), every record accounted for."""

import json

from sftpipe.cli import main

PROMPT = "def add(a: int, b: int) -> int:\n    \"\"\"Add two numbers.\"\"\"\n"
TESTS = "\n\ndef check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(0, 0) == 0\n\ncheck(add)\n"
PROBLEMS = [
    {"name": "HumanEval_0_add", "language": "py", "prompt": PROMPT, "tests": TESTS, "stop_tokens": ["\ndef "]},
    {"name": "HumanEval_1_sub", "language": "py", "prompt": PROMPT.replace("add", "sub").replace("Add", "Subtract"),
     "tests": TESTS.replace("add", "sub").replace("== 3", "== -1"), "stop_tokens": ["\ndef "]},
    {"name": "HumanEval_2_never_answered", "language": "py", "prompt": PROMPT, "tests": TESTS, "stop_tokens": []},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(tmp_path):
    problems = write_jsonl(tmp_path / "problems.jsonl", PROBLEMS)
    path = tmp_path / "eval.yaml"
    path.write_text(f"eval:\n  generation: {{source: {problems}}}\n  code: {{cache_dir: null, k: [1, 2]}}\n")
    return str(path)


def score(tmp_path, completions):
    out = tmp_path / "scored"
    code = main(["eval", config(tmp_path), "--completions",
                 str(write_jsonl(tmp_path / "completions.jsonl", completions)), "--out", str(out)])
    assert code == 0
    records = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    return json.loads((out / "metrics.json").read_text()), records, (out / "report.html").read_text()


def test_multiple_e_shape_continuations_and_whole_answers(tmp_path):
    metrics, records, page = score(tmp_path, [
        {"name": "HumanEval_0_add", "completions": [
            "    return a + b\n\ndef unrelated():\n    pass\n",  # a continuation, cut at the stop token
            "    return a - b\n",
            "```python\ndef add(a, b):\n    return b + a\n```",  # a whole answer, fenced
            PROMPT + "    return a + b\n"]},  # a full program, prompt included
        {"name": "HumanEval_1_sub", "completions": ["    return a - b\n", ""]},
        {"name": "HumanEval_404_unknown", "completions": ["    return 0\n"]},
    ])
    verdicts = {(r["id"], r["sample"]): r["verdict"] for r in records}
    assert verdicts == {("HumanEval_0_add", 0): "pass", ("HumanEval_0_add", 1): "wrong_answer",
                        ("HumanEval_0_add", 2): "pass", ("HumanEval_0_add", 3): "pass",
                        ("HumanEval_1_sub", 0): "pass", ("HumanEval_1_sub", 1): "wrong_answer"}, records  # the bare prompt returns None
    counts = metrics["completions"]
    assert counts["records"] == 3 and counts["samples"] == 6 and counts["empty"] == 1
    assert counts["unknown_ids"] == ["HumanEval_404_unknown"]
    assert counts["problems_without_completions"] == ["HumanEval_2_never_answered"]
    assert metrics["code"]["problems"] == 2 and metrics["code"]["pass_at_k"]["pass@1"] == (3 / 4 + 1 / 2) / 2
    assert "1 records name no problem" in page and "1 problems have no completions" in page


def test_one_record_per_sample_with_task_id(tmp_path):
    metrics, records, _ = score(tmp_path, [
        {"task_id": "HumanEval_0_add", "completion": "    return a + b\n"},
        {"task_id": "HumanEval_0_add", "completion": "    return a * b\n"},
        {"task_id": "HumanEval_1_sub", "completion": "    return a - b\n"},
        {"task_id": "HumanEval_2_never_answered", "completion": "    return a + b\n"},
    ])
    assert [(r["id"], r["verdict"]) for r in records] == [
        ("HumanEval_0_add", "pass"), ("HumanEval_0_add", "wrong_answer"), ("HumanEval_1_sub", "pass"),
        ("HumanEval_2_never_answered", "pass")]
    assert metrics["completions"]["unknown_ids"] == [] and metrics["completions"]["problems_without_completions"] == []
    assert metrics["code"]["pass_at_k"]["pass@1"] == (0.5 + 1 + 1) / 3


def test_a_record_of_neither_shape_is_an_error_naming_the_line(tmp_path, capsys):
    bad = write_jsonl(tmp_path / "c.jsonl", [{"name": "HumanEval_0_add", "completion": "x"}, {"name": "a", "text": "y"}])
    assert main(["eval", config(tmp_path), "--completions", str(bad)]) != 0
    assert f"{bad}:2" in capsys.readouterr().err
