"""Faults: disk full during a save, damaged checkpoints, and resuming a run with other settings or data."""

from __future__ import annotations

import errno
import json
import re
import shutil

import pytest

from sftpipe import stages
from sftpipe.contracts.checkpoint import COMPLETE, complete_checkpoints, file_digests, verify_checkpoint
from sftpipe.data import prepare
from sftpipe.errors import SftpipeError
from sftpipe.train import checkpoint
from sftpipe.train.checkpoint import dir_bytes
from tests.conftest import make_config, pc_records, write_jsonl
from tests.run_compare import final_weights, run_differences

TRAIN = {"max_steps": 4, "save_every": 1, "save_total_limit": 10, "eval_every": 2}


def _config(root, name, tiny_dir, data_dir, **sections):
    source = write_jsonl(root / "pc.jsonl", pc_records())
    train = {**TRAIN, "output_dir": str(root / name / "run"), **sections.pop("train", {})}
    return make_config(root / name, tiny_dir, [{"path": str(source)}], lora={"dropout": 0.1}, train=train,
                       data={"output_dir": str(data_dir), **sections.pop("data", {})}, **sections)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_dir):
    root = tmp_path_factory.mktemp("faults")
    cfg = _config(root, "reference", tiny_dir, root / "data")
    prepare.run(cfg)
    stages.train(cfg, resume="never")
    return root, cfg


def _copy_run(root, name, tiny_dir, upto: int, **sections):
    """A run dir holding the reference's checkpoints 1..upto, as a crash after step `upto` leaves it."""
    cfg = _config(root, name, tiny_dir, root / "data", **sections)
    run_dir = root / name / "run"
    for step in range(1, upto + 1):
        src = root / "reference" / "run" / "checkpoints" / f"checkpoint-{step}"
        shutil.copytree(src, run_dir / "checkpoints" / src.name)
    return cfg, run_dir


def test_disk_full_during_save_keeps_previous_checkpoint_and_says_how_much_is_needed(reference, tiny_dir,
                                                                                      monkeypatch):
    root, _ = reference
    cfg = _config(root, "diskfull", tiny_dir, root / "data", train={"save_every": 2})
    run_dir = root / "diskfull" / "run"
    real = checkpoint.save_optimizer
    calls = []

    def full_disk(optimizer, out):
        calls.append(out)
        if len(calls) == 2:  # the save at step 4: weights already written into the temporary dir
            (out / "optimizer.safetensors").write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        real(optimizer, out)

    monkeypatch.setattr(checkpoint, "save_optimizer", full_disk)
    with pytest.raises(SftpipeError) as info:
        stages.train(cfg, resume="never")
    message = str(info.value)
    assert "disk full while writing checkpoint-4" in message and "No space left on device" in message
    assert "checkpoint-2 is intact" in message and "partial checkpoint was removed" in message
    # the estimate is the size a checkpoint really takes (checkpoint-4 of the uninterrupted run)
    needed = re.search(r"needs about ([\d.]+) (KiB|MiB)", message)
    real_size = dir_bytes(root / "reference" / "run" / "checkpoints" / "checkpoint-4")
    estimate = float(needed.group(1)) * (1024 if needed.group(2) == "KiB" else 1024**2)
    assert 0.5 * real_size < estimate < 2 * real_size, (estimate, real_size)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["checkpoint-2"]
    verify_checkpoint(run_dir / "checkpoints" / "checkpoint-2")

    monkeypatch.setattr(checkpoint, "save_optimizer", real)  # space freed: the same command resumes
    result = stages.train(cfg, resume="auto")
    assert result.resumed_from.name == "checkpoint-2"
    assert not run_differences(root / "reference" / "run", run_dir)


def _truncate(ckpt):
    path = ckpt / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _flip_byte(ckpt):
    path = ckpt / "adapter_model.safetensors"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def _delete_optimizer(ckpt):
    path = ckpt / "optimizer.safetensors"
    path.unlink()
    return path


def _reseal(ckpt):
    """Rewrite the marker to match the files: damage a checksum cannot catch (or written on purpose)."""
    marker = json.loads((ckpt / COMPLETE).read_text())
    (ckpt / COMPLETE).write_text(json.dumps({**marker, "files": file_digests(ckpt)}))


def _garbage_weights_resealed(ckpt):
    path = ckpt / "adapter_model.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}" + b"\0" * 64)
    _reseal(ckpt)
    return path


def _garbage_state_resealed(ckpt):
    path = ckpt / "trainer_state.json"
    path.write_text('{"step": 3, "micro_')
    _reseal(ckpt)
    return path


def _garbage_marker(ckpt):
    path = ckpt / COMPLETE
    path.write_text("ok\n")
    return path


def _wrong_shapes_resealed(ckpt):
    """Optimizer state of another model: intact files that do not fit."""
    path = ckpt / "optimizer.json"
    meta = json.loads(path.read_text())
    meta["param_groups"] = meta["param_groups"][:1]
    path.write_text(json.dumps(meta))
    _reseal(ckpt)
    return path


