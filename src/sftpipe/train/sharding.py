"""FSDP2: shard the trained module over the processes, sftpipe's own wrapping under any launcher.

`train.sharding: fsdp` (or an `accelerate launch` with an FSDP config, which means the same) applies
`torch.distributed.fsdp.fully_shard` to every decoder layer, then to the module the loop trains (the model plus
its loss, `CausalLMLoss`), which becomes the root unit holding the rest (embeddings, final norm, LM head).
The root is the loss module, not the transformers model, because the chunked loss calls the decoder and reads
the LM head's weight itself: only a forward of the root gathers them. Validation reaches the bare model through
`CausalLMLoss.logits`, registered as a second forward method of the root for the same reason.

accelerate (or torchrun) only launches: accelerate's FSDP plugin refuses a CPU and would wrap the model its own
way, so an FSDP launch is read from the environment and accelerate is then built as for DDP, without ever
preparing the model. The loop is the one DDP runs: FSDP2 averages gradients over ranks in its reduce-scatter
as DDP does in its all-reduce, so the loop's global token-sum normalisation carries over unchanged; gradient
accumulation skips the reduce-scatter with `set_requires_gradient_sync(False)` (DDP: `no_sync`), and gradient
clipping over the sharded (DTensor) gradients computes the global norm. CI runs this on CPU with gloo; a GPU
run differs only in the device mesh's device and the bf16 mixed-precision policy.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, MutableMapping
from typing import Any

import torch
from accelerate import Accelerator
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    FSDPModule,
    MixedPrecisionPolicy,
    fully_shard,
    register_fsdp_forward_method,
)
from torch.distributed.tensor import DTensor

from sftpipe.config.schema import Config
from sftpipe.errors import SftpipeError

log = logging.getLogger(__name__)

# What `accelerate launch` sets for an FSDP config (--use_fsdp, or `distributed_type: FSDP` in its YAML).
ACCELERATE_FSDP = "ACCELERATE_USE_FSDP"
# The accelerate FSDP options that have an sftpipe equivalent: (environment variable, config field).
ACCELERATE_FSDP_OPTIONS = (
    ("FSDP_ACTIVATION_CHECKPOINTING", "model.gradient_checkpointing"),
    ("FSDP_OFFLOAD_PARAMS", "train.fsdp.cpu_offload"),
    ("FSDP_RESHARD_AFTER_FORWARD", "train.fsdp.reshard_after_forward"),
)
# Launches sftpipe cannot run: their checkpoints would be another process's business.
REFUSED_LAUNCHES = {"ACCELERATE_USE_DEEPSPEED": "DeepSpeed", "ACCELERATE_USE_MEGATRON_LM": "Megatron-LM"}


def _env_true(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "false").strip().lower() in ("true", "1", "yes")


def sharding_from_launch(cfg: Config, environ: MutableMapping[str, str]) -> Config:
    """The config with an FSDP `accelerate launch` turned into `train.sharding: fsdp`, and the launch's env switched
    back to plain data parallel so that `Accelerator(...)` does not build its own FSDP plugin.

    accelerate's activation checkpointing / parameter offload / reshard options, when set, become the sftpipe
    fields listed in ACCELERATE_FSDP_OPTIONS (logged), so the resolved config in the run dir and the resume
    fingerprint say how the run was really sharded. DeepSpeed and Megatron-LM launches are refused here, before
    accelerate could fail on them with a traceback.

    Raises:
        SftpipeError: a DeepSpeed or Megatron-LM launch.
    """
    for variable, name in REFUSED_LAUNCHES.items():
        if _env_true(environ, variable):
            raise SftpipeError(
                f"accelerate is set up for {name} ({variable}={environ[variable]} in the environment), which "
                "`sftpipe train` does not run: sftpipe shards with FSDP2 itself and checkpoints the shards. Use "
                "`accelerate launch --config_file configs/accelerate/fsdp.yaml -m sftpipe.cli train ...` (or set "
                "train.sharding: fsdp under torchrun); `--multi_gpu` (DDP) when the model fits one GPU.")
    if not _env_true(environ, ACCELERATE_FSDP):
        return cfg
    updates: dict[str, Any] = {"train.sharding": "fsdp"}
    for variable, field in ACCELERATE_FSDP_OPTIONS:
        if variable in environ:
            updates[field] = _env_true(environ, variable)
    data = cfg.model_dump()
    changed = []
    for field, value in updates.items():
        *sections, key = field.split(".")
        target = data
        for section in sections:
            target = target[section]
        if target[key] != value:
            changed.append(f"{field}: {value}")
        target[key] = value
    if changed and environ.get("RANK", "0") == "0":
        log.info("accelerate launched with FSDP (%s=true): training with %s", ACCELERATE_FSDP, ", ".join(changed))
    # accelerate reads this in Accelerator(...); sftpipe does the wrapping, accelerate only provides the process
    # group, device and autocast, as for DDP. Child processes (DataLoader workers) inherit the switched value.
    environ[ACCELERATE_FSDP] = "false"
    return Config.model_validate(data)


def shard_model(loss_model: torch.nn.Module, layers: list[torch.nn.Module], cfg: Config,
                device: torch.device, world_size: int) -> None:
    """Apply FSDP2 in place: each decoder layer is a unit, then `loss_model` the root (the embeddings, norm, head).

    Must run before the optimizer is built: `fully_shard` replaces every parameter with a sharded one (DTensor).
    On a GPU under train.precision bf16 the gathered weights are bf16 and gradients are reduced in fp32; on CPU
    (and fp32) weights stay as loaded. Frozen base weights and LoRA adapters share their layer's unit.
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    if not dist.is_initialized():  # one process (accelerate starts no group): FSDP2 still needs one, of one rank
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0,
                                world_size=1)
    mesh = init_device_mesh(device.type, (world_size,))
    fc = cfg.train.fsdp
    settings: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": fc.reshard_after_forward}
    if cfg.train.precision == "bf16" and device.type == "cuda":
        settings["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if fc.cpu_offload:
        settings["offload_policy"] = CPUOffloadPolicy(pin_memory=device.type == "cuda")
    for layer in layers:
        fully_shard(layer, **settings)
    fully_shard(loss_model, **settings)
    register_fsdp_forward_method(loss_model, "logits")


class RootForward(torch.nn.Module):
    """The bare model's forward as validation calls it, through the FSDP root (`CausalLMLoss.logits`).

    Calling the transformers model inside the root directly would skip the root's hooks: its weights
    (embeddings, LM head) would stay sharded, and a layer run first would take itself for the root.
    """

    def __init__(self, loss_model: torch.nn.Module):
        super().__init__()
        self.loss_model = loss_model

    def forward(self, **inputs) -> Any:
        return self.loss_model.logits(**inputs)


def is_sharded(module: torch.nn.Module) -> bool:
    return isinstance(module, FSDPModule)


def gradient_sync(model: torch.nn.Module, accelerator: Accelerator, sync: bool) -> contextlib.AbstractContextManager:
    """The context of one micro-batch's backward: gradients are reduced over ranks only when `sync` (the last
    micro-batch of a step). FSDP2 has a switch (reduce-scatter skipped, unsharded gradients accumulate), DDP a
    context manager."""
    if is_sharded(model):
        model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    return contextlib.nullcontext() if sync else accelerator.no_sync(model)


def full_norm(norm: torch.Tensor | None) -> float | None:
    """A gradient norm as a float; over sharded gradients it is a DTensor whose full value is the global norm."""
    if norm is None:
        return None
    return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)
