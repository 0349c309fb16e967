"""The README's memory examples: `sftpipe estimate` on Llama-7B-shaped and Llama-3-8B-shaped models, without a
download (`estimate` reads only config.json, so one is written here from the published shapes).

    python benchmarks/memory/estimate_examples.py          # prints each command and its table

Every figure is an estimate (models/memory.py): checked on CPU against torch's own accounting on the tiny model
(tests/unit/test_memory_estimate.py, within 7.3%), not yet against a GPU (benchmarks/gpu/memory.sh does that).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

# Llama-2-7B's config.json (hidden 4096, 32 layers, 32 heads, MLP 11008, vocab 32000)
LLAMA_7B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
            "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}

EXAMPLES = [
    ("QLoRA on one 24 GB GPU (RTX 3090/4090, L4)", "qlora",
     ["--gpu-memory", "24GiB"], {"train.micro_batch_size": "4", "train.grad_accum": "4"}),
    ("LoRA (bf16 base) on each of 4x A40 (48 GB), DDP", "lora",
     ["--gpu-memory", "48GiB", "--gpus", "4"], {"train.micro_batch_size": "8", "train.grad_accum": "2"}),
    ("full fine-tune on 4x A40, FSDP-sharded", "full",
     ["--gpu-memory", "48GiB", "--gpus", "4", "--sharding", "fsdp"],
     {"train.micro_batch_size": "8", "train.grad_accum": "2"}),
]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "llama-7b-shape"
        model.mkdir()
        (model / "config.json").write_text(json.dumps(LLAMA_7B))
        config = Path(tmp) / "sft.yaml"
        config.write_text(
            f"model: {{name_or_path: {model}, dtype: bfloat16}}\n"
            f"data: {{sources: [{{path: train.jsonl}}], output_dir: {tmp}/data, max_length: 2048}}\n"
            "train: {precision: bf16, packing: true}\n")
        for title, method, flags, sets in EXAMPLES:
            overrides = [f"train.method={method}"] + [f"{k}={v}" for k, v in sets.items()]
            args = ["estimate", str(config), *flags] + [a for o in overrides for a in ("--set", o)]
            print(f"## {title}\n$ sftpipe {' '.join(args).replace(str(config), 'sft.yaml')}", flush=True)
            subprocess.run([sys.executable, "-m", "sftpipe.cli", *args], check=False)
            print(flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
