"""What crash safety costs per checkpoint: SHA-256 digests at save, verification at resume, data fingerprint.

Runs side by side in one process on a full fine-tune of a randomly initialised Llama (weights + AdamW state):
the same `save_checkpoint` with and without the digests (the rest, fsync included, is identical), then
`verify_checkpoint` next to the `restore_checkpoint` it guards, and `data_fingerprint` over a prepared
train split. Prints seconds and ratios; the figures depend on the disk and the machine's load.

    python benchmarks/checkpoint_overhead.py [--hidden 512] [--layers 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, get_scheduler

from sftpipe.contracts.checkpoint import TrainerState, latest_complete, verify_checkpoint
from sftpipe.train.checkpoint import dir_bytes, human_bytes, restore_checkpoint, save_checkpoint


def build(hidden: int, layers: int):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                         num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64), max_position_embeddings=512)
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=1, num_training_steps=10)
    model(torch.randint(0, 32000, (1, 16)), labels=torch.randint(0, 32000, (1, 16))).loss.backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model, optimizer, scheduler = build(args.hidden, args.layers)
    params = sum(p.numel() for p in model.parameters())
    root = Path(tempfile.mkdtemp(prefix="sftpipe-bench-"))
    try:
        step = iter(range(1, 10_000))

        def save(digests: bool = True):
            save_checkpoint(root, TrainerState(step=next(step)), model, optimizer, scheduler, save_limit=1,
                            digests=digests)

        save()  # warm-up: first writes allocate the files' pages
        with_digests, without = [], []
        for _ in range(args.repeats):  # interleaved, so drifting machine load hits both alike
            with_digests.append(timed(save, 1))
            without.append(timed(lambda: save(digests=False), 1))  # train.checkpoint_digests: false
        with_digests, without = statistics.median(with_digests), statistics.median(without)
        save()
        ckpt = latest_complete(root)
        size = dir_bytes(ckpt)
        verify = timed(lambda: verify_checkpoint(ckpt), args.repeats)
        restore = timed(lambda: restore_checkpoint(ckpt, model, optimizer, scheduler), args.repeats)
    finally:
        shutil.rmtree(root)

    print(f"full fine-tune state of a {params / 1e6:.1f}M-parameter Llama: checkpoint {human_bytes(size)}, "
          f"median of {args.repeats}")
    print(f"  save with digests     {with_digests:7.3f} s")
    print(f"  save, sizes only      {without:7.3f} s   digests add {with_digests / without - 1:+.0%} "
          f"({(with_digests - without) / (size / 2**30):.2f} s per GiB)")
    print(f"  verify at resume      {verify:7.3f} s   ({size / verify / 2**20:.0f} MiB/s)")
    print(f"  restore (load)        {restore:7.3f} s   verify adds {verify / restore:+.0%} to a resume")


if __name__ == "__main__":
    main()
