"""Training speed on a GPU, side by side: sftpipe's step vs TRL's SFTTrainer at its best settings, full fine-tune
of a random-init Llama-3.2-1B-shaped model in bf16 on the same packed token data.

    python benchmarks/gpu/trl_compare.py --out benchmarks/gpu/results        # benchmarks/gpu/memory.sh runs it
    python benchmarks/gpu/trl_compare.py --smoke                             # CPU, micro shape: the code path

Both sides: best-fit packing into rows of --seq tokens, padding-free rows with position ids restarting per
example, flash-attention 2 when installed (else SDPA: sftpipe's sdpa_varlen, TRL's sdpa), no gradient
checkpointing, bf16 weights with bf16 autocast, AdamW, one packed row per micro-batch and the same micro-batches
per step. sftpipe adds its chunked cross-entropy (Liger's when installed). Each contender runs in its own process;
reported: real tokens/s over the measured steps (after warm-up), MFU (6N FLOPs per token, attention left out,
--peak-tflops), peak CUDA memory. Results: <out>/trl_compare.{json,md}.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
IGNORE_INDEX = -100


def synthetic_examples(n: int, seq: int, seed: int = 0) -> list[dict]:
    """`n` examples of 64..seq tokens (ids < 2000, inside every vocab here), the first third of each a prompt."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(min(64, seq), seq)
        ids = [rng.randrange(3, 2000) for _ in range(length)]
        prompt = length // 3
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return out


def attention() -> str:
    return "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"


def build_model(spec: dict):
    import torch
    from transformers import AutoModelForCausalLM

    from memory import llama_config

    torch.manual_seed(0)
    dtype = torch.bfloat16 if spec["device"] == "cuda" else torch.float32
    with torch.device(spec["device"]):
        return AutoModelForCausalLM.from_config(llama_config(spec["shape"]), dtype=dtype,
                                                attn_implementation=attention())


def cuda(spec: dict) -> bool:
    return spec["device"] == "cuda"


def run_sftpipe(spec: dict) -> dict:
    import numpy as np
    import torch

    from sftpipe.data.batches.collate import collate_flat
    from sftpipe.data.batches.plan import pack_best_fit
    from sftpipe.models.varlen_attention import use_sdpa_varlen
    from sftpipe.train.causal_lm import CausalLMLoss

    examples = synthetic_examples(spec["examples"], spec["seq"])

    class Store:  # what collate_flat reads of a TokenStore
        lengths = np.array([len(e["input_ids"]) for e in examples])

        def example(self, i: int):
            return np.array(examples[i]["input_ids"]), np.array(examples[i]["labels"])

    rows = pack_best_fit([len(e["input_ids"]) for e in examples], spec["seq"])
    model = build_model(spec)
    if attention() == "sdpa":
        use_sdpa_varlen(model)
    model.train()
    loss_model = CausalLMLoss(model, "auto")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=cuda(spec))
    k, device = spec["micro_per_step"], spec["device"]
    tokens, started = 0, 0.0
    for s in range(spec["warmup"] + spec["steps"]):
        if s == spec["warmup"]:
            started, tokens = sync_and_reset(spec), 0
        micro = [collate_flat(Store(), [rows[(s * k + i) % len(rows)]], 0) for i in range(k)]
        supervised = sum(int((mb.inputs["labels"][:, 1:] != IGNORE_INDEX).sum()) for mb in micro)
        for mb in micro:
            inputs = {key: v.to(device) if torch.is_tensor(v) else v for key, v in mb.inputs.items()}
            with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda(spec)):
                loss = loss_model(**inputs) / supervised
            loss.backward()
            tokens += mb.real_tokens
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return figures(spec, tokens, started, {"cross_entropy": loss_model.cross_entropy})