DAMAGE = {
    "truncated weights": (_truncate, "bytes on disk but"),
    "flipped byte in weights": (_flip_byte, "SHA-256 mismatch"),
    "missing optimizer state": (_delete_optimizer, "missing"),
    "garbage weights, marker rewritten": (_garbage_weights_resealed, "corrupt or truncated safetensors"),
    "garbage trainer state, marker rewritten": (_garbage_state_resealed, "unreadable or corrupt"),
    "marker not written by sftpipe": (_garbage_marker, "unreadable or corrupt"),
    "optimizer state that does not fit, marker rewritten": (_wrong_shapes_resealed, "does not fit"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_checkpoint_is_named_and_auto_resume_falls_back(reference, tiny_dir, capsys, damage):
    root, _ = reference
    name = re.sub(r"\W+", "-", damage)
    cfg, run_dir = _copy_run(root, name, tiny_dir, upto=3)
    corrupt, expected = DAMAGE[damage]
    broken = corrupt(run_dir / "checkpoints" / "checkpoint-3")

    with pytest.raises(SftpipeError) as info:  # asked for by path: no fallback, the file is named
        stages.train(cfg, resume=str(run_dir / "checkpoints" / "checkpoint-3"))
    assert str(broken) in str(info.value) and expected in str(info.value)

    result = stages.train(cfg, resume="auto")
    err = capsys.readouterr().err
    assert result.resumed_from.name == "checkpoint-2"
    assert "warning:" in err and "falling back to the previous complete checkpoint" in err and str(broken) in err
    if damage == "truncated weights":  # the fallback run still ends exactly like the uninterrupted one
        ref, got = final_weights(root / "reference" / "run"), final_weights(run_dir)
        assert all(ref[k].equal(got[k]) for k in ref)


def test_every_checkpoint_damaged_is_an_error_not_a_fresh_start(reference, tiny_dir):
    root, _ = reference
    cfg, run_dir = _copy_run(root, "all-damaged", tiny_dir, upto=2)
    for ckpt in complete_checkpoints(run_dir):
        _truncate(ckpt)
    with pytest.raises(SftpipeError, match=r"no usable checkpoint(.|\n)*checkpoint-2(.|\n)*checkpoint-1"
                                           r"(.|\n)*--resume never"):
        stages.train(cfg, resume="auto")


REFUSED = {
    "micro_batch_size": ({"train": {"micro_batch_size": 4}}, ["train.micro_batch_size: 2 in the checkpoint, 4 now"]),
    "grad_accum and lr": ({"train": {"grad_accum": 4, "lr": 5e-4}},
                          ["train.grad_accum: 2 in the checkpoint, 4 now", "train.lr: 0.001 in the checkpoint"]),
    "data": ("other data", ["data (prepared data dir content): SHA-256"]),
    "model": ("other model", ["base model", "model.name_or_path: "]),
}


@pytest.mark.parametrize("change", list(REFUSED))
def test_resume_with_other_settings_data_or_model_is_refused_unless_forced(reference, tiny_dir, capsys, change):
    root, _ = reference
    sections, expected = REFUSED[change]
    name = f"refuse-{change.replace(' ', '-')}"
    if sections == "other data":
        source = write_jsonl(root / "pc16.jsonl", pc_records(16))
        sections = {"data": {"sources": [{"path": str(source)}], "output_dir": str(root / "data16")}}
        prepare.run(_config(root, name, tiny_dir, root / "data16", data=sections["data"]))
    elif sections == "other model":
        other = root / "other-model"
        if not other.exists():
            shutil.copytree(tiny_dir, other)
        sections = {"model": {"name_or_path": str(other)}}
    cfg, run_dir = _copy_run(root, name, tiny_dir, upto=2, **sections)

    with pytest.raises(SftpipeError) as info:
        stages.train(cfg, resume="auto")
    message = str(info.value)
    assert message.startswith("refusing to resume from") and "--resume-force" in message
    assert all(item in message for item in expected), message
    assert not (run_dir / "final").exists()

    result = stages.train(cfg, resume="auto", resume_force=True)
    assert result.resumed_from.name == "checkpoint-2"
    assert "--resume-force: resuming from" in capsys.readouterr().err


def test_changing_only_output_settings_resumes_without_complaint(reference, tiny_dir, capsys):
    root, _ = reference
    cfg, run_dir = _copy_run(root, "output-only", tiny_dir, upto=2,
                             train={"save_every": 3, "log_every": 2, "save_total_limit": 1, "eval_every": 0})
    result = stages.train(cfg, resume="auto")
    assert result.resumed_from.name == "checkpoint-2" and "warning" not in capsys.readouterr().err
    # the weights do not depend on how often the run logs, validates or saves
    ref, got = final_weights(root / "reference" / "run"), final_weights(run_dir)
    assert all(ref[k].equal(got[k]) for k in ref)


def test_data_fingerprint_follows_content_not_place_or_time(reference, tiny_dir):
    from sftpipe.train.resume import data_fingerprint

    root, cfg = reference
    again = _config(root, "fingerprint-same", tiny_dir, root / "data-again")
    prepare.run(again)  # same sources, another dir, a later time
    assert data_fingerprint(root / "data-again") == data_fingerprint(root / "data")
    moved = write_jsonl(root / "moved" / "copy.jsonl", pc_records())
    prepare.run(_config(root, "fingerprint-moved", tiny_dir, root / "data-moved",
                        data={"sources": [{"path": str(moved)}]}))
    assert data_fingerprint(root / "data-moved") == data_fingerprint(root / "data")
    from sftpipe.contracts.data_dir import DataDir

    records = pc_records()
    line = int(DataDir(root / "data").load_split("train")[0]["location"].rsplit(":", 1)[1])
    records[line - 1]["completion"] += " Changed."  # one trained answer changes: the fingerprint must see it
    changed = write_jsonl(root / "changed" / "pc.jsonl", records)
    prepare.run(_config(root, "fingerprint-changed", tiny_dir, root / "data-changed",
                        data={"sources": [{"path": str(changed)}]}))
    assert data_fingerprint(root / "data-changed") != data_fingerprint(root / "data")


def test_without_digests_sizes_are_still_checked(reference, tiny_dir):
    root, _ = reference
    cfg = _config(root, "sizes-only", tiny_dir, root / "data", train={"max_steps": 2, "checkpoint_digests": False})
    stages.train(cfg, resume="never")
    ckpt = root / "sizes-only" / "run" / "checkpoints" / "checkpoint-2"
    files = json.loads((ckpt / COMPLETE).read_text())["files"]
    assert files and all(set(entry) == {"bytes"} for entry in files.values())
    verify_checkpoint(ckpt)
    _flip_byte(ckpt)
    verify_checkpoint(ckpt)  # the price of turning digests off: damage that keeps the size goes unnoticed
    broken = _truncate(ckpt)
    with pytest.raises(SftpipeError, match="bytes on disk but"):
        verify_checkpoint(ckpt)
    assert broken.name == "adapter_model.safetensors"


@pytest.mark.parametrize("sample_bytes", [64 * 1024, 512])  # whole small files; sampled blocks of larger ones
def test_model_fingerprint_sees_other_weights_of_the_same_shape(tmp_path, tiny_dir, monkeypatch, sample_bytes):
    """A fine-tune or another checkpoint of one architecture put where the base model was: same path, same
    config.json, same file sizes, other weights. Resuming on it would continue another trajectory."""
    from safetensors.torch import load_file, save_file

    from sftpipe.train import resume

    monkeypatch.setattr(resume, "WEIGHT_SAMPLE_BYTES", sample_bytes)
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    before = resume.model_fingerprint(str(model))
    weights = next(model.glob("*.safetensors"))
    assert weights.stat().st_size > resume.WEIGHT_SAMPLES * 512  # the 512-byte case samples, not reads whole
    listing = lambda: sorted((p.name, p.stat().st_size) for p in model.glob("*.safetensors"))  # noqa: E731
    sizes = listing()
    tensors = load_file(weights)
    save_file({k: v * 1.01 for k, v in tensors.items()}, str(weights), metadata={"format": "pt"})
    assert listing() == sizes  # names and sizes alone cannot tell (what the fingerprint used to hold)
    assert resume.model_fingerprint(str(model)) != before
    save_file(tensors, str(weights), metadata={"format": "pt"})
    assert resume.model_fingerprint(str(model)) == before  # the same weights again: the same fingerprint


def test_model_fingerprint_of_a_hub_id_follows_its_cached_snapshot(tmp_path, tiny_dir, monkeypatch):
    """`model.name_or_path: org/name`: the repository updated under the same name is another model."""
    from sftpipe.train import resume

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--org--tiny"
    (repo / "refs").mkdir(parents=True)

    def publish(revision: str, scale: float) -> None:
        from safetensors.torch import load_file, save_file

        snap = repo / "snapshots" / revision
        shutil.copytree(tiny_dir, snap)
        weights = next(snap.glob("*.safetensors"))
        save_file({k: v * scale for k, v in load_file(weights).items()}, str(weights), metadata={"format": "pt"})
        (repo / "refs" / "main").write_text(revision)

    assert resume.model_fingerprint("org/tiny") == resume.model_fingerprint("org/tiny")  # not cached: the name
    uncached = resume.model_fingerprint("org/tiny")
    rev1, rev2 = "a" * 40, "b" * 40  # commit hashes name the snapshot dirs
    publish(rev1, 1.0)
    first = resume.model_fingerprint("org/tiny")
    assert first != uncached
    publish(rev2, 1.01)  # the repository's main branch moves to new weights
    assert resume.model_fingerprint("org/tiny") != first
    assert resume.model_fingerprint("org/tiny", revision=rev1) == first  # a pinned revision keeps its identity
