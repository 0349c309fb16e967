"""What `eval` generates for: prompts, and code problems with tests, from a prepared split or a file.

Three record shapes are read from files (JSONL, JSON list, Parquet, a saved dataset dir, or a
`datasets.load_dataset` name), detected per record:

- a prompt: `{"prompt": "..."}` or `{"messages": [...]}` (generation metrics only);
- an sftpipe problem (`examples/haskell/problems.jsonl`): `instruction`, `tests` (a `Main` module that
  imports `Solution` and defines `checks :: [(String, Bool)]`, or for Python code run after the
  solution), optional `id`, `entry_point`, `solution`;
- a MultiPL-E problem (`nuprl/MultiPL-E`, e.g. humaneval-hs / humaneval-py): `name`, `language`,
  `prompt` (code the completion continues), `tests` (code that follows the completion), `stop_tokens`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sftpipe.data import readers
from sftpipe.errors import SftpipeError
from sftpipe.evaluate.execution.problem import CodeProblem

LANGUAGES = ("haskell", "python")
MULTIPLE_LANGUAGES = {"hs": "haskell", "haskell": "haskell", "py": "python", "python": "python"}
FENCE_TAG = {"haskell": "haskell", "python": "python"}


@dataclass
class EvalItem:
    """One prompt to generate for: the conversation up to the answer, the reference answer if known, and
    the problem that judges the answer if it has tests."""

    id: str
    messages: list[dict[str, str]]
    reference: str | None = None
    problem: CodeProblem | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def items_from_split(data_dir: Path, split: str, language: str) -> tuple[list[EvalItem], int]:
    """Each example of a prepared split: its conversation up to the last assistant turn; rows whose meta has
    `tests` become code problems in `language`.

    Returns:
        (items, rows skipped because they have no user turn before the answer, e.g. plain-text records).
    """
    from sftpipe.contracts.data_dir import DataDir

    items, skipped = [], 0
    for index, row in enumerate(DataDir(data_dir).load_split(split)):
        messages = json.loads(row["messages"])
        meta = json.loads(row["meta"]) if row["meta"] else {}
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None or not any(m["role"] == "user" for m in messages[:last]):
            skipped += 1  # plain-text records have nothing to prompt with
            continue
        item_id = str(meta.get("id") or f"{split}[{index}]")
        problem = None
        if isinstance(meta.get("tests"), str) and meta["tests"].strip():
            problem = CodeProblem(item_id, language, meta["tests"], "sftpipe", meta.get("entry_point"))
        items.append(EvalItem(item_id, messages[:last], messages[last]["content"], problem, meta))
    return items, skipped


def items_from_records(records: list[tuple[str, Any]], origin: str, language: str,
                       system_prompt: str | None = None) -> list[EvalItem]:
    """Turn raw `(location, record)` pairs (see the module docstring) into eval items; errors name the
    location, and an item without an id is named `origin:N` after its place N (from 1) among the records.

    `system_prompt` (the config's `data.system_prompt`) is added to prompts that have no system message, as
    prepare adds it to training records, so eval asks the way training taught.
    """
    items = []
    for index, (where, record) in enumerate(records):
        default_id = f"{origin}:{index + 1}"
        if not isinstance(record, dict):
            raise SftpipeError(f"{where}: expected a JSON object, got {type(record).__name__}")
        if "tests" in record and "prompt" in record and not isinstance(record.get("messages"), list):
            items.append(_multiple_item(record, where, default_id, language))
        elif "tests" in record and "instruction" in record:
            items.append(_sftpipe_item(record, where, default_id, language, system_prompt))
        elif isinstance(record.get("prompt"), str):
            items.append(EvalItem(str(record.get("id") or default_id),
                                  [{"role": "user", "content": record["prompt"]}],
                                  record.get("completion") or record.get("reference")))
        elif isinstance(record.get("messages"), list):
            messages = record["messages"]
            reference = None
            if messages and messages[-1].get("role") == "assistant":
                reference, messages = messages[-1].get("content"), messages[:-1]
            items.append(EvalItem(str(record.get("id") or default_id), messages, reference))
        else:
            raise SftpipeError(
                f"{where}: unrecognised record with fields {sorted(record)}; expected {{prompt}}, {{messages}}, "
                "an sftpipe problem {instruction, tests, entry_point} or a MultiPL-E problem {name, prompt, tests}"
            )
    if system_prompt:
        for item in items:
            if not item.messages or item.messages[0]["role"] != "system":
                item.messages = [{"role": "system", "content": system_prompt}, *item.messages]
    return items


def load_items(source: str, language: str, hf_config: str | None = None, hf_split: str = "test",
               system_prompt: str | None = None) -> list[EvalItem]:
    """Eval items from a file, a saved dataset dir, or (`hf:NAME`) `datasets.load_dataset(NAME, hf_config)`;
    `system_prompt` as in `items_from_records`."""
    return items_from_records(read_records(source, hf_config, hf_split), source, language, system_prompt)


def unique_ids(items: list[EvalItem]) -> list[EvalItem]:
    """Samples are grouped by item id for pass@k, so a repeated id gets a suffix (`id#2`) instead of
    silently pooling two problems' samples."""
    seen: dict[str, int] = {}
    for item in items:
        seen[item.id] = seen.get(item.id, 0) + 1
        if seen[item.id] > 1:
            item.id = f"{item.id}#{seen[item.id]}"
            if item.problem is not None:
                item.problem = replace(item.problem, id=item.id)
    return items


def read_records(source: str, hf_config: str | None = None, hf_split: str = "test") -> list[tuple[str, dict[str, Any]]]:
    """`(location, record)` of a file, dataset dir or hub dataset; in columnar sources a missing field is
    absent, not None. A file is read as prepare reads its sources (`readers.read_records`)."""
    return [(where, _present(r) if isinstance(r, dict) else r) for where, r in _read_raw(source, hf_config, hf_split)]


def _present(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if v is not None and not (isinstance(v, float) and v != v)}


def _read_raw(source: str, hf_config: str | None, hf_split: str) -> list[tuple[str, Any]]:
    if source.startswith("hf:"):
        import datasets

        try:
            ds = datasets.load_dataset(source[3:], hf_config, split=hf_split)
        except Exception as exc:  # noqa: BLE001 - datasets raises many types; all mean "cannot load"
            raise SftpipeError(f"eval.generation.source {source!r}: cannot load ({exc})") from None
        return [(f"{source}[{index}]", dict(r)) for index, r in enumerate(ds)]
    path = Path(source)
    if not path.exists():
        raise SftpipeError(f"eval.generation.source: {source} does not exist; give a .jsonl/.json/.parquet file, "
                           "a saved dataset dir, `hf:NAME` or `split`")
    if path.is_dir():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError):
            ds = datasets.load_dataset(str(path), hf_config, split=hf_split)
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[hf_split]
        return [(f"{source}[{index}]", dict(r)) for index, r in enumerate(ds)]
    return list(readers.read_records(path))


