"""Preflight: `validate` finds every problem at once and plans what training will do; `doctor` reports
the environment and how to fix what is missing."""

from __future__ import annotations

import json
import re
import shutil
from types import SimpleNamespace

import pytest
import torch

from sftpipe import stages
from sftpipe.cli import main
from sftpipe.contracts.checkpoint import weight_files
from sftpipe.data import prepare
from sftpipe.data.tokenize import IGNORE_INDEX
from sftpipe.models.adapters import build_trainable_model, count_parameters
from sftpipe.models.tiny import init_tiny
from sftpipe.evaluate.execution.sandbox import available_isolation
from sftpipe.preflight import doctor, validate
from tests.conftest import EXAMPLES, make_config

SOURCES = [{"path": str(EXAMPLES / "prompt_completion" / "pc_sample.jsonl")}]


def _by_name(result, name):
    return [c for c in result.checks if c.name == name]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_plan_matches_a_real_build(tmp_path, tiny_dir, method):
    cfg = make_config(tmp_path, tiny_dir, SOURCES, train={"method": method})
    result = validate.run(cfg)
    assert not result.failed, [c.line() for c in result.failed]
    model_check = _by_name(result, "model")[0]
    trainable, total = count_parameters(build_trainable_model(cfg, torch.device("cpu")))
    assert f"{total:,} params, {trainable:,} trainable" in model_check.detail
    assert _by_name(result, "data dir")[0].status == "warn" and "not prepared yet" in _by_name(result, "data dir")[0].detail


def test_sample_marks_exactly_the_trained_tokens(tmp_path, tiny_dir, tokenizer):
    cfg = make_config(tmp_path, tiny_dir, SOURCES)
    result = validate.run(cfg)
    assert result.sample_location.endswith("pc_sample.jsonl:1")
    first = json.loads((EXAMPLES / "prompt_completion" / "pc_sample.jsonl").read_text().splitlines()[0])
    trained = result.sample.split(validate.TRAINED_OPEN, 1)[1].split(validate.TRAINED_CLOSE, 1)[0]
    assert trained == first["completion"] + "<|im_end|>"
    assert result.sample.count(validate.TRAINED_OPEN) == 1 and first["prompt"] in result.sample
    # the marking follows the labels, not the text
    ids = tokenizer("ab cd", add_special_tokens=False).input_ids
    labels = [IGNORE_INDEX] + ids[1:]
    marked = validate.mark_trained(tokenizer, ids, labels)
    assert marked.startswith(tokenizer.decode(ids[:1])) and marked.endswith(validate.TRAINED_CLOSE)


def test_prepared_data_and_checkpoints_are_checked_against_the_config(tmp_path, tiny_dir):
    cfg = make_config(tmp_path, tiny_dir, SOURCES, train={"max_steps": 3, "save_every": 1})
    prepare.run(cfg)
    result = stages.train(cfg, resume="never")
    checks = validate.run(cfg)
    assert not checks.failed
    data_dir = _by_name(checks, "data dir")
    # ok, or warn when padded batches waste token slots (the hint to pack)
    assert [c.status for c in data_dir] in (["ok"], ["warn"]) and "3 optimizer steps planned" in data_dir[0].detail
    assert f"train would resume from {result.run_dir / 'checkpoints' / 'checkpoint-3'} (verified)" in \
        _by_name(checks, "run dir")[0].detail
    # the estimate of a checkpoint's size is the size of the weight and optimizer files written
    disk = _by_name(checks, "disk")[0].detail
    ckpt = result.run_dir / "checkpoints" / "checkpoint-3"
    written = sum(p.stat().st_size for p in weight_files(ckpt)) + (ckpt / "optimizer.safetensors").stat().st_size
    estimate = float(disk.split("checkpoints of ~")[1].split(" ")[0]) * 1024  # KiB
    assert 0.7 * written < estimate < 1.3 * written, (estimate, written)

    changed = make_config(tmp_path, tiny_dir, SOURCES, train={"max_steps": 3, "save_every": 1,
                                                              "micro_batch_size": 4},
                          data={"max_length": 300})
    checks = validate.run(changed)
    details = " ".join(c.detail for c in checks.checks if c.status == "warn")
    assert "prepared with other data settings (data.max_length)" in details
    assert "train would refuse to resume" in details and "train.micro_batch_size: 2 in the checkpoint, 4 now" in details


def test_other_tokenizer_than_the_data_is_a_failure(tmp_path, tiny_dir):
    cfg = make_config(tmp_path, tiny_dir, SOURCES)
    prepare.run(cfg)
    other = tmp_path / "other"
    init_tiny(other, size="micro", seed=0, corpus=[EXAMPLES / "qa"], vocab_size=700)
    result = validate.run(make_config(tmp_path, other, SOURCES))
    assert [c.detail for c in result.failed if c.name == "data dir"] == [
        f"{tmp_path / 'data'}: tokenized with another tokenizer ({tiny_dir}); re-run `sftpipe prepare`"]