def run_trl(spec: dict) -> dict:
    import datasets
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from sftpipe.models.tiny import init_tiny

    work = Path(spec["workdir"])
    init_tiny(work / "tokenizer", size="micro", seed=0)  # TRL wants a tokenizer: its pad id; data is tokenized
    tokenizer = AutoTokenizer.from_pretrained(work / "tokenizer")
    train = datasets.Dataset.from_list(synthetic_examples(spec["examples"], spec["seq"]))
    counted = {"tokens": 0}
    original = DataCollatorForLanguageModeling.torch_call

    def counting(self, examples):  # padding-free batches are one row without padding: every slot is real
        batch = original(self, examples)
        counted["tokens"] += int(batch["attention_mask"].sum()) if "attention_mask" in batch \
            else batch["input_ids"].numel()
        return batch

    DataCollatorForLanguageModeling.torch_call = counting
    marks: dict = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == spec["warmup"]:
                marks["started"], marks["tokens"] = sync_and_reset(spec), counted["tokens"]

    args = SFTConfig(
        output_dir=str(work / "trl-run"), max_length=spec["seq"], per_device_train_batch_size=1,
        gradient_accumulation_steps=spec["micro_per_step"], learning_rate=1e-5, lr_scheduler_type="constant",
        max_steps=spec["warmup"] + spec["steps"], logging_steps=1, save_strategy="no", eval_strategy="no",
        report_to="none", use_cpu=not cuda(spec), seed=0, dataloader_num_workers=0, disable_tqdm=True,
        packing=True, packing_strategy="bfd", padding_free=True, bf16=cuda(spec), gradient_checkpointing=False)
    trainer = SFTTrainer(model=build_model(spec), args=args, train_dataset=train, processing_class=tokenizer,
                         callbacks=[Clock()])
    trainer.train()
    return figures(spec, counted["tokens"] - marks["tokens"], marks["started"], {})


def sync_and_reset(spec: dict) -> float:
    import torch

    if cuda(spec):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    return time.perf_counter()


def figures(spec: dict, tokens: int, started: float, extra: dict) -> dict:
    import torch

    if cuda(spec):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    from memory import shape_parameters

    n = sum(p.numel() for p in shape_parameters(spec["shape"]))
    out = {"tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1),
           "mfu": round(6 * n * tokens / seconds / (spec["peak_tflops"] * 1e12), 4), "attention": attention(),
           **extra}
    if cuda(spec):
        out["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--micro-per-step", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--smoke", action="store_true", help="CPU, micro shape: checks the code path only")
    parser.add_argument("--contender", choices=["sftpipe", "trl"], help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    if args.contender:
        spec = json.loads(args.spec)
        result = {"sftpipe": run_sftpipe, "trl": run_trl}[args.contender](spec)
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    with tempfile.TemporaryDirectory() as work:
        spec = {"shape": "micro" if args.smoke else "1B", "device": "cpu" if args.smoke else "cuda",
                "seq": 256 if args.smoke else args.seq, "micro_per_step": 2 if args.smoke else args.micro_per_step,
                "warmup": 1 if args.smoke else args.warmup, "steps": 2 if args.smoke else args.steps,
                "peak_tflops": args.peak_tflops, "workdir": work}
        spec["examples"] = 4 * spec["micro_per_step"] * (spec["warmup"] + spec["steps"])
        results = {}
        for name in ("sftpipe", "trl"):
            proc = subprocess.run([sys.executable, __file__, "--contender", name, "--spec", json.dumps(spec)],
                                  capture_output=True, text=True)
            lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            results[name] = json.loads(lines[-1][7:]) if lines else {"error": proc.stderr[-2000:]}
            print(name, json.dumps(results[name]), flush=True)
    ok = all("tokens_per_s" in r for r in results.values())
    table = ["| contender | tokens/s | MFU | peak memory | attention |", "|---|---|---|---|---|"]
    for name, r in results.items():
        if "tokens_per_s" in r:
            table.append(f"| {name} | {r['tokens_per_s']:.0f} | {r['mfu']:.1%} | {r.get('peak_gib', 'n/a')} GiB | "
                         f"{r['attention']} |")
    if ok:
        table.append(f"\nsftpipe / TRL tokens/s: {results['sftpipe']['tokens_per_s'] / results['trl']['tokens_per_s']:.2f}x")
    text = "\n".join(table) + "\n"
    print(text)
    if not args.smoke:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "trl_compare.json").write_text(json.dumps({"spec": spec, "results": results}, indent=1))
        (args.out / "trl_compare.md").write_text(f"# sftpipe vs TRL, {spec['shape']}-shaped full fine-tune, seq "
                                                 f"{spec['seq']}\n\n{text}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
