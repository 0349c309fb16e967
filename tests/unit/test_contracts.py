"""Stage contracts: only `sftpipe.contracts` knows the file names and JSON keys of what a stage leaves on disk.

Static rules over the AST of src/ and benchmarks/ (each with a negative control on a snippet that breaks it):
no manifest read as a dict by key, no contract file name or run-dir path built by hand outside the contracts,
and the contracts importing nothing above them. Then each contract file round-trips (write, read, equal),
reads a file written before format_version existed as version 1, and refuses a newer version naming the file;
a data dir and a checkpoint written the old way still train and resume to the same result.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from sftpipe.contracts.checkpoint import (
    COMPLETE,
    STATE,
    CheckpointWriter,
    CompleteMarker,
    TrainerState,
    file_digests,
    load_trainer_state,
    verify_checkpoint,
)
from sftpipe.contracts.data_dir import (
    DataDir,
    DataManifest,
    LengthFigures,
    Mixing,
    Overlap,
    SourceCounts,
    SourceMix,
    SplitLengths,
    SplitStats,
    TemplateInfo,
    TokenizerInfo,
)
from sftpipe.contracts.files import FORMAT_VERSION
from sftpipe.contracts.model_dir import INFO, FinalInfo, MergedInfo, read_final_info, write_info
from sftpipe.contracts.run_dir import RunDir, RunManifest
from sftpipe.errors import SftpipeError
from tests.conftest import REPO, make_config

SRC = REPO / "src" / "sftpipe"
CONTRACTS = SRC / "contracts"

# File names only the contracts know (a docstring may name them; code and messages use the contracts' names).
CONTRACT_FILES = re.compile(r"(?<![\w.])(manifest\.json|run_manifest\.json|COMPLETE|trainer_state\.json|"
                            r"sftpipe\.json)(?![\w])")
# Parts of a run dir (or of a checkpoint) that code outside the contracts reaches through RunDir and the checkpoint contract.
RUN_DIR_PARTS = {"final", "checkpoints", "logs", "metrics.jsonl", "config.yaml", "run_manifest.json",
                 "manifest.json", "COMPLETE", "trainer_state.json", "sftpipe.json"}
# What the contracts may import: the layers below the stages, the stdlib and the libraries of the file formats.
CONTRACT_IMPORTS = ("sftpipe.contracts", "sftpipe.config", "sftpipe.errors", "sftpipe.redact", "pydantic", "datasets",
                    "__future__")
STDLIB = frozenset(sys.stdlib_module_names)


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Call):
        return _dotted(node.func) + "()"
    return ""


def _names_a_manifest(node: ast.AST) -> bool:
    """`manifest`, `s.manifest`, `data_manifest`, `read_manifest(...)`: the last name of it says manifest."""
    last = _dotted(node).removesuffix("()").split(".")[-1]
    return "manifest" in last.lower()


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def violations(source: str) -> list[str]:
    """Every place in `source` (a module outside the contracts) that reads a contract file by itself."""
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and _names_a_manifest(node.value) and \
                isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
            found.append(f"line {node.lineno}: {_dotted(node.value)}[{node.slice.value!r}]: a manifest read by key")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" and \
                _names_a_manifest(node.func.value):
            found.append(f"line {node.lineno}: {_dotted(node.func.value)}.get(...): a manifest read by key")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant) \
                and node.right.value in RUN_DIR_PARTS:
            found.append(f"line {node.lineno}: ... / {node.right.value!r}: a contract path built by hand")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings \
                and CONTRACT_FILES.search(node.value):
            found.append(f"line {node.lineno}: {node.value!r}: a contract file name outside the contracts")
    return found


def _runtime_nodes(tree: ast.AST):
    """Every node but those under `if TYPE_CHECKING:` (imports for annotations only)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _dotted(node.test).endswith("TYPE_CHECKING"):
            continue
        yield node
        yield from _runtime_nodes(node)


def import_violations(source: str) -> list[str]:
    """Imports of a contracts module, at run time, that reach above the contracts' layer."""
    found = []
    for node in _runtime_nodes(ast.parse(source)):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
        for name in names:
            top = name.split(".")[0]
            allowed = any(name == p or name.startswith(p + ".") for p in CONTRACT_IMPORTS)
            if not allowed and (top == "sftpipe" or top not in STDLIB):
                found.append(f"line {node.lineno}: imports {name}")
    return found


