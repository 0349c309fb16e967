"""GPU-only (skipped without CUDA): QLoRA trains on CUDA, the estimate is within 10% of
torch.cuda.max_memory_allocated on the tiny model."""

import pytest
import torch

from sftpipe import stages
from sftpipe.data import prepare
from sftpipe.models.memory_plan import estimate_config
from tests.conftest import make_config, pc_records, write_jsonl

pytestmark = pytest.mark.gpu


def test_qlora_trains_on_cuda_in_bf16(tmp_path, tiny_dir):
    pytest.importorskip("bitsandbytes")
    source = write_jsonl(tmp_path / "pc.jsonl", pc_records(12))
    cfg = make_config(tmp_path, tiny_dir, [{"path": str(source)}],
                      model={"dtype": "bfloat16"}, train={"method": "qlora", "precision": "bf16", "device": "cuda",
                                                          "max_steps": 3})
    prepare.run(cfg)
    result = stages.train(cfg, resume="never")
    assert result.steps == 3 and result.train_loss == result.train_loss  # not NaN


@pytest.mark.parametrize("method", ["full", "lora"])
def test_estimate_within_10_percent_of_max_memory_allocated(tmp_path, tiny_dir, method):
    from sftpipe.models.adapters import build_trainable_model
    from sftpipe.train.causal_lm import CausalLMLoss

    cfg = make_config(tmp_path, tiny_dir, [{"path": "none.jsonl"}], model={"dtype": "float32"},
                      data={"max_length": 1024},
                      train={"method": method, "micro_batch_size": 8, "device": "cuda", "grad_accum": 1})
    device = torch.device("cuda")
    model = build_trainable_model(cfg, device)
    loss_model = CausalLMLoss(model, "chunked")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    ids = torch.randint(3, 2000, (8, 1024), device=device)
    for i in range(2):
        if i == 1:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        loss_model(input_ids=ids, labels=ids).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    peak = torch.cuda.max_memory_allocated()
    est = estimate_config(cfg, gpu_memory=None, cuda=True).planned
    assert est.total == pytest.approx(peak, rel=0.10), f"estimate {est.total}, measured {peak}"