def code_prompt(language: str, instruction: str, system_prompt: str | None = None) -> list[dict[str, str]]:
    """The prompt of a `format: code` training record for `instruction`, so eval asks the way training taught:
    with `system_prompt` (data.system_prompt) when set, else the code format's own system prompt."""
    from sftpipe.config.schema import SourceConfig
    from sftpipe.data.formats import to_conversation

    source = SourceConfig(path="-", format="code", code_language=language)
    conv = to_conversation({"instruction": instruction, "code": "-"}, "code", source, "-", system_prompt)
    return conv.messages[:-1]


def _sftpipe_item(record: dict[str, Any], where: str, default_id: str, language: str,
                  system_prompt: str | None) -> EvalItem:
    for name in ("instruction", "tests"):
        if not isinstance(record.get(name), str) or not record[name].strip():
            raise SftpipeError(f"{where}: field {name!r} must be a non-empty string")
    item_id = str(record.get("id") or default_id)
    _check_tests_compile(language, record["tests"], where)
    problem = CodeProblem(item_id, language, record["tests"], "sftpipe", record.get("entry_point"))
    reference = record.get("solution")
    if isinstance(reference, str):
        reference = f"```{FENCE_TAG[language]}\n{reference.strip(chr(10))}\n```"
    return EvalItem(item_id, code_prompt(language, record["instruction"], system_prompt), reference, problem,
                    {k: record[k] for k in ("topic", "mutant", "solution") if k in record})


def _multiple_item(record: dict[str, Any], where: str, default_id: str, default_language: str) -> EvalItem:
    raw_language = str(record.get("language") or default_language)
    language = MULTIPLE_LANGUAGES.get(raw_language)
    if language is None:
        raise SftpipeError(f"{where}: language {raw_language!r} is not supported for execution; "
                           f"supported: {sorted(MULTIPLE_LANGUAGES)}")
    prompt, tests = record["prompt"], record["tests"]
    if not isinstance(prompt, str) or not isinstance(tests, str):
        raise SftpipeError(f"{where}: MultiPL-E fields `prompt` and `tests` must be strings")
    _check_tests_compile(language, tests, where)
    stops = record.get("stop_tokens") or ()
    problem = CodeProblem(str(record.get("name") or default_id), language, tests, "multipl-e",
                          multiple_entry_point(language, prompt, tests), prompt, tuple(stops))
    tag = FENCE_TAG[language]
    user = (f"Complete the following {language.capitalize()} function. Reply with the whole function in a "
            f"fenced code block.\n\n```{tag}\n{prompt.rstrip()}\n```")
    return EvalItem(problem.id, [{"role": "user", "content": user}], None, problem)


def _check_tests_compile(language: str, tests: str, where: str) -> None:
    """Python tests that do not even parse would fail every answer as if it were wrong: refuse the file."""
    if language != "python":
        return
    try:
        compile(tests, "tests", "exec")
    except SyntaxError as exc:
        raise SftpipeError(f"{where}: field 'tests' is not valid Python (line {exc.lineno}: {exc.msg})") from None


def multiple_entry_point(language: str, prompt: str, tests: str) -> str | None:
    """The function the MultiPL-E tests call: `candidate = f` (Haskell), `check(f)` (Python), else the
    first definition in the prompt."""
    if language == "haskell":
        found = (re.search(r"\bcandidate\s*=\s*([a-z_][\w']*)", tests)
                 or re.search(r"^([a-z_][\w']*)\s*::", prompt, re.M))
    else:
        found = (re.search(r"(?<!def )\bcheck\(\s*([A-Za-z_]\w*)\s*\)", tests)
                 or re.search(r"^def\s+([A-Za-z_]\w*)", prompt, re.M))
    return found.group(1) if found else None
