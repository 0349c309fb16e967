"""GPU-only speed paths (skipped without CUDA): Liger's fused linear cross-entropy and flash-attention varlen.

Each is compared with the portable path that the CPU tests prove correct.
"""

import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM

from sftpipe.data.tokenize import IGNORE_INDEX
from sftpipe.train.causal_lm import CausalLMLoss

pytestmark = pytest.mark.gpu


def packed_inputs(vocab: int, device: str) -> dict:
    gen = torch.Generator().manual_seed(0)
    lengths = [37, 90, 5, 120]
    ids = torch.randint(5, vocab, (1, sum(lengths)), generator=gen)
    pos = torch.cat([torch.arange(n) for n in lengths])[None]
    labels = ids.clone()
    starts = torch.cumsum(torch.tensor([0] + lengths[:-1]), 0)
    labels[0, starts] = IGNORE_INDEX
    cu = torch.cumsum(torch.tensor([0] + lengths), 0, dtype=torch.int32)
    return {"input_ids": ids.to(device), "labels": labels.to(device), "position_ids": pos.to(device),
            "cu_seq_lens_q": cu.to(device), "cu_seq_lens_k": cu.to(device), "max_length_q": max(lengths),
            "max_length_k": max(lengths)}


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is None, reason="liger-kernel not installed")
def test_liger_loss_equals_chunked(tiny_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).cuda()
    inputs = packed_inputs(model.config.vocab_size, "cuda")
    liger = CausalLMLoss(model, "liger")
    assert liger.cross_entropy == "liger"
    chunked = CausalLMLoss(model, "chunked")
    torch.testing.assert_close(liger(**inputs), chunked(**inputs), rtol=1e-4, atol=1e-3)


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="flash-attn not installed")
def test_flash_varlen_flat_row_equals_sdpa_varlen(tiny_dir):
    from sftpipe.models.loading import resolve_attn

    flash = AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation="flash_attention_2",
                                                 dtype=torch.bfloat16).cuda()
    varlen = AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation=resolve_attn("sdpa_varlen"),
                                                  dtype=torch.bfloat16).cuda()
    inputs = packed_inputs(flash.config.vocab_size, "cuda")
    model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    with torch.no_grad():
        a = flash(**model_inputs, use_cache=False).logits.float()
        b = varlen(**model_inputs, use_cache=False).logits.float()
    assert (a - b).abs().max() < 5e-2  # bf16 kernels differ in rounding only
