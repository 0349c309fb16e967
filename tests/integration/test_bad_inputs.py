"""Bad input: a corpus of broken files and configs, each handled with a count or a clean error, never a traceback.

`tests/data/bad_inputs/` holds one file per kind of bad input (plus `huge_line.jsonl`, generated here to
keep the repository small). For every record-level kind the table below says which records must be
rejected and for what reason, and which must be kept. Lenient mode (the default, data.on_error: skip):
one real `sftpipe prepare` subprocess over all of them at once must keep exactly the valid records and report
the same counts per reason on stdout, in manifest.json, DATA_CARD.md and rejected.jsonl. Strict mode
(data.on_error: raise): one CLI process per file must stop at the first problem, naming file:line and the
reason. File-level problems (empty file, unreadable whole file) are errors in both modes, and so is a run
whose every record is rejected (nothing to train on). Bad configs (`tests/data/bad_configs/`) must each give
one clean error naming the file and the field or line.
"""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import pytest
import yaml

from tests.cli_forkserver import start_cli
from tests.conftest import REPO

pytestmark = pytest.mark.integration

BAD = REPO / "tests" / "data" / "bad_inputs"
CONFIGS = REPO / "tests" / "data" / "bad_configs"
# Problems found while tokenizing come after every reading problem (prepare reads all sources first).
TOKENIZE_REASONS = {"too_long", "special_token_in_text", "empty_mask", "boundary_straddle", "multiple_bos"}


@dataclass(frozen=True)
class Case:
    """One file: the records that must be rejected (position -> reason) and those that must be kept."""

    file: str
    rejected: dict[str, str]
    kept: list[str]
    source: dict = field(default_factory=dict)  # extra SourceConfig fields


CASES = [
    Case("invalid_json.jsonl", {"2": "invalid_json", "4": "invalid_json", "5": "invalid_json"}, ["1", "3", "6"]),
    Case("non_utf8.jsonl", {"2": "not_utf8"}, ["1", "3"]),
    Case("bom.jsonl", {}, ["1", "2", "3"]),
    Case("bom_every_file_concatenated.jsonl", {}, ["1", "2", "3"]),
    Case("blank_lines_between.jsonl", {}, ["1", "4", "6"]),
    Case("crlf.jsonl", {}, ["1", "2"]),
    Case("truncated_last_line.jsonl", {"3": "invalid_json"}, ["1", "2"]),
    Case("not_an_object.jsonl", {str(i): "not_an_object" for i in (2, 3, 4, 5)}, ["1", "6"]),
    Case("missing_field.jsonl", {"2": "missing_field", "3": "missing_field"}, ["1", "4"]),
    Case("wrong_types.jsonl", {str(i): "wrong_type" for i in (2, 3, 4, 5, 6, 7)}, ["1", "8"]),
    Case("empty_response.jsonl", {"2": "empty_response", "3": "empty_response"}, ["1", "4"]),
    Case("empty_prompt.jsonl", {"2": "empty_content"}, ["1", "3"]),
    Case("wrong_role_order.jsonl", {str(i): "bad_role_order" for i in (2, 3, 4, 5, 6)}, ["1"]),
    Case("unknown_role.jsonl", {str(i): "unknown_role" for i in (2, 3, 4)}, ["1"]),
    Case("system_only.jsonl", {"2": "no_assistant_turn", "3": "no_assistant_turn"}, ["1"]),
    Case("no_messages.jsonl", {"2": "no_messages"}, ["1"]),
    Case("nested_garbage.jsonl", {"2": "wrong_type", "3": "bad_message", "4": "wrong_type", "5": "wrong_type",
                                  "6": "bad_message", "7": "wrong_type"}, ["1"]),
    Case("deep_nesting.jsonl", {"2": "invalid_json", "3": "invalid_json"}, ["1", "4"]),
    Case("huge_integer.jsonl", {"2": "invalid_json"}, ["1", "3"]),
    Case("lone_surrogate.jsonl", {"2": "invalid_unicode", "3": "invalid_unicode"}, ["1", "4"]),
    Case("duplicate_keys.jsonl", {"2": "duplicate_key", "3": "duplicate_key"}, ["1", "4"]),
    Case("duplicate_records.jsonl", {}, ["1", "2", "3", "4", "5", "6"]),  # kept: dedup is off here (tests/unit dedup tests cover it)
    Case("overlong.jsonl", {"2": "too_long"}, ["1", "3"]),
    Case("huge_line.jsonl", {"2": "too_long"}, ["1"]),
    Case("unknown_format.jsonl", {"1": "unknown_format", "3": "missing_field"}, ["2", "4"]),
    Case("mixed_formats.jsonl", {"2": "missing_field"}, ["1", "3"]),
    Case("sharegpt_bad.jsonl", {"2": "unknown_role", "3": "bad_message", "4": "wrong_type"}, ["1"]),
    Case("special_tokens.jsonl", {"2": "special_token_in_text", "3": "special_token_in_text"}, ["1", "4"]),
    Case("text_records.jsonl", {"2": "empty_content", "3": "empty_content"}, ["1", "4"]),
    Case("control_characters.jsonl", {}, ["1", "2"]),
    Case("ragged.csv", {"3": "ragged_row", "4": "ragged_row"}, ["2", "5"]),
    Case("csv_missing_column.csv", {"2": "unknown_format", "3": "unknown_format"}, []),
    Case("csv_non_utf8.csv", {"3": "not_utf8"}, ["2", "4"]),
    Case("csv_bad_quotes.csv", {"3": "bad_csv", "5": "bad_csv"}, ["2", "4"]),
    Case("json_array_items.json", {"1": "not_an_object", "2": "not_an_object"}, ["0", "3"]),
    Case("text_non_utf8.txt", {"3": "not_utf8"}, ["1", "5"]),
]

