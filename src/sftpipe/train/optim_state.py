"""Optimizer and scheduler state as safetensors + JSON: nothing in a checkpoint is a pickle.

`torch.load(weights_only=True)` is a restricted unpickler and has had escapes (CVE-2025-32434), so the
state a resumed run reads is split into what safetensors and JSON can hold and nothing else: tensors of
`optimizer.state_dict()["state"]` go to safetensors under `<param index>.<name>`, everything else
(param groups, scalars, the scheduler's state) to JSON. State that does not fit (an optimizer that keeps
arbitrary Python objects) is refused at save time, not silently dropped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sftpipe.contracts.checkpoint import OPTIMIZER_JSON, OPTIMIZER_TENSORS, SCHEDULER_JSON
from sftpipe.contracts.files import read_json
from sftpipe.errors import SftpipeError


def save_optimizer(optimizer: torch.optim.Optimizer, out: Path) -> None:
    """Write `optimizer.state_dict()` as optimizer.safetensors (tensors) + optimizer.json (the rest)."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, param_state in state_dict["state"].items():
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = _json_value(value, f"optimizer state {index}.{name}")
    groups = [{k: _json_value(v, f"optimizer param group {k}") for k, v in g.items()}
              for g in state_dict["param_groups"]]
    save_file(tensors, str(out / OPTIMIZER_TENSORS))
    _write_json(out / OPTIMIZER_JSON, {"param_groups": groups, "scalars": scalars,
                                       "indices": sorted(state_dict["state"])})


def read_optimizer(ckpt: Path, reference: torch.optim.Optimizer) -> dict[str, Any]:
    """Read the state dict written by `save_optimizer`, shaped like `reference.state_dict()`.

    JSON turns tuples (Adam's betas) into lists; they are turned back by looking at the live optimizer's
    groups, so the restored groups compare equal to the saved ones.

    Raises:
        SftpipeError: a file is missing or unreadable, naming it.
    """
    meta = read_json(ckpt / OPTIMIZER_JSON)
    tensors = read_tensors(ckpt / OPTIMIZER_TENSORS)
    state: dict[int, dict[str, Any]] = {int(i): {} for i in meta["indices"]}
    for key, value in tensors.items():
        index, _, name = key.partition(".")
        state.setdefault(int(index), {})[name] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    live = reference.state_dict()["param_groups"]
    groups = []
    for i, group in enumerate(meta["param_groups"]):
        shapes = live[i] if i < len(live) else {}
        groups.append({k: tuple(v) if isinstance(shapes.get(k), tuple) else v for k, v in group.items()})
    return {"state": state, "param_groups": groups}


def save_scheduler(scheduler: Any, out: Path) -> None:
    """Write `scheduler.state_dict()` as scheduler.json (refusing anything JSON cannot hold)."""
    state = {k: _json_value(v, f"scheduler state {k}") for k, v in scheduler.state_dict().items()}
    _write_json(out / SCHEDULER_JSON, state)


def read_scheduler(ckpt: Path) -> dict[str, Any]:
    """The scheduler state dict written by `save_scheduler`."""
    return read_json(ckpt / SCHEDULER_JSON)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file; any failure is an `SftpipeError` naming the file."""
    if not path.is_file():
        raise SftpipeError(f"{path}: missing")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises SafetensorError, OSError, ValueError on bad files
        raise SftpipeError(f"{path}: corrupt or truncated safetensors file ({type(exc).__name__}: {exc})") from None


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, allow_nan=True), encoding="utf-8")


def _json_value(value: Any, what: str) -> Any:
    """`value` if JSON holds it exactly (floats round-trip through repr), else refuse."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(v, what) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _json_value(v, what) for k, v in value.items()}
    raise SftpipeError(f"cannot checkpoint {what}: a {type(value).__name__} is neither a tensor nor JSON; "
                       "sftpipe checkpoints hold only safetensors and JSON (no pickles)")