def _outside_contracts() -> list[Path]:
    files = [p for p in SRC.rglob("*.py") if CONTRACTS not in p.parents]
    return files + sorted((REPO / "benchmarks").rglob("*.py"))


def test_no_code_outside_the_contracts_reads_a_contract_file_by_itself():
    files = _outside_contracts()
    assert len(files) > 60
    found = [f"{p.relative_to(REPO)}: {v}" for p in files for v in violations(p.read_text(encoding="utf-8"))]
    assert not found, "\n".join(found)


def test_the_checker_finds_each_kind_of_violation():
    snippet = '''
"""Reads manifest.json (a docstring may say so)."""
def f(run_dir, data_dir, s, path):
    """Writes COMPLETE (so may this one)."""
    a = manifest["tokenizer"]["sha256"]
    b = s.manifest["max_length"]
    c = data_manifest.get("data_config", {})
    d = read_manifest(data_dir)["template"]
    e = run_dir / "final"
    g = run_dir / "logs" / "metrics.jsonl"
    h = (path / "run_manifest.json").is_file()
    i = f"{data_dir}/manifest.json: bad"
    j = json.loads((data_dir / "manifest.json").read_text())["splits"]
    ok = manifest.splits["train"].examples, manifest.rejected_by_source.get("a", {}), RunDir(run_dir).final
    return a, b, c, d, e, g, h, i, j, ok
'''
    found = violations(snippet)
    lines = sorted(int(v.split(":")[0].removeprefix("line ")) for v in found)
    # one per line from 5 to 13, two where a path is built from two parts (10) or a file name is also a literal
    # (11, 13); none in the docstrings (2, 4) or in the typed reads (14)
    assert lines == [5, 6, 7, 8, 9, 10, 10, 11, 11, 12, 13, 13], "\n".join(found)


def test_the_contracts_import_nothing_above_them():
    files = sorted(CONTRACTS.glob("*.py"))
    assert len(files) == 7  # __init__, checkpoint, data_dir, files, model_dir, run_dir, study_dir
    found = [f"{p.name}: {v}" for p in files for v in import_violations(p.read_text(encoding="utf-8"))]
    assert not found, "\n".join(found)
    # negative control
    bad = ("import json\nfrom typing import TYPE_CHECKING\nfrom sftpipe.train.loop import run\n"
           "from sftpipe.data import prepare\nimport torch\nif TYPE_CHECKING:\n    import transformers\n")
    assert [v.split(":")[0] for v in import_violations(bad)] == ["line 3", "line 4", "line 5"]


def sample_manifest(**changes) -> DataManifest:
    """A data manifest with every part filled in (a mixed train split, an empty test split)."""
    values = dict(
        sftpipe_version="0.1.0", created="2026-01-02T03:04:05+00:00",
        tokenizer=TokenizerInfo(name_or_path="tiny/model", sha256="a" * 64),
        template=TemplateInfo(name="chatml", sha256="b" * 64, text="{{ messages }} é"),
        max_length=256, overlong="drop", records_read=12,
        splits={"train": SplitStats(examples=9, tokens=900, trained_tokens=400, truncated=1, max_tokens=200, shards=1),
                "val": SplitStats(examples=1, tokens=90, trained_tokens=40, max_tokens=90, shards=1),
                "test": SplitStats()},
        sources={"a.jsonl": SourceCounts(read=8, kept=7, rejected=1), "b.jsonl": SourceCounts(read=4, kept=3,
                                                                                             rejected=1)},
        rejected={"exact_duplicate": 1, "too_long": 1},
        removed_by_stage={"dedup": {"exact_duplicate": 1}, "tokenize": {"too_long": 1}},
        rejected_by_source={"a.jsonl": {"too_long": 1}, "b.jsonl": {"exact_duplicate": 1}},
        overlaps=[Overlap(reason="exact_duplicate", against="train", count=1)],
        mixing=Mixing(unit="samples", total=9, sources=[
            SourceMix(source="a.jsonl", weight=1.0, available=6, available_examples=6, target=6.0, achieved=6,
                      examples=6, target_share=2 / 3, achieved_share=2 / 3),
            SourceMix(source="b.jsonl", weight=0.5, available=3, available_examples=3, target=3.0, achieved=3,
                      examples=3, target_share=1 / 3, achieved_share=1 / 3)]),
        lengths=LengthFigures(bin_edges=[0, 128, 256], splits={
            "train": SplitLengths(examples=9, min=50, mean=100.0, p50=99.0, p90=180.5, p99=199.2, max=200,
                                  histogram=[5, 4]),
            "val": SplitLengths(examples=1, min=90, mean=90.0, p50=90.0, p90=90.0, p99=90.0, max=90,
                                histogram=[1, 0]),
            "test": SplitLengths(examples=0, histogram=[0, 0])}),
        data_config={"template": "chatml", "sources": [{"path": "a.jsonl", "hf_dataset": None}]},
    )
    return DataManifest(**{**values, **changes})