# Whole-file problems: an error in both modes (a source that yields nothing is a mistake, not a count).
FILE_ERRORS = {
    "empty.jsonl": "has no records",
    "blank_lines_only.jsonl": "has no records",
    "json_invalid_whole.json": "json_invalid_whole.json:3: invalid JSON",
    "corrupt.parquet": "corrupt.parquet: not a readable Parquet file",
    "unsupported.xml": "unsupported file type '.xml'",
}

# Bad configs: the fragment the one-line error must contain (besides the file name).
CONFIG_ERRORS = {
    "unknown_key.yaml": "train.lrr: unknown key (did you mean 'lr'?)",
    "unknown_section.yaml": "trainer: unknown key (did you mean 'train'?)",
    "wrong_type.yaml": "train.epochs = 'three'",
    "negative_lr.yaml": "train.lr = -1: Input should be greater than 0",
    "split_not_one.yaml": "must sum to 1.0, got 1.5",
    "custom_without_template.yaml": "custom_template is empty",
    "unknown_template.yaml": "data.template = 'llama9'",
    "source_path_and_hf.yaml": "data.sources.0: Value error, give exactly one of `path` or `hf_dataset`",
    "source_without_location.yaml": "give exactly one of `path` or `hf_dataset`",
    "sources_not_a_list.yaml": "data.sources = 'train.jsonl': Input should be a valid list",
    "on_error_unknown.yaml": "data.on_error = 'ignore'",
    "invalid_yaml.yaml": "not valid YAML",
    "tabs.yaml": "not valid YAML",
    "top_level_list.yaml": "the top level must be a mapping of sections, got list",
    "top_level_scalar.yaml": "the top level must be a mapping of sections, got str",
    "unknown_preset.yaml": "preset 'fastest' does not exist",
    "python_tag.yaml": "could not determine a constructor for the tag",
    "duplicate_key.yaml": "line 4: key 'lr' is given twice",
    "bad_json.json": "not valid JSON",
    "max_length_too_small.yaml": "data.max_length = 4: Input should be greater than 8",
    "betas_wrong_length.yaml": "train.adam_betas",
    "not_utf8.yaml": "not UTF-8",
}


