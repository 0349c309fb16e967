"""Memory of the loss: cross-entropy on full logits vs sftpipe's chunked linear cross-entropy, side by side.

    python benchmarks/train/loss_memory.py                  # vocab 32000 and 128256, 4096 tokens, hidden 1024
    python benchmarks/train/loss_memory.py --tokens 8192 --vocab 151936

The tiny benchmark model's vocab is too small to show what the chunked loss is for, so this measures the loss
alone at real vocab sizes: hidden states (tokens x hidden) and an LM head (vocab x hidden), fp32, 60% of the
positions supervised; forward + backward of each implementation in its own process. Reported: the peak
memory the loss added on top of its inputs (VmHWM - VmRSS before the loss), the time, and the loss and
gradient norms (which must agree). Results: results/loss_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure(impl: str, tokens: int, vocab: int, hidden: int, threads: int) -> dict:
    """Runs in a fresh process: forward + backward of one loss implementation."""
    import torch

    from sftpipe.models.loss import linear_cross_entropy_sum, shifted_targets, token_loss_sum

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    h = (torch.randn(tokens, hidden, generator=g) * 0.5).requires_grad_()
    w = (torch.randn(vocab, hidden, generator=g) * hidden**-0.5).requires_grad_()
    labels = torch.randint(0, vocab, (tokens,), generator=g)
    labels[torch.rand(tokens, generator=g) > 0.6] = -100  # prompt tokens
    base = status_mib("VmRSS")
    start = time.perf_counter()
    if impl == "full":  # what a model's forward gives: logits of every position, then the loss
        loss = token_loss_sum((h @ w.T).unsqueeze(0), labels.unsqueeze(0))[0]
    else:  # sftpipe: the head on supervised positions only, in chunks, gradients as it goes
        targets = shifted_targets(labels.unsqueeze(0))[0]
        keep = targets != -100
        loss = linear_cross_entropy_sum(h[keep], w, targets[keep])
    loss.backward()
    seconds = time.perf_counter() - start
    return {"impl": impl, "tokens": tokens, "vocab": vocab, "hidden": hidden, "seconds": seconds,
            "extra_peak_mib": status_mib("VmHWM") - base, "inputs_mib": (h.numel() + w.numel()) * 4 / 2**20,
            "loss": float(loss), "grad_h_norm": float(h.grad.norm()), "grad_w_norm": float(w.grad.norm())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--vocab", type=int, action="append", help="vocab sizes (default 32000 and 128256)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--measure", nargs=4, metavar=("IMPL", "TOKENS", "VOCAB", "HIDDEN"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        impl, tokens, vocab, hidden = args.measure
        print("RESULT " + json.dumps(measure(impl, int(tokens), int(vocab), int(hidden), args.threads)))
        return 0
    rows = []
    for vocab in args.vocab or [32000, 128256]:
        for impl in ("full", "chunked"):
            proc = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--measure", impl,
                                   str(args.tokens), str(vocab), str(args.hidden)], capture_output=True, text=True)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(f"{impl} vocab {vocab} failed:\n{proc.stderr[-2000:]}")
            rows.append(json.loads(line[len("RESULT "):]))
            r = rows[-1]
            print(f"vocab {vocab} {impl}: +{r['extra_peak_mib']:.0f} MiB peak, {r['seconds']:.2f} s, loss {r['loss']:.4f}",
                  flush=True)
    lines = ["# Loss memory: full logits vs chunked linear cross-entropy", "",
             f"`python benchmarks/train/loss_memory.py {' '.join(argv if argv is not None else sys.argv[1:])}` "
             f"on {time.strftime('%Y-%m-%d %H:%M')}: {args.tokens} tokens (60% supervised), hidden {args.hidden}, "
             f"fp32, {args.threads} torch threads, forward + backward, each in its own process. *Peak added*: "
             "VmHWM minus VmRSS before the loss: the inputs are in the baseline, their gradients count as added "
             "for both (the head's gradient alone is vocab x hidden x 4 bytes). Full logits are computed for every "
             "position, as a model's forward does; the chunked loss runs the head on supervised positions only.",
             "",
             "| vocab | loss | peak added MiB | seconds | loss value | grad norm h | grad norm W |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['vocab']} | {r['impl']} | {r['extra_peak_mib']:.0f} | {r['seconds']:.2f} | {r['loss']:.4f} "
                     f"| {r['grad_h_norm']:.5f} | {r['grad_w_norm']:.5f} |")
    lines.append("")
    for vocab in sorted({r["vocab"] for r in rows}):
        full, chunked = (next(r for r in rows if r["vocab"] == vocab and r["impl"] == i) for i in ("full", "chunked"))
        lines.append(f"- vocab {vocab}: chunked adds {chunked['extra_peak_mib'] / full['extra_peak_mib']:.2f}x the "
                     f"memory of full logits ({chunked['extra_peak_mib']:.0f} vs {full['extra_peak_mib']:.0f} MiB), "
                     f"{full['seconds'] / chunked['seconds']:.2f}x its speed; loss values differ by "
                     f"{abs(full['loss'] - chunked['loss']) / abs(full['loss']):.1e} (relative).")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "loss_memory.json").write_text(json.dumps(rows, indent=1))
    (args.out / "loss_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