def test_data_manifest_round_trips(tmp_path):
    manifest = sample_manifest()
    DataDir(tmp_path).write_manifest(manifest)
    assert DataDir(tmp_path).manifest == manifest
    written = json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    assert written["format_version"] == FORMAT_VERSION == 1 and written["kind"] == "sftpipe-data"
    assert written["lengths"]["splits"]["test"] == {"examples": 0, "histogram": [0, 0]}  # no figures: no keys
    assert written["mixing"]["sources"][1]["weight"] == 0.5
    assert written["data_config"]["sources"][0]["hf_dataset"] is None
    assert manifest.sha256 == DataDir(tmp_path).manifest.sha256
    assert manifest.sha256 != sample_manifest(records_read=13).sha256  # negative control


def test_a_manifest_written_before_format_version_reads_as_version_1(tmp_path):
    """The manifest as `prepare` wrote it before the contracts: the same keys, no format_version."""
    old = {k: v for k, v in json.loads(sample_manifest().model_dump_json()).items() if k != "format_version"}
    (tmp_path / "manifest.json").write_text(json.dumps(old, indent=2), encoding="utf-8")
    manifest = DataDir(tmp_path).manifest
    assert manifest == sample_manifest() and manifest.format_version == 1
    assert manifest.tokenizer.sha256 == "a" * 64 and manifest.splits["train"].examples == 9


@pytest.mark.parametrize(("change", "message"), [
    ({"format_version": 2}, r"manifest.json: a data manifest of format_version 2, but this sftpipe reads "
                            r"format_version 1 at most; upgrade sftpipe"),
    ({"format_version": "1"}, r"manifest.json: format_version '1' is not a version number"),
    ({"max_length": "long"}, r"manifest.json: not a data manifest \(max_length: Input should be a valid integer"),
    ({"tokenizer": {"name_or_path": "x"}}, r"manifest.json: not a data manifest \(tokenizer.sha256: Field required"),
    ({"tokenizer_sha": "x"}, r"manifest.json: not a data manifest \(tokenizer_sha: Extra inputs are not permitted"),
])
def test_a_manifest_this_sftpipe_cannot_read_is_refused_naming_the_file(tmp_path, change, message):
    values = {**json.loads(sample_manifest().model_dump_json()), **change}
    (tmp_path / "manifest.json").write_text(json.dumps(values), encoding="utf-8")
    with pytest.raises(SftpipeError, match=message) as info:
        DataDir(tmp_path).manifest  # noqa: B018 - reading it is the test
    assert str(tmp_path / "manifest.json") in str(info.value)


def test_a_dir_without_manifest_is_not_a_data_dir(tmp_path):
    assert not DataDir(tmp_path).is_prepared()
    with pytest.raises(SftpipeError, match="not a prepared data dir .no manifest.json.; run `sftpipe prepare`"):
        DataDir(tmp_path).manifest  # noqa: B018


def sample_run_manifest() -> RunManifest:
    return RunManifest(created="2026-01-02T03:04:05Z", versions={"sftpipe": "0.1.0", "torch": "2.5"}, git_sha=None,
                       seed=7, method="lora", base_model="tiny/model", tokenizer_sha256="a" * 64,
                       template_sha256="b" * 64, data_dir="data", data_manifest_sha256="c" * 64, world_size=1,
                       device="cpu", host="h")


