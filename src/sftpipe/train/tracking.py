"""Run bookkeeping: metrics.jsonl (mirrored to the trackers of train.report_to, see trackers.py), run_manifest.json."""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from sftpipe import __version__
from sftpipe.config.schema import Config
from sftpipe.contracts.data_dir import DataManifest
from sftpipe.contracts.run_dir import RunDir, RunManifest

PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "tokenizers", "safetensors", "pydantic")


class MetricsLogger:
    """Appends one JSON object per log call to metrics.jsonl and mirrors numbers to the trackers."""

    def __init__(self, path: Path, accelerator: Any, enabled: bool):
        self.path = path
        self.accelerator = accelerator
        self.enabled = enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **values}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        numbers = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.accelerator.log(numbers, step=step)


def peak_memory_mb(device: Any) -> float:
    """The run's memory high-water mark so far, in MiB: on CUDA the most memory torch has allocated on `device`
    (what limits the batch size), elsewhere the peak resident set of this process."""
    if device.type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_bytes() / 2**20


def peak_rss_bytes() -> int:
    """This process's peak resident memory in bytes (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def git_sha() -> str | None:
    """The sftpipe checkout's commit, when it runs from a git clone."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def versions() -> dict[str, str]:
    found = {"sftpipe": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "missing"
    return found


def write_run_manifest(run_dir: RunDir, cfg: Config, data_manifest: DataManifest, world_size: int, device: str
                       ) -> None:
    run_dir.write_manifest(RunManifest(
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        versions=versions(),
        git_sha=git_sha(),
        seed=cfg.train.seed,
        method=cfg.train.method,
        base_model=cfg.model.name_or_path,
        tokenizer_sha256=data_manifest.tokenizer.sha256,
        template_sha256=data_manifest.template.sha256,
        data_dir=cfg.data.output_dir,
        data_manifest_sha256=data_manifest.sha256,
        world_size=world_size,
        device=device,
        host=platform.node(),
    ))
