"""FSDP2 on one GPU next to the plain (unsharded) model: tokens/s, peak memory and MFU of a full fine-tune step.

Both run sftpipe's own pieces side by side in one process: `CausalLMLoss` (chunked cross-entropy), AdamW, the
loop's `accumulate_gradients`, bf16 weights with autocast as `train.precision: bf16` trains; the FSDP run adds
`shard_model` (FSDP2 per decoder layer, then the root; one rank, so nothing is sharded away: this measures the
wrapping's own overhead, the price a 1-GPU user pays to use the same code path as a 4-GPU run).

    torchrun --nproc_per_node 1 benchmarks/gpu/fsdp.py [--hidden 2048 --layers 16 --seq 2048 --batch 4]

MFU = 6 x parameters x tokens/s / the device's dense bf16 peak (--peak-tflops, H200 SXM: 989).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from accelerate import Accelerator
from transformers import LlamaConfig, LlamaForCausalLM

from sftpipe.config import load_config
from sftpipe.train import loop
from sftpipe.train.causal_lm import CausalLMLoss, decoder_layers
from sftpipe.train.sharding import shard_model


def build(args, device):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3,
                         num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 128),
                         max_position_embeddings=args.seq, attn_implementation="sdpa")
    return LlamaForCausalLM(config).to(device=device, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)


def measure(mode: str, args, accelerator: Accelerator) -> dict:
    device = accelerator.device
    model = build(args, device)
    params = sum(p.numel() for p in model.parameters())
    loss_model = CausalLMLoss(model)
    if mode == "fsdp":
        cfg = load_config(overrides=["train.sharding=fsdp", "train.precision=bf16"])
        shard_model(loss_model, decoder_layers(model), cfg, device, accelerator.num_processes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=device.type == "cuda")
    ids = torch.randint(0, 32000, (args.batch, args.seq), device=device)
    batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = 0.0
    for step in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loop.accumulate_gradients(loss_model, [batch] * args.grad_accum, accelerator)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            seconds += time.perf_counter() - start
    tokens = args.steps * args.grad_accum * args.batch * args.seq
    tokens_per_s = tokens / seconds
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    del model, loss_model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"mode": mode, "params_m": round(params / 1e6, 1), "tokens_per_s": round(tokens_per_s),
            "peak_gib": round(peak, 2), "mfu": round(6 * params * tokens_per_s / (args.peak_tflops * 1e12), 4)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = parser.parse_args()
    accelerator = Accelerator(mixed_precision="bf16" if torch.cuda.is_available() else "no")
    rows = [measure(mode, args, accelerator) for mode in ("plain", "fsdp")]
    header = f"{'mode':6} {'params (M)':>10} {'tokens/s':>10} {'peak GiB':>9} {'MFU':>7}"
    print(header)
    for r in rows:
        print(f"{r['mode']:6} {r['params_m']:>10} {r['tokens_per_s']:>10} {r['peak_gib']:>9} {r['mfu']:>7.1%}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"args": vars(args), "device": torch.cuda.get_device_name() if torch.cuda.is_available()
                       else "cpu", "torch": torch.__version__, "results": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