def test_run_dir_layout_and_manifest_round_trip(tmp_path):
    run = RunDir(tmp_path / "run")
    assert (run.config, run.manifest_path, run.checkpoints, run.final, run.metrics, run.eval) == (
        tmp_path / "run" / "config.yaml", tmp_path / "run" / "run_manifest.json", tmp_path / "run" / "checkpoints",
        tmp_path / "run" / "final", tmp_path / "run" / "logs" / "metrics.jsonl", tmp_path / "run" / "eval")
    run.path.mkdir()
    run.write_manifest(sample_run_manifest())
    assert run.manifest == sample_run_manifest()
    assert not RunDir.is_run_dir(run.path) and RunDir.of_model(run.path) is None  # no final/ yet
    run.final.mkdir()
    assert RunDir.is_run_dir(run.path) and RunDir.of_model(run.path) == run == RunDir.of_model(run.final)
    assert RunDir.of_model(tmp_path) is None
    old = {k: v for k, v in json.loads(run.manifest_path.read_text()).items() if k != "format_version"}
    run.manifest_path.write_text(json.dumps(old))
    assert run.manifest == sample_run_manifest()
    run.manifest_path.write_text(json.dumps({**old, "format_version": 3}))
    with pytest.raises(SftpipeError, match=r"run_manifest.json: a run manifest of format_version 3"):
        run.manifest  # noqa: B018


def test_model_info_round_trips_and_a_merge_keeps_the_adapters(tmp_path):
    info = FinalInfo(sftpipe_version="0.1.0", method="lora", base_model="tiny", template="chatml",
                     tokenizer_sha256="a" * 64)
    assert read_final_info(tmp_path) is None
    write_info(tmp_path, info)
    assert read_final_info(tmp_path) == info
    old = {k: v for k, v in json.loads((tmp_path / INFO).read_text()).items() if k != "format_version"}
    (tmp_path / INFO).write_text(json.dumps(old))
    assert read_final_info(tmp_path) == info
    merged = MergedInfo.of(info, merged_from="run/final", max_abs_logit_diff=1e-6, dtype="bfloat16")
    write_info(tmp_path, merged)
    assert json.loads((tmp_path / INFO).read_text()) == {**old, "format_version": 1, "merged_from": "run/final",
                                                         "max_abs_logit_diff": 1e-6, "dtype": "bfloat16"}
    bare = MergedInfo.of(None, merged_from="adapter", max_abs_logit_diff=0.0, dtype="float32")
    assert bare.model_dump() == {"format_version": 1, "merged_from": "adapter", "max_abs_logit_diff": 0.0,
                                 "dtype": "float32"}


def _write_checkpoint(root: Path, step: int, digests: bool = True) -> Path:
    writer = CheckpointWriter.begin(root, step)
    tmp = writer.make_tmp()
    (tmp / "adapter_model.safetensors").write_bytes(b"weights")
    state = TrainerState(step=step, micro_batch=2 * step, tokens_seen=10, best_val_loss=float("nan"), best_step=1)
    writer.write_state(state, rng_states=[{"python": [1]}], fingerprint={"world_size": 1}, config_text="a: 1\n")
    return writer.seal(digests)


def test_checkpoint_seals_and_round_trips(tmp_path):
    ckpt = _write_checkpoint(tmp_path / "checkpoints", 3)
    assert ckpt.name == "checkpoint-3" and not (tmp_path / "checkpoints" / ".tmp-checkpoint-3").exists()
    verify_checkpoint(ckpt)
    state = load_trainer_state(ckpt)
    assert (state.step, state.micro_batch, state.best_step, state.format_version) == (3, 6, 1, 1)
    assert state.best_val_loss != state.best_val_loss  # NaN survives, as json writes it
    marker = CompleteMarker.model_validate_json((ckpt / COMPLETE).read_text())
    assert marker.step == 3 and set(marker.files) == {"adapter_model.safetensors", STATE, "rng.json",
                                                      "fingerprint.json", "config.yaml"}
    assert json.loads((ckpt / COMPLETE).read_text())["format_version"] == 1
    light = _write_checkpoint(tmp_path / "light", 1, digests=False)
    assert all(set(f) == {"bytes"} for f in json.loads((light / COMPLETE).read_text())["files"].values())
    (ckpt / "adapter_model.safetensors").write_bytes(b"weighty")  # negative control: damage is caught
    with pytest.raises(SftpipeError, match="SHA-256 mismatch"):
        verify_checkpoint(ckpt)