def _position(location: str) -> str:
    """'dir/f.jsonl:12' -> '12'; 'dir/f.json[3]' -> '3'."""
    return location.rsplit("[", 1)[1].rstrip("]") if location.endswith("]") else location.rsplit(":", 1)[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The shipped corpus plus the generated huge line (a 1 MB valid record after a normal one)."""
    out = tmp_path_factory.mktemp("bad_inputs") / "bad_inputs"
    out.mkdir()
    for path in BAD.iterdir():
        (out / path.name).write_bytes(path.read_bytes())
    huge = {"prompt": "Say it many times.", "completion": "again " * 170_000}
    (out / "huge_line.jsonl").write_text(json.dumps({"prompt": "Question?", "completion": "Answer."}) + "\n"
                                         + json.dumps(huge) + "\n")
    return out


def _config(path: Path, tiny_dir: Path, sources: list[dict], out: Path, **data) -> Path:
    config = {"preset": "fast_test", "model": {"name_or_path": str(tiny_dir)},
              "data": {"sources": sources, "output_dir": str(out), "max_length": 256,
                       "split": {"train": 1.0, "val": 0.0, "test": 0.0},
                       # the corpus repeats the same valid records across files; dedup has its own tests
                       "dedup": {"exact": False, "near": False}, **data}}
    path.write_text(yaml.safe_dump(config))
    return path


def test_corpus_has_at_least_30_kinds():
    assert len(CASES) + len(FILE_ERRORS) >= 30 and len(CONFIG_ERRORS) >= 15
    shipped = {p.name for p in BAD.iterdir()} | {"huge_line.jsonl"}
    assert shipped == {c.file for c in CASES} | set(FILE_ERRORS), "every corpus file has an expectation"
    assert {p.name for p in CONFIGS.iterdir()} == set(CONFIG_ERRORS)


def test_lenient_keeps_exactly_the_valid_records_and_reports_every_rejection(tmp_path, tiny_dir, corpus):
    sources = [{"path": str(corpus / c.file), **c.source} for c in CASES]
    config = _config(tmp_path / "lenient.yaml", tiny_dir, sources, tmp_path / "data")
    proc = subprocess.run([sys.executable, "-m", "sftpipe.cli", "prepare", str(config)], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    data = tmp_path / "data"

    expected_rejected = {(c.file, pos, reason) for c in CASES for pos, reason in c.rejected.items()}
    rejected = [json.loads(x) for x in (data / "rejected.jsonl").read_text().splitlines()]
    got_rejected = {(Path(r["location"].rsplit(":", 1)[0].split("[")[0]).name, _position(r["location"]), r["reason"])
                    for r in rejected}
    assert len(rejected) == len(got_rejected)  # one entry per rejected record
    # every entry shows what was rejected, including lines that did not parse (their raw text)
    assert [(Path(r["location"]).name, r["reason"]) for r in rejected if not r["excerpt"].strip()] == []
    assert got_rejected == expected_rejected, (got_rejected ^ expected_rejected)

    kept = datasets.load_from_disk(str(data / "train"))
    got_kept = sorted((row["source"], _position(row["location"])) for row in kept)
    assert got_kept == sorted((c.file, pos) for c in CASES for pos in c.kept)

    counts = Counter(reason for _, _, reason in expected_rejected)
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["rejected"] == dict(sorted(counts.items()))
    for case in CASES:
        read = len(case.kept) + len(case.rejected)
        assert manifest["sources"][case.file] == {"read": read, "kept": len(case.kept), "rejected": len(case.rejected)}
    card = (data / "DATA_CARD.md").read_text()
    total = sum(len(c.kept) + len(c.rejected) for c in CASES)
    assert f"{total} records read, {len(kept)} kept, {len(rejected)} rejected" in proc.stdout
    printed: dict[str, int] = {}  # CLI lines: "  rejected (<stage>) <reason>: <count>"
    for stage, reason, count in re.findall(r"^  rejected \((\w+)\) (\w+): (\d+)$", proc.stdout, flags=re.M):
        printed[reason] = printed.get(reason, 0) + int(count)
    assert printed == dict(counts)
    in_card: dict[str, int] = {}  # DATA_CARD rows "| <reason> | <count> |", one table per stage
    for reason, count in re.findall(r"^\| (\w+) \| (\d+) \|$", card, flags=re.M):
        in_card[reason] = in_card.get(reason, 0) + int(count)
    assert in_card == dict(counts)


def _run_cli(argv: list[str], cwd: Path, name: str) -> tuple[int, str]:
    """The real CLI in its own process (forked from a warm server); returns (exit code, stdout + stderr)."""
    log = cwd / f"{name}.log"
    process = start_cli(argv, cwd=cwd, log=log, env={"OMP_NUM_THREADS": "1"})
    process.join(timeout=300)
    return process.exitcode, log.read_text(errors="replace")


def _strict_first(case: Case) -> tuple[str, str]:
    """Where strict mode must stop: the first reading problem, else the first tokenizing problem."""
    order = sorted(case.rejected.items(), key=lambda item: (item[1] in TOKENIZE_REASONS, int(item[0])))
    return order[0]


@pytest.mark.parametrize("case", [c for c in CASES if c.rejected], ids=lambda c: c.file)
def test_strict_stops_at_the_first_problem_with_file_line_and_reason(tmp_path, tiny_dir, corpus, case):
    config = _config(tmp_path / "strict.yaml", tiny_dir, [{"path": str(corpus / case.file), **case.source}],
                     tmp_path / "data", on_error="raise")
    code, output = _run_cli(["prepare", config], tmp_path, "strict")
    position, reason = _strict_first(case)
    separator = f"[{position}]" if case.file.endswith(".json") else f":{position}"
    assert code == 2, output
    assert f"error: {corpus / case.file}{separator}: {reason}: " in output and "data.on_error is raise" in output
    assert "Traceback" not in output and not (tmp_path / "data").exists()


@pytest.mark.parametrize("name", list(FILE_ERRORS))
def test_unreadable_file_is_a_clean_error_in_both_modes(tmp_path, tiny_dir, corpus, name):
    for mode in ("skip", "raise"):
        config = _config(tmp_path / f"{mode}.yaml", tiny_dir, [{"path": str(corpus / name)}], tmp_path / "data",
                         on_error=mode)
        code, output = _run_cli(["prepare", config], tmp_path, mode)
        assert code == 2 and output.startswith("error: ") and FILE_ERRORS[name] in output, output
        assert str(corpus) in output and "Traceback" not in output


# Files whose every record is rejected: prepare must fail (exit 2) with the counts, not write an empty data dir.
NOTHING_KEPT = {  # file -> (content, counts, where the first rejection is)
    "rows_match_no_format.csv": ("question,reply\nq1,a1\nq2,a2\nq3,a3\n", "unknown_format 3", 2),
    "not_json.jsonl": ("this is not JSON\n{neither is this\n", "invalid_json 2", 1),
    "unknown_format.jsonl": ('{"foo": 1}\n{"bar": "x"}\n{"baz": []}\n{"qux": null}\n', "unknown_format 4", 1),
}


@pytest.mark.parametrize("name", list(NOTHING_KEPT))
def test_nothing_kept_is_a_clean_error_with_the_counts(tmp_path, tiny_dir, name):
    text, counts, first = NOTHING_KEPT[name]
    (tmp_path / name).write_text(text)
    config = _config(tmp_path / "c.yaml", tiny_dir, [{"path": str(tmp_path / name)}], tmp_path / "data")
    code, output = _run_cli(["prepare", config], tmp_path, "prepare")
    assert code == 2 and output.startswith("error: prepare kept none of the "), output
    assert f"rejected: {counts}. First {tmp_path / name}:{first}: " in output and "Traceback" not in output
    assert not (tmp_path / "data").exists()  # nothing `train` could take for a data dir
    report = tmp_path / "data.failed"
    assert str(report / "rejected.jsonl") in output
    reason, n = counts.split()
    assert [json.loads(x)["reason"] for x in (report / "rejected.jsonl").read_text().splitlines()] == [reason] * int(n)
    assert json.loads((report / "manifest.json").read_text())["rejected"] == {reason: int(n)}
    assert not any((report / split).exists() for split in ("train", "val", "test"))


@pytest.mark.parametrize("name", list(CONFIG_ERRORS))
def test_bad_config_is_one_clean_error(tmp_path, name):
    config = tmp_path / name
    config.write_bytes((CONFIGS / name).read_bytes())
    for command in ("show-config", "validate"):
        code, output = _run_cli([command, config], tmp_path, command)
        assert code == 2 and output.startswith("error: invalid config:"), output
        assert CONFIG_ERRORS[name] in output and "Traceback" not in output
        assert name in output or "preset" in output
    assert not list(tmp_path.glob("CANARY*")), "a YAML tag ran code"
