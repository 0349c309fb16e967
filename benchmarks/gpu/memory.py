"""Peak CUDA memory and speed of full / LoRA / QLoRA steps on random-init Llama-shaped models, beside the estimate.

    python benchmarks/gpu/memory.py --out benchmarks/gpu/results          # on a GPU (benchmarks/gpu/memory.sh)
    python benchmarks/gpu/memory.py --smoke                               # CPU: the code path on a micro shape

For each case: a model of the shape is built with random weights directly on the GPU (no download, no disk),
made trainable as sftpipe does (PEFT LoRA; QLoRA: nf4 double-quant weights quantized on the GPU by
bitsandbytes, then PEFT's k-bit preparation), and trained with sftpipe's own step (CausalLMLoss: chunked
cross-entropy on packed rows; AdamW): one warm-up step, then `--steps` measured steps of one packed row of
`--seq` tokens. Reported per case: `torch.cuda.max_memory_allocated` of the measured steps, sftpipe's estimate
for the same settings (`models/memory_plan.estimate_config`, its `total`, i.e. without context and slack) and
their relative difference, tokens/s and MFU (model FLOPs: 6N per token for full fine-tuning, 4N for LoRA and
QLoRA, whose frozen weights get no weight gradient; attention FLOPs left out; peak bf16 dense FLOPs of the GPU
from --peak-tflops, default the H200's 989). A case that runs out of memory is reported as such.
Results: <out>/memory.{json,md}.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

SHAPES = {  # published shapes (Llama-3.2-1B, Llama-3.1-8B, Qwen2.5-14B), vocab as theirs
    "1B": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, head_dim=64),
    "8B": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, head_dim=128),
    "14B": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=48, num_attention_heads=40,
                num_key_value_heads=8, vocab_size=152064, head_dim=128),
    "micro": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=2048, head_dim=16),
}
# (shape, method, gradient checkpointing): full bf16 up to 8B, LoRA up to 8B, QLoRA up to 14B
CASES = [(s, m, c) for s in ("1B", "8B") for m in ("full", "lora", "qlora") for c in (False, True)] + \
    [("14B", "qlora", c) for c in (False, True)]


def llama_config(shape: str):
    from transformers import LlamaConfig

    return LlamaConfig(**SHAPES[shape], max_position_embeddings=8192, tie_word_embeddings=False,
                       rope_theta=500000.0)


def sftpipe_config(method: str, checkpointing: bool, seq: int, device: str):
    from sftpipe.config import Config

    return Config.model_validate({
        "model": {"name_or_path": "random-init", "dtype": "bfloat16" if device == "cuda" else "float32",
                  "gradient_checkpointing": checkpointing, "attn_implementation": "sdpa"},
        "data": {"sources": [{"path": "none.jsonl"}], "max_length": seq, "output_dir": "/nonexistent"},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
        "train": {"method": method, "micro_batch_size": 1, "packing": True, "pack_length": seq,
                  "precision": "bf16" if device == "cuda" else "fp32", "device": device}})


def build(shape: str, method: str, checkpointing: bool, device: str, cfg) -> torch.nn.Module:
    """The model as sftpipe's build_trainable_model makes it, but from random weights made on the device."""
    import peft
    from transformers import AutoModelForCausalLM

    from sftpipe.models.adapters import lora_config

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(llama_config(shape), dtype=dtype, attn_implementation="sdpa")
    if method == "qlora":
        quantize_linears(model)
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing,
                                                     gradient_checkpointing_kwargs={"use_reentrant": False})
    elif checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    if method == "full":
        return model.requires_grad_(True)
    model = peft.get_peft_model(model, lora_config(cfg))
    if checkpointing:
        model.enable_input_require_grads()
    return model


def quantize_linears(model: torch.nn.Module) -> None:
    """Replace the decoder's linear layers by nf4 double-quant Linear4bit (bitsandbytes quantizes on .cuda())."""
    import bitsandbytes as bnb

    for parent in list(model.model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear:
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=torch.bfloat16, quant_type="nf4", compress_statistics=True,
                                      device="meta")
                q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type="nf4",
                                             compress_statistics=True).to(child.weight.device)
                setattr(parent, name, q)
                del child
    model.is_loaded_in_4bit = True
    gc.collect()
    torch.cuda.empty_cache()