def _strip_versions(ckpt: Path) -> None:
    """Rewrite a checkpoint's JSON the way sftpipe wrote it before format_version, and reseal it that way."""
    state = json.loads((ckpt / STATE).read_text())
    state.pop("format_version")
    (ckpt / STATE).write_text(json.dumps(state, indent=1))
    if (ckpt / INFO).is_file():
        info = json.loads((ckpt / INFO).read_text())
        info.pop("format_version")
        (ckpt / INFO).write_text(json.dumps(info, indent=2))
    (ckpt / COMPLETE).write_text(json.dumps({"step": state["step"], "files": file_digests(ckpt)}, indent=1))


def test_checkpoint_files_without_format_version_read_as_version_1_and_newer_ones_are_refused(tmp_path):
    ckpt = _write_checkpoint(tmp_path / "checkpoints", 2)
    _strip_versions(ckpt)
    assert "format_version" not in (ckpt / STATE).read_text() + (ckpt / COMPLETE).read_text()
    verify_checkpoint(ckpt)
    assert dataclasses.replace(load_trainer_state(ckpt), best_val_loss=None) == TrainerState(
        step=2, micro_batch=4, tokens_seen=10, best_step=1)
    state = json.loads((ckpt / STATE).read_text())
    (ckpt / STATE).write_text(json.dumps({**state, "format_version": 2}))
    with pytest.raises(SftpipeError, match=r"trainer_state.json: a trainer state of format_version 2, but this "
                                           r"sftpipe reads format_version 1 at most"):
        load_trainer_state(ckpt)
    (ckpt / STATE).write_text(json.dumps({**state, "stepp": 3}))
    with pytest.raises(SftpipeError, match=r"trainer_state.json: not a trainer state \(stepp: Unexpected keyword"):
        load_trainer_state(ckpt)
    marker = json.loads((ckpt / COMPLETE).read_text())
    (ckpt / COMPLETE).write_text(json.dumps({**marker, "format_version": 2}))
    with pytest.raises(SftpipeError, match=r"COMPLETE: a checkpoint marker of format_version 2"):
        verify_checkpoint(ckpt)


def test_a_run_resumes_from_a_checkpoint_and_data_dir_written_before_format_version(tmp_path, tiny_dir, chat_sources):
    """Checkpoint and manifest rewritten as sftpipe wrote them before the contracts: the resumed run ends bitwise
    like the uninterrupted one."""
    from sftpipe import stages
    from sftpipe.data import prepare
    from tests.run_compare import run_differences

    train = {"max_steps": 4, "save_every": 2, "save_total_limit": 3}
    full = make_config(tmp_path / "a", tiny_dir, chat_sources, train=train, lora={"dropout": 0.1})
    prepare.run(full)
    stages.train(full, resume="never")
    old = make_config(tmp_path / "b", tiny_dir, chat_sources, train=train, lora={"dropout": 0.1})
    shutil.copytree(tmp_path / "a" / "data", tmp_path / "b" / "data")
    manifest = json.loads((tmp_path / "b" / "data" / "manifest.json").read_text())
    manifest.pop("format_version")
    (tmp_path / "b" / "data" / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    a_run, b_run = RunDir(tmp_path / "a" / "run"), RunDir(tmp_path / "b" / "run")
    ckpt = Path(shutil.copytree(a_run.checkpoints / "checkpoint-2", b_run.checkpoints / "checkpoint-2"))
    _strip_versions(ckpt)
    b_run.logs.mkdir()
    shutil.copy(a_run.metrics, b_run.metrics)  # as a killed run leaves it: lines past step 2

    result = stages.train(old, resume="auto")

    assert result.resumed_from == ckpt and result.steps == 4
    diffs = run_differences(a_run.path, b_run.path)
    assert not diffs, "\n".join(diffs[:10])
