"""Resume: pick the newest usable checkpoint, refuse one from a different run, trim the logs back to it.

`--resume auto` walks the complete checkpoints from the newest down: one that fails verification or
loading (truncated, corrupt, tampered) is reported with a warning and the previous one is tried. A
checkpoint whose run fingerprint (trajectory-deciding config, data, tokenizer, model, process count) differs
from the current run's is refused with the list of differences, unless `--resume-force`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sftpipe.config.schema import Config, LoraConfig, ModelConfig, TrainConfig
from sftpipe.contracts.checkpoint import (
    COMPLETE,
    TrainerState,
    complete_checkpoints,
    is_complete,
    read_fingerprint,
    verify_checkpoint,
)
from sftpipe.contracts.data_dir import DataDir
from sftpipe.errors import SftpipeError
from sftpipe.redact import redact
from sftpipe.train.checkpoint import restore_checkpoint

# Fields that may change between a run and its resumption: they decide where output goes and how often
# it is written, not what the weights become. Every other model/lora/train field is part of the fingerprint,
# so a field added later is protected by default.
SAFE_TO_CHANGE = frozenset({
    "train.output_dir", "train.save_every", "train.save_total_limit", "train.eval_every", "train.log_every",
    "train.progress_bar", "train.progress_every_s", "train.num_workers", "train.device", "train.checkpoint_digests",
    "train.cpu_threads", "train.select_best", "train.report_to", "train.run_name", "train.project", "train.tags",
    "model.gradient_checkpointing",
})


def run_fingerprint(cfg: Config, data_dirs: Path | Sequence[Path], tokenizer_sha256: str, world_size: int
                    ) -> dict[str, Any]:
    """What a checkpoint must share with the current run for resuming to continue the same trajectory.

    Args:
        data_dirs: the data dir trained on, or the dirs of a `train.data` mix in order (their weights and
            names are config settings: a change is listed like any other).
    """
    sections = {"model": cfg.model, "train": cfg.train}
    if cfg.train.method in ("lora", "qlora"):
        sections["lora"] = cfg.lora
    # the quantized base is rebuilt from the base model's weights, so its settings are what the checkpoint must match
    unused = set() if cfg.train.method == "qlora" else {"model.quantization"}
    settings = {f"{name}.{key}": value for name, section in sections.items()
                for key, value in redact(section.model_dump(mode="json")).items()
                if f"{name}.{key}" not in SAFE_TO_CHANGE | unused}
    return {
        "config": settings,
        "data_sha256": data_fingerprint(data_dirs) if isinstance(data_dirs, Path) else mix_fingerprint(data_dirs),
        "tokenizer_sha256": tokenizer_sha256,
        "model_sha256": model_fingerprint(cfg.model.name_or_path, cfg.model.revision),
        "world_size": world_size,
    }


def data_fingerprint(data_dir: Path) -> str:
    """SHA-256 of what training reads: the train split's example lengths, token ids and labels, in order.

    Preparing the same records again gives the same fingerprint wherever the files or the data dir are, and
    however the split is cut into shards and record batches; any change to a trained example (text, template,
    max_length, tokenizer) changes it. The memory-mapped record batches are hashed one at a time, so
    fingerprinting a large split holds no copy of it in memory.
    """
    table = DataDir(data_dir).load_split("train").with_format("arrow")[:].select(["input_ids", "labels"])
    parts = {name: hashlib.sha256() for name in ("lengths", "input_ids", "labels")}
    for batch in table.to_batches():
        for column, name in ((batch.column(0), "input_ids"), (batch.column(1), "labels")):
            offsets = column.offsets.to_numpy()
            parts[name].update(column.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]
                               .astype("<i4", copy=False).tobytes())
            if name == "input_ids":
                parts["lengths"].update(np.diff(offsets).astype("<i8").tobytes())
    return hashlib.sha256(b"sftpipe-data-v2" + b"".join(h.digest() for h in parts.values())).hexdigest()


def mix_fingerprint(data_dirs: Sequence[Path]) -> str:
    """SHA-256 of the dirs' `data_fingerprint`s in order: any change to any dir's train split changes it."""
    return hashlib.sha256("\n".join(data_fingerprint(Path(d)) for d in data_dirs).encode()).hexdigest()


# Weight files are fingerprinted by samples, not hashed whole (tens of GB for large models): two models of one
# architecture (a base and its fine-tune, two checkpoints of one run) differ in practically every block.
WEIGHT_SAMPLES = 16
WEIGHT_SAMPLE_BYTES = 64 * 1024


def model_fingerprint(name_or_path: str, revision: str | None = None) -> str:
    """The base model's identity: its config.json and, per weight file, its name, size and the SHA-256 of 16
    blocks of 64 KiB spread evenly over it (the whole file when smaller).

    A hub id is fingerprinted by its snapshot in the local cache (training has loaded it by then), so a
    repository updated under the same name is told apart too; by its name alone when it is not cached.
    """
    path = Path(name_or_path)
    parts: list[Any] = [name_or_path]
    if not path.is_dir():
        path = cached_snapshot(name_or_path, revision) or path
    if path.is_dir():
        config = path / "config.json"
        parts.append(hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else None)
        parts.append(sorted((p.name, p.stat().st_size, sampled_sha256(p)) for p in path.glob("*.safetensors")))
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def cached_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The local snapshot dir of a hub model, without network access; None when it is not cached."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True,
                                      allow_patterns=["config.json", "*.safetensors"]))
    except Exception:  # noqa: BLE001 - not a hub id, not cached, or no hub library: the name is all there is
        return None


def sampled_sha256(path: Path) -> str:
    """SHA-256 of WEIGHT_SAMPLES blocks at evenly spaced offsets of `path` (all of it when it is small)."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        if size <= WEIGHT_SAMPLES * WEIGHT_SAMPLE_BYTES:
            digest.update(fh.read())
        else:
            for i in range(WEIGHT_SAMPLES):
                fh.seek((size - WEIGHT_SAMPLE_BYTES) * i // (WEIGHT_SAMPLES - 1))
                digest.update(fh.read(WEIGHT_SAMPLE_BYTES))
    return digest.hexdigest()


def setting_defaults() -> dict[str, Any]:
    """The default of every fingerprinted setting, as it appears in a fingerprint."""
    sections = {"model": ModelConfig(), "train": TrainConfig(), "lora": LoraConfig()}
    return {f"{name}.{key}": value for name, section in sections.items()
            for key, value in redact(section.model_dump(mode="json")).items()}


def fingerprint_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """One line per difference between a checkpoint's fingerprint and the current run's."""
    diffs = []
    saved_cfg, current_cfg = saved.get("config", {}), current["config"]
    defaults = setting_defaults()
    for key in sorted(set(saved_cfg) | set(current_cfg)):
        now = current_cfg.get(key, "<not set>")
        # a setting added to sftpipe after the checkpoint was written: the checkpoint ran with its default
        before = saved_cfg.get(key, defaults.get(key, "<not set>"))
        if before != now:
            diffs.append(f"{key}: {before!r} in the checkpoint, {now!r} now")
    labels = {"data_sha256": "data (prepared data dir content)", "tokenizer_sha256": "tokenizer",
              "model_sha256": "base model (model.name_or_path, its config.json or weight files)"}
    for key, label in labels.items():
        if saved.get(key) != current[key]:
            before = str(saved.get(key))[:12]
            diffs.append(f"{label}: SHA-256 {before}… in the checkpoint, {current[key][:12]}… now")
    if saved.get("world_size") != current["world_size"]:
        diffs.append(f"processes: {saved.get('world_size')} in the checkpoint, {current['world_size']} now")
    return diffs


def resume_from_latest_complete(
    run_dir: Path,
    resume: str,
    fingerprint: dict[str, Any],
    force: bool,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    warn: Callable[[str], None],
    process_index: int = 0,
    restore: Callable[[Path], TrainerState] | None = None,
) -> tuple[TrainerState, Path | None]:
    """Restore the checkpoint `resume` asks for into the live objects.

    Args:
        resume: "auto" (newest usable complete checkpoint, falling back past unusable ones), "never", or
            a checkpoint dir (used as given: no fallback).
        force: resume even when the fingerprint differs (the differences are printed as a warning).
        warn: prints one warning line.
        process_index: this process's index, to pick its own RNG state.
        restore: loads a verified checkpoint into the live objects instead of `restore_checkpoint` (a sharded
            run's, which every process calls).

    Returns:
        (trainer state, checkpoint path) or (fresh state, None) when there is nothing to resume.

    Raises:
        SftpipeError: the named checkpoint is unusable, every complete checkpoint is, or the fingerprint
            differs without `force`.
    """
    if resume == "never":
        return TrainerState(), None
    if resume == "auto":
        candidates = list(reversed(complete_checkpoints(run_dir)))
    else:
        path = Path(resume)
        if not is_complete(path):
            raise SftpipeError(f"--resume {resume}: not a complete checkpoint dir (no {COMPLETE} marker)")
        candidates = [path]
    problems = []
    for ckpt in candidates:
        try:
            verify_checkpoint(ckpt)
            check_compatible(ckpt, read_fingerprint(ckpt), fingerprint, force, warn)
            if restore is not None:
                return restore(ckpt), ckpt
            return restore_checkpoint(ckpt, model, optimizer, scheduler, process_index), ckpt
        except SftpipeError as exc:
            if resume != "auto" or isinstance(exc, ResumeRefused):
                raise
            problems.append(f"{ckpt.name}: {exc}")
            warn(f"{ckpt} is unusable, falling back to the previous complete checkpoint: {exc}")
    if problems:
        raise SftpipeError(f"{run_dir}: no usable checkpoint to resume from:\n  " + "\n  ".join(problems)
                           + "\nUse --resume never to start over (or --resume DIR for a specific checkpoint).")
    return TrainerState(), None


class ResumeRefused(SftpipeError):
    """The checkpoint is intact but was made by a run with other settings, data or model."""


def check_compatible(ckpt: Path, saved: dict[str, Any], current: dict[str, Any], force: bool,
                     warn: Callable[[str], None]) -> None:
    """Refuse (or, with `force`, warn about) a checkpoint made by a run that differs from this one."""
    diffs = fingerprint_differences(saved, current)
    if not diffs:
        return
    listing = "\n  - ".join(diffs)
    if not force:
        raise ResumeRefused(
            f"refusing to resume from {ckpt}: it was made by a different run:\n  - {listing}\n"
            "Restore the settings above, use --resume-force to resume anyway (the run then no longer matches "
            "an uninterrupted one), or --resume never / another train.output_dir to start a new run.")
    warn(f"--resume-force: resuming from {ckpt} although it was made by a different run:\n  - {listing}")


def trim_metrics(path: Path, last_step: int) -> int:
    """Keep the metrics.jsonl records up to `last_step` (the resumed checkpoint's step; -1: none).

    Records a killed run logged after its last checkpoint are logged again by the resumed run, so they are
    dropped here, as is a half-written last line; the log then reads as one uninterrupted run.

    Returns:
        The number of lines dropped.
    """
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
            keep = isinstance(record, dict) and int(record["step"]) <= last_step
        except (ValueError, KeyError, TypeError):
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += 1
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
    tmp.replace(path)
    return dropped
