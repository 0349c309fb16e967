"""`sftpipe doctor`: what this machine can run, what is missing, and how to install it.

Optional packages are looked up by their installed metadata, not imported: importing flash-attn or
liger-kernel on a machine without a matching CUDA can crash the interpreter, and the doctor must not. Only
packages that sftpipe uses today are listed: one listed is one that changes what sftpipe can do.
Environment variables that hold credentials are reported as set or not, never with their values.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
from importlib import metadata
from pathlib import Path

import torch

from sftpipe import __version__
from sftpipe.evaluate.execution.sandbox import available_isolation
from sftpipe.preflight import Check
from sftpipe.train.checkpoint import human_bytes

REQUIRED = ("transformers", "peft", "accelerate", "datasets", "tokenizers", "safetensors", "pydantic")
# distribution name -> (what sftpipe uses it for, how to install it, needs CUDA)
OPTIONAL = {
    "flash-attn": ("model.attn_implementation: flash_attention_2, varlen kernels for packed rows",
                   "pip install flash-attn --no-build-isolation", True),
    "liger-kernel": ("train.cross_entropy: liger, Liger's fused linear cross-entropy", "pip install 'sftpipe[liger]'",
                     True),
}
CREDENTIAL_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")


def run() -> list[Check]:
    """Every environment check, in reading order."""
    checks = [
        Check("python", "ok" if sys.version_info >= (3, 10) else "fail",
              f"{platform.python_version()} ({sys.executable})"),
        Check("sftpipe", "ok", __version__),
        Check("torch", "ok", f"{torch.__version__} (CUDA build {torch.version.cuda or 'none'})"),
    ]
    checks += _required_packages()
    checks += _gpus()
    checks += _optional_packages(torch.cuda.is_available())
    checks += _execution()
    checks += _machine()
    return checks


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _required_packages() -> list[Check]:
    checks = []
    for name in REQUIRED:
        version = _version(name)
        checks.append(Check(name, "ok", version) if version else
                      Check(name, "fail", "missing: pip install -e . (from the sftpipe checkout) installs it"))
    return checks


def _gpus() -> list[Check]:
    if not torch.cuda.is_available():
        hint = ("this torch build has no CUDA; install the build for your CUDA from https://pytorch.org"
                if torch.version.cuda is None else "no GPU visible (check nvidia-smi and CUDA_VISIBLE_DEVICES)")
        return [Check("cuda", "warn", f"not available: training runs on CPU (fine for the tiny demo); {hint}")]
    checks = [Check("cuda", "ok", f"{torch.cuda.device_count()} GPU(s), CUDA {torch.version.cuda}")]
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        checks.append(Check(f"gpu {index}", "ok", f"{props.name}, {human_bytes(props.total_memory)}, compute "
                                                   f"capability {props.major}.{props.minor}"))
    bf16 = torch.cuda.is_bf16_supported()
    checks.append(Check("bf16", "ok" if bf16 else "warn", "supported" if bf16 else
                        "not supported on this GPU: use train.precision: fp32 (fp16 is not offered)"))
    return checks


def _optional_packages(cuda: bool) -> list[Check]:
    checks = []
    for dist, (purpose, install, needs_cuda) in OPTIONAL.items():
        version = _version(dist)
        if version is None:
            status = "warn" if (cuda or not needs_cuda) else "skip"
            checks.append(Check(dist, status, f"missing (for {purpose}): {install}"
                                + ("" if cuda or not needs_cuda else "; needs a CUDA GPU")))
        elif needs_cuda and not cuda:
            checks.append(Check(dist, "warn", f"{version} installed, but it needs a CUDA GPU and none is visible"))
        else:
            checks.append(Check(dist, "ok", f"{version} ({purpose})"))
    return checks


def _execution() -> list[Check]:
    """What execution-based eval (pass@k) needs: GHC for Haskell problems, a sandbox for every language."""
    ghc = shutil.which("ghc")
    checks = [Check("ghc", "ok", ghc) if ghc else
              Check("ghc", "warn", "missing (for pass@k on Haskell problems): apt-get install ghc, or ghcup")]
    isolation = available_isolation()[0]
    if isolation == "bwrap":
        checks.append(Check("sandbox", "ok", "bubblewrap (eval.code.sandbox: auto uses it)"))
    else:
        checks.append(Check("sandbox", "warn", f"bubblewrap {'is not usable' if shutil.which('bwrap') else 'missing'}"
                                               f"; generated code would run under {isolation} isolation: "
                                               "apt-get install bubblewrap"))
    return checks


def _machine() -> list[Check]:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    free = shutil.disk_usage(Path.cwd()).free
    checks = [
        Check("cpu", "ok", f"{os.cpu_count()} cores, {human_bytes(memory)} memory, torch uses "
                           f"{torch.get_num_threads()} threads"),
        Check("disk", "ok" if free > 1 << 30 else "warn", f"{human_bytes(free)} free in {Path.cwd()}"),
    ]
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    hub = "offline (HF_HUB_OFFLINE): only local models and cached hub files" if offline else "online allowed"
    credentials = ", ".join(f"{name} {'set' if os.environ.get(name) else 'not set'}" for name in CREDENTIAL_ENV)
    checks.append(Check("hub", "ok", f"{hub}; {credentials}"))
    return checks