def run_case(shape: str, method: str, checkpointing: bool, seq: int, steps: int, device: str,
             peak_tflops: float) -> dict:
    from sftpipe.models.memory_plan import estimate_config
    from sftpipe.train.causal_lm import CausalLMLoss

    cfg = sftpipe_config(method, checkpointing, seq, device)
    est = estimate_config(cfg, config=llama_config(shape), gpu_memory=None, cuda=device == "cuda").planned
    row = {"shape": shape, "method": method, "checkpointing": checkpointing, "seq": seq,
           "estimate_bytes": est.total, "estimate_parts": est.as_dict()}
    model = loss_model = optimizer = None
    try:
        torch.manual_seed(0)
        model = build(shape, method, checkpointing, device, cfg)
        model.train()
        loss_model = CausalLMLoss(model, "chunked")
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-5, foreach=device == "cuda")
        vocab = SHAPES[shape]["vocab_size"]
        ids = torch.randint(0, vocab, (1, seq), device=device)
        batch = {"input_ids": ids, "labels": ids, "position_ids": torch.arange(seq, device=device)[None]}

        def step() -> None:
            with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                loss = loss_model(**batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step()
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        for _ in range(steps):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        n_params = sum(p.numel() for p in shape_parameters(shape))
        tokens_per_s = steps * seq / seconds
        flops_per_token = (6 if method == "full" else 4) * n_params
        row.update(status="ok", tokens_per_s=round(tokens_per_s, 1), step_s=round(seconds / steps, 3),
                   mfu=round(tokens_per_s * flops_per_token / (peak_tflops * 1e12), 4), params=n_params,
                   trainable=sum(p.numel() for p in trainable))
        if device == "cuda":
            peak = torch.cuda.max_memory_allocated()
            row.update(peak_bytes=peak, estimate_error=round(est.total / peak - 1, 4))
    except torch.OutOfMemoryError:
        row.update(status="out of memory")
    finally:
        model = loss_model = optimizer = None  # noqa: F841 - freed before the next case
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    return row


def shape_parameters(shape: str) -> list[torch.Tensor]:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return list(AutoModelForCausalLM.from_config(llama_config(shape)).parameters())


def markdown(rows: list[dict]) -> str:
    gib = 2**30
    lines = ["| shape | method | checkpointing | peak allocated | estimate | error | tokens/s | MFU |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"| {r['shape']} | {r['method']} | {r['checkpointing']} | {r.get('status')} | "
                         f"{r['estimate_bytes'] / gib:.2f} GiB | | | |")
            continue
        peak = f"{r['peak_bytes'] / gib:.2f} GiB" if "peak_bytes" in r else "n/a (CPU)"
        error = f"{r['estimate_error']:+.1%}" if "estimate_error" in r else ""
        lines.append(f"| {r['shape']} | {r['method']} | {r['checkpointing']} | {peak} | "
                     f"{r['estimate_bytes'] / gib:.2f} GiB | {error} | {r['tokens_per_s']:.0f} | {r['mfu']:.1%} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak of the GPU (H200: 989)")
    parser.add_argument("--only", help="run only cases whose shape-method contains this, e.g. 1B-qlora")
    parser.add_argument("--smoke", action="store_true", help="CPU, the micro shape: checks the code path only")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU: nothing measured (use --smoke to check the code path on CPU)", file=sys.stderr)
        return 1
    cases = [("micro", m, c) for m in ("full", "lora", "qlora") for c in (False, True)] if args.smoke else CASES
    seq = 128 if args.smoke else args.seq
    rows = []
    for shape, method, checkpointing in cases:
        if args.only and args.only not in f"{shape}-{method}":
            continue
        row = run_case(shape, method, checkpointing, seq, args.steps, device, args.peak_tflops)
        print(json.dumps({k: v for k, v in row.items() if k != "estimate_parts"}), flush=True)
        rows.append(row)
    if not args.smoke:
        args.out.mkdir(parents=True, exist_ok=True)
        meta = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "seq": args.seq}
        (args.out / "memory.json").write_text(json.dumps({"machine": meta, "rows": rows}, indent=1))
        (args.out / "memory.md").write_text(f"# Peak memory vs estimate, {meta['gpu']}, seq {args.seq}\n\n"
                                            + markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