def test_every_problem_is_reported_at_once(tmp_path, tiny_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "completion": "a"}\n{broken\n')
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(f"""
preset: fast_test
model: {{name_or_path: {tiny_dir}}}
data:
  sources: [{{path: {bad}}}, {{path: {tmp_path / 'missing.jsonl'}}}]
  output_dir: {tmp_path / 'data'}
  on_error: raise
lora: {{target_modules: [not_a_layer]}}
train: {{output_dir: {tmp_path / 'run'}, device: cuda}}
""")
    if torch.cuda.is_available():
        pytest.skip("the device check fails only without a GPU")
    assert main(["validate", str(cfg_path)]) == 2
    out, err = capsys.readouterr()
    assert "error: 4 check(s) failed: source, source, model, device" in err
    assert f"fail  source       {bad}: first 2 records" in out and f"{bad}:2: invalid_json" in out
    assert "missing.jsonl': not found" in out and "{'not_a_layer'} not found" in out
    assert "train.device is cuda but no CUDA GPU is visible" in out


def test_too_little_disk_is_a_failure(tmp_path, tiny_dir, monkeypatch):
    cfg = make_config(tmp_path, tiny_dir, SOURCES)
    monkeypatch.setattr(validate.shutil, "disk_usage", lambda path: SimpleNamespace(free=1000))
    result = validate.run(cfg)
    assert [c.name for c in result.failed] == ["disk"]
    assert "1000 B free" in result.failed[0].detail and "lower train.save_total_limit" in result.failed[0].detail
    monkeypatch.undo()  # negative control: with the real free space the same config passes
    assert not validate.run(cfg).failed


def test_doctor_on_this_machine(capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_CANARY_doctor")
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for name in ("python", "torch", "transformers", "peft", "accelerate", "datasets", "safetensors"):
        assert f"  ok    {name}" in out
    assert "HF_TOKEN set" in out and "CANARY" not in out
    if not torch.cuda.is_available():
        assert "warn  cuda" in out and "training runs on CPU" in out
    ghc = shutil.which("ghc")
    assert re.search(rf"ok +ghc +{ghc}\n" if ghc else r"warn +ghc +missing .*apt-get install ghc", out)
    assert bool(re.search(r"ok +sandbox +bubblewrap", out)) == ("bwrap" in available_isolation())
    missing = [d for d in doctor.OPTIONAL if doctor._version(d) is None]
    for dist in missing:
        assert f"missing (for {doctor.OPTIONAL[dist][0]}): {doctor.OPTIONAL[dist][1]}" in out


def test_doctor_with_a_gpu_without_bf16_and_a_missing_package(monkeypatch, capsys):
    props = SimpleNamespace(name="Tesla V100-SXM2-32GB", total_memory=32 * 1024**3, major=7, minor=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    real = doctor.metadata.version

    def version(dist):
        if dist in ("peft", "flash-attn"):
            raise doctor.metadata.PackageNotFoundError(dist)
        return real(dist)

    monkeypatch.setattr(doctor.metadata, "version", version)
    checks = {c.name: c for c in doctor.run()}
    assert checks["gpu 0"].detail == "Tesla V100-SXM2-32GB, 32.0 GiB, compute capability 7.0"
    assert checks["bf16"].status == "warn" and "train.precision: fp32" in checks["bf16"].detail
    assert checks["flash-attn"].status == "warn" and "pip install flash-attn --no-build-isolation" in \
        checks["flash-attn"].detail
    assert checks["peft"].status == "fail"
    assert main(["doctor"]) == 2
    assert "error: required parts missing: peft" in capsys.readouterr().err


def test_checkpoint_weights_are_what_load_weights_reads(tmp_path, lora_run):
    """The weight files validate sizes are the ones resume loads: optimizer state is not among them."""
    _, result = lora_run
    ckpt = next((result.run_dir / "checkpoints").iterdir())
    assert [p.name for p in weight_files(ckpt)] == ["adapter_model.safetensors"]
    assert "optimizer.safetensors" in {p.name for p in ckpt.iterdir()}


@pytest.mark.parametrize("train", [{"micro_batch_size": 3},
                                   {"packing": True, "pack_length": 256, "tokens_per_batch": 512},
                                   {"tokens_per_batch": 600}], ids=["padded", "packed", "grouped"])
def test_validate_plans_the_batches_train_makes(tmp_path, tiny_dir, train):
    """Steps and padding that validate announces are those one epoch of training then measures."""
    cfg = make_config(tmp_path, tiny_dir, SOURCES, model={"attn_implementation": "sdpa"},  # padded packed rows
                      train={"epochs": 1, "max_steps": 0, "grad_accum": 1, "eval_every": 0, **train})
    prepare.run(cfg)
    detail = _by_name(validate.run(cfg), "data dir")[0].detail
    result = stages.train(cfg, resume="never")
    assert f"; {result.steps} optimizer steps planned" in detail, detail
    padding = int(detail.split("% of the token slots are padding")[0].rsplit(" ", 1)[1])
    assert abs(padding - 100 * (1 - result.packing_efficiency)) <= 0.5, (detail, result.packing_efficiency)
    if not train.get("packing"):
        assert padding > 0  # these samples vary in length: a plan without padding would be a wrong plan


def test_doctor_lists_only_packages_sftpipe_uses(capsys):
    """An optional package in the doctor's list is one whose module some code of sftpipe imports."""
    import ast
    from pathlib import Path

    src = Path(validate.__file__).resolve().parents[1]
    used = set()
    for path in src.rglob("*.py"):
        if path.name == "doctor.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                used.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                used.add(node.module.split(".")[0])
    assert doctor.OPTIONAL and all(dist.replace("-", "_") in used for dist in doctor.OPTIONAL), \
        [d for d in doctor.OPTIONAL if d.replace("-", "_") not in used]
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for name in ("bitsandbytes", "deepspeed", "optuna", "QLoRA", "hyperparameter"):  # not built yet
        assert name not in out, name
