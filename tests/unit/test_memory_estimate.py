"""`sftpipe estimate` against torch's own memory accounting on the tiny model, on CPU.

What is measured: one training step (CausalLMLoss forward, backward, AdamW step) of the tiny model in fp32 under
a TorchDispatchMode that follows every tensor storage an operation returns until it is freed (as
`torch.distributed._tools.mem_tracker.MemTracker` does; its module hooks fail on frozen LoRA bases), with the
parameters, buffers and optimizer states counted from the start: the peak of the bytes alive is what a caching
allocator's max_memory_allocated would report. A first step runs outside the tracker so the optimizer states
exist, as in every later step. The
estimate's parameter, optimizer and peak (parameters + gradients + optimizer + activations + loss) figures must
each be within 15% of the measured ones; the activations alone are compared with the bytes autograd saves for
backward at the end of the forward pass (`saved_tensors_hooks`).
"""

from __future__ import annotations

import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from sftpipe.config import load_config
from sftpipe.models.adapters import build_trainable_model
from sftpipe.models.memory import MemoryEstimate
from sftpipe.preflight import estimate
from sftpipe.train.causal_lm import CausalLMLoss

TOLERANCE = 0.15


def _cfg(tmp_path, tiny_dir, method, checkpointing, rows, length, dropout):
    import json

    path = tmp_path / "c.json"
    path.write_text(json.dumps({
        "model": {"name_or_path": str(tiny_dir), "dtype": "float32", "gradient_checkpointing": checkpointing},
        "data": {"sources": [{"path": "x.jsonl"}], "output_dir": str(tmp_path / "nodata"), "max_length": length},
        "lora": {"r": 8, "dropout": dropout},
        "train": {"method": method, "micro_batch_size": rows, "device": "cpu", "output_dir": str(tmp_path / "run")}}))
    return load_config(path)


class LiveStorages(TorchDispatchMode):
    """The bytes of tensor storages alive, and their peak, as a caching allocator would count them: every
    tensor an operation returns is followed until its storage is freed; `hold` adds tensors made before."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.now = self.peak = 0

    def hold(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self.live or storage.nbytes() == 0:
            return
        self.live[key] = storage.nbytes()
        self.now += storage.nbytes()
        self.peak = max(self.peak, self.now)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.now -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.hold(t)
        return out


def quant_state_tensors(model) -> list[torch.Tensor]:
    """The absmax constants of bitsandbytes' 4-bit weights (attributes of the weights, not parameters)."""
    found = []
    for p in model.parameters():
        state = getattr(p, "quant_state", None)
        while state is not None:
            found += [t for t in (state.absmax, state.code) if torch.is_tensor(t)]
            state = state.state2 if state.nested else None
    return found


def measure(cfg, rows: int, length: int) -> dict[str, int]:
    """Peak bytes alive during one training step, parameter and optimizer bytes, and the saved activations."""
    torch.manual_seed(0)
    model = build_trainable_model(cfg, torch.device("cpu"))
    model.train()
    loss_model = CausalLMLoss(model, "chunked")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ids = torch.randint(3, 2000, (rows, length))
    batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}

    def step():
        loss_model(**batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # optimizer states exist from here on
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage._cdata not in params:
            saved[storage._cdata] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_model(**batch)
    del loss
    states = [t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
    weights = [*model.parameters(), *quant_state_tensors(model)]
    tracker = LiveStorages()
    for t in [*weights, *model.buffers(), *states]:
        tracker.hold(t)
    with tracker:
        step()
    return {"params": sum(t.untyped_storage().nbytes() for t in weights),
            "optimizer": sum(t.untyped_storage().nbytes() for t in states), "total": tracker.peak,
            "saved": sum(saved.values())}


CASES = [  # method, checkpointing, rows, length, lora dropout
    ("full", False, 4, 256, 0.0),
    ("lora", False, 4, 256, 0.0),
    ("lora", False, 2, 512, 0.1),
    ("lora", True, 4, 256, 0.1),
    ("full", True, 2, 512, 0.0),
    ("qlora", False, 4, 256, 0.1),
]


@pytest.mark.parametrize(("method", "checkpointing", "rows", "length", "dropout"), CASES,
                         ids=[f"{c[0]}-ckpt{int(c[1])}-{c[2]}x{c[3]}-drop{c[4]}" for c in CASES])
def test_estimate_matches_torch_accounting(tmp_path, tiny_dir, method, checkpointing, rows, length, dropout):
    if method == "qlora":
        pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes: pip install 'sftpipe[qlora]'")
    cfg = _cfg(tmp_path, tiny_dir, method, checkpointing, rows, length, dropout)
    est: MemoryEstimate = estimate.run(cfg, cuda=False).planned
    got = measure(cfg, rows, length)
    print(f"\n{method} ckpt={checkpointing} {rows}x{length} dropout={dropout}: estimate total {est.total} "
          f"measured {got['total']} ({est.total / got['total'] - 1:+.1%}); weights {est.weights} vs {got['params']}; "
          f"optimizer {est.optimizer} vs {got['optimizer']}; activations {est.activations} vs saved {got['saved']} "
          f"({est.activations / got['saved'] - 1:+.1%})")
    assert est.weights == pytest.approx(got["params"], rel=TOLERANCE)
    assert est.optimizer == pytest.approx(got["optimizer"], rel=TOLERANCE)
    if not checkpointing:
        assert est.activations == pytest.approx(got["saved"], rel=TOLERANCE)
    assert est.total == pytest.approx(got["total"], rel=TOLERANCE)
    # negative control: the estimate of twice the tokens is far outside the tolerance of this measurement
    doubled = estimate.run(cfg.model_copy(update={"train": cfg.train.model_copy(
        update={"micro_batch_size": 2 * rows})}), cuda=False).planned
    assert doubled.total > (1 + TOLERANCE) * got["total"]
