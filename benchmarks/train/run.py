"""Training speed, side by side in one run: sftpipe vs TRL's SFTTrainer vs a bare PyTorch loop.

    python benchmarks/train/run.py                    # the comparison, full and LoRA (~10 min on 2 cores)
    python benchmarks/train/run.py --suite options    # sftpipe's speed options, one at a time
    python benchmarks/train/run.py --rounds 1 --steps 2   # a quick look

Everything is built here, deterministically: the tiny Llama (`init_tiny(size="small")`, ~4M params), a few
thousand synthetic chat conversations (synth.py; 20 to ~1000 tokens, mean ~200) and one prepared data dir
that every contender trains on (TRL gets the same input_ids and labels). Same max length, learning rate,
LoRA settings and tokens per optimizer step for all. Contenders run one at a time, each in its own process
(clean peak RSS), in an order that rotates every round, so that the machine's load drifts over all of
them alike; figures are medians over rounds. Results: results/<device>-<suite>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import synth  # noqa: E402

MAX_LENGTH = 1024
PACK_LENGTH = 1024
ROWS_PER_MICRO_BATCH = 1  # one packed row per micro-batch: as fast as 4 on CPU, a quarter of the activations
GRAD_ACCUM = 8
TOKENS_PER_STEP = PACK_LENGTH * ROWS_PER_MICRO_BATCH * GRAD_ACCUM  # 8192 token slots per optimizer step
TRL_DEFAULT_BATCH = 8  # TRL's default per_device_train_batch_size
# vs_bare_kernels is the strict form of ">= 0.95x the bare loop": the bare loop running sftpipe's own kernels
TARGETS = {"vs_trl_default": 2.0, "vs_trl_packed": 1.3, "vs_bare": 0.95, "vs_bare_kernels": 0.95,
           "packing_efficiency": 0.99,
           "rss_vs_trl_default": 0.8}


def machine() -> dict:
    cpu = "unknown"
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    if Path("/proc/meminfo").is_file():
        kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        mem_gib = round(kib / 2**20, 1)
    versions = {}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "sftpipe"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    import torch

    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout.strip()
    # results/ is left out: a run writes there before the next suite records the commit
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "benchmarks", ":!benchmarks/*/results"],
                           cwd=HERE.parents[1],
                           capture_output=True, text=True).stdout.strip()
    return {"git": git + ("+uncommitted" if dirty else ""), "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "memory_gib": mem_gib,
            "platform": platform.platform(), "python": platform.python_version(), "versions": versions,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def build_workdir(workdir: Path, conversations: int, seed: int) -> Path:
    """Tiny model, synthetic chat data, prepared data dir and the sftpipe config all contenders read."""
    from transformers import AutoTokenizer

    from sftpipe.cli import quiet_libraries
    from sftpipe.config import load_config
    from sftpipe.data import prepare
    from sftpipe.models.tiny import init_tiny

    quiet_libraries()
    model_dir = workdir / "tiny"
    if not (model_dir / "config.json").is_file():
        init_tiny(model_dir, size="small", seed=0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    records = synth.conversations(conversations, seed, synth.calibrate_tokens_per_word(tokenizer))
    data = synth.write_jsonl(records, workdir / "chat.jsonl")
    config = {
        # attention left at auto: sftpipe's default (sdpa_varlen for packed rows on CPU); TRL and the bare
        # loop load the model with sdpa, transformers' default
        "model": {"name_or_path": str(model_dir)},
        "data": {"sources": [{"path": str(data), "format": "messages"}], "output_dir": str(workdir / "data"),
                 "template": "chatml", "max_length": MAX_LENGTH, "split": {"train": 1.0, "val": 0.0, "test": 0.0}},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
        "train": {"lr": 2e-4, "scheduler": "constant", "warmup_ratio": 0.0, "max_grad_norm": 1.0,
                  "packing": True, "pack_length": PACK_LENGTH,
                  "tokens_per_batch": PACK_LENGTH * ROWS_PER_MICRO_BATCH, "grad_accum": GRAD_ACCUM,
                  "log_every": 1, "save_every": 0, "eval_every": 0, "save_total_limit": 1, "progress_bar": False,
                  "precision": "fp32", "device": "cpu", "seed": 42},
    }
    path = workdir / "bench.json"
    path.write_text(json.dumps(config, indent=1))
    prepare.run(load_config(path))
    return path


def data_figures(workdir: Path) -> dict:
    from sftpipe.contracts.data_dir import DataDir

    data = DataDir(workdir / "data")
    split = data.manifest.splits["train"]
    lengths = [len(x) for x in data.load_split("train")["input_ids"]]
    return {"examples": split.examples, "tokens": split.tokens, "trained_tokens": split.trained_tokens,
            "mean_length": round(split.tokens / split.examples, 1), "min_length": min(lengths),
            "max_length": max(lengths), "rejected": data.manifest.rejected}


def contenders(suite: str, trl_default_accum: int, trl_packed_batch: int) -> list[dict]:
    if suite == "compare":
        out = []
        for method in ("full", "lora"):
            out += [
                {"name": f"sftpipe-{method}", "kind": "sftpipe", "method": method},
                {"name": f"trl-default-{method}", "kind": "trl", "method": method, "trl": "default",
                 "batch_size": TRL_DEFAULT_BATCH, "grad_accum": trl_default_accum},
                {"name": f"trl-packed-{method}", "kind": "trl", "method": method, "trl": "packed",
                 "batch_size": trl_packed_batch,
                 "grad_accum": ROWS_PER_MICRO_BATCH * GRAD_ACCUM // trl_packed_batch},
                {"name": f"bare-{method}", "kind": "bare", "method": method, "kernels": "transformers",
                 "set": [f"train.method={method}"]},
                {"name": f"bare-kernels-{method}", "kind": "bare", "method": method, "kernels": "sftpipe",
                 "set": [f"train.method={method}"]},
            ]
        return out
    base = {"kind": "sftpipe", "method": "full"}
    return [
        {**base, "name": "packed, sdpa_varlen, chunked CE (default)"},
        {**base, "name": "sdpa with block-causal masks", "set": ["model.attn_implementation=sdpa"]},
        {**base, "name": "eager attention", "set": ["model.attn_implementation=eager"]},
        {**base, "name": "full-logits cross-entropy", "set": ["train.cross_entropy=full"]},
        {**base, "name": "gradient checkpointing", "set": ["model.gradient_checkpointing=true"]},
        {**base, "name": "torch.compile", "set": ["train.compile=true"]},
        {**base, "name": "2 dataloader workers", "set": ["train.num_workers=2"]},
        {**base, "name": "unpacked, length-grouped", "set": ["train.packing=false"]},
        {**base, "name": "unpacked, 8 per batch (padded)",
         "set": ["train.packing=false", "train.tokens_per_batch=0", "train.micro_batch_size=8",
                 f"train.grad_accum={trl_default_accum}"]},
    ]


def others_share(seconds: float = 3.0) -> float:
    """Share of the machine's CPUs busy with other processes over `seconds` (this process sleeps meanwhile).

    On a shared machine (other containers on the same kernel) the load is invisible to `ps`; /proc/stat
    still counts it. A 2-thread contender slows far more than proportionally when one core is taken
    (its threads wait for each other), so runs are only compared when the machine was quiet.
    """
    def busy() -> tuple[float, float]:
        with open("/proc/stat") as fh:
            f = [int(x) for x in fh.readline().split()[1:]]
        return sum(f[:8]) - f[3] - f[4], sum(f[:8])
    (b0, t0), _ = busy(), time.sleep(seconds)
    b1, t1 = busy()
    return (b1 - b0) / max(t1 - t0, 1)


def wait_for_quiet(threshold: float, max_wait: float) -> float:
    """Wait (at most `max_wait` s) until other processes use less than `threshold` of the CPUs."""
    if not Path("/proc/stat").is_file():
        return float("nan")
    deadline = time.time() + max_wait
    share = others_share()
    while share > threshold and time.time() < deadline:
        share = others_share()
    return share


def run_contender(spec_path: Path, name: str, timeout: int, threads: int) -> dict:
    load = os.getloadavg()[0]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, str(HERE / "contender.py"), str(spec_path), name], capture_output=True,
                          text=True, timeout=timeout, env=env)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        tail = (proc.stderr or proc.stdout)[-3000:]
        return {"name": name, "error": f"exit {proc.returncode}: {tail}", "load_before": load}
    return {**json.loads(line[len("RESULT "):]), "load_before": load}


def summarize(runs: list[dict], contended: float) -> dict:
    """Per contender: best wall-clock throughput of the runs made on a quiet enough machine (interference only
    ever slows a run down), median throughput per CPU-second of all runs, peak RSS over all runs."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[-1]["error"]}
    quiet = [r for r in ok if (r["others_cpu_share"] or 0) <= contended]
    best = max(quiet or ok, key=lambda r: r["tokens_per_s"])
    median = lambda key: statistics.median(r[key] for r in ok)  # noqa: E731
    return {"tokens_per_s": best["tokens_per_s"], "supervised_per_s": best["supervised_per_s"],
            "tokens_per_cpu_s": median("tokens_per_cpu_s"), "supervised_per_cpu_s": median("supervised_per_cpu_s"),
            "packing_efficiency": median("packing_efficiency"), "peak_rss_mb": max(r["peak_rss_mb"] for r in ok),
            "runs": len(ok), "quiet_runs": len(quiet),
            "tokens_per_s_each": [round(r["tokens_per_s"]) for r in ok],
            "tokens_per_cpu_s_each": [round(r["tokens_per_cpu_s"]) for r in ok],
            "others_cpu_share_each": [None if r["others_cpu_share"] is None else round(r["others_cpu_share"], 2)
                                      for r in ok],
            "detail": ok[0].get("detail")}


def ratios(summary: dict, measure: str) -> dict:
    """sftpipe against each other contender, per method, on `measure` (tokens_per_s or tokens_per_cpu_s)."""
    out = {}
    for method in ("full", "lora"):
        s = summary.get(f"sftpipe-{method}", {})
        get = lambda name, key: summary.get(f"{name}-{method}", {}).get(key)  # noqa: E731
        if measure not in s:
            continue
        r = {}
        for key, other in (("vs_trl_default", "trl-default"), ("vs_trl_packed", "trl-packed"), ("vs_bare", "bare"),
                           ("vs_bare_kernels", "bare-kernels")):
            if get(other, measure):
                r[key] = s[measure] / get(other, measure)
        if get("trl-default", "peak_rss_mb"):
            r["rss_vs_trl_default"] = s["peak_rss_mb"] / get("trl-default", "peak_rss_mb")
        r["packing_efficiency"] = s["packing_efficiency"]
        r["met"] = {k: (v <= TARGETS[k] if k == "rss_vs_trl_default" else v >= TARGETS[k]) for k, v in r.items()
                    if k in TARGETS}
        out[method] = r
    return out


def write_report(result: dict, out_dir: Path, stem: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1))
    m, d = result["machine"], result["data"]
    lines = [f"# Training benchmark: {result['suite']} ({stem})", "",
             f"Run {result['started']} .. {result['finished']}: `python benchmarks/train/run.py "
             f"{' '.join(result['argv'])}`.", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['platform']}; CUDA: "
             f"{m['cuda'] or 'none'}. Torch threads per contender: {result['threads']}.",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + f"; sftpipe at {m['git']}.",
             f"Load average (1 min) at start {result['load_start']:.2f}, at end {result['load_end']:.2f}. The machine "
             "is shared with other jobs (other containers, invisible to `ps`); /proc/stat tells how much of the CPUs "
             "they took during each run ('others' below).", "",
             f"Data: {d['examples']} synthetic conversations, {d['tokens']} tokens ({d['trained_tokens']} supervised), "
             f"length {d['min_length']}..{d['max_length']}, mean {d['mean_length']}; max length {MAX_LENGTH}. "
             f"Model: tiny Llama (~4M params, fp32; sftpipe's attention as chosen by its defaults, see `detail` in the "
             f"JSON; TRL and `bare`: sdpa; `bare-kernels`: sdpa_varlen). {result['settings']}", "",
             "Throughput: *wall* = best non-pad tokens/s of the runs made while others took at most "
             f"{result['contended']:.0%} of the CPUs; *CPU* = median non-pad tokens per CPU-second of this process "
             "(with one thread, the single-core speed whatever the load).", "",
             "| contender | wall tok/s | wall supervised/s | CPU tok/s | CPU supervised/s | packing eff. | "
             "peak RSS MB | runs: wall tok/s (others) |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, s in result["summary"].items():
        if "error" in s:
            lines.append(f"| {name} | error: {s['error'][-160:]!r} | | | | | | |")
            continue
        each = ", ".join(f"{t} ({'?' if o is None else f'{o:.0%}'})"
                         for t, o in zip(s["tokens_per_s_each"], s["others_cpu_share_each"]))
        lines.append(f"| {name} | {s['tokens_per_s']:.0f} | {s['supervised_per_s']:.0f} | {s['tokens_per_cpu_s']:.0f} "
                     f"| {s['supervised_per_cpu_s']:.0f} | {s['packing_efficiency']:.4f} | {s['peak_rss_mb']:.0f} "
                     f"| {each} |")
    if result["suite"] == "options":
        names = [n for n, s in result["summary"].items() if "error" not in s]
        if names:
            base = result["summary"][names[0]]
            key = result["primary"]
            lines += ["", f"Relative to `{names[0]}` ({'CPU' if key == 'tokens_per_cpu_s' else 'wall'} throughput): "
                      + ", ".join(f"{n}: {result['summary'][n][key] / base[key]:.2f}x" for n in names[1:]) + "."]
    for measure, label in (("tokens_per_cpu_s", "CPU"), ("tokens_per_s", "wall")):
        table = result["ratios"].get(measure)
        if not table:
            continue
        primary = " (primary)" if measure == result["primary"] else ""
        lines += ["", f"Ratios on {label} throughput{primary}: sftpipe / contender.", "",
                  "| method | vs TRL default (>= 2.0) | vs TRL packed (>= 1.3) | vs bare loop, transformers kernels "
                  "(>= 0.95) | vs bare loop, sftpipe's kernels (>= 0.95) | packing eff. (>= 0.99) | "
                  "peak RSS vs TRL default (<= 0.8) |", "|---|---:|---:|---:|---:|---:|---:|"]
        for method, r in table.items():
            cell = lambda k: (f"{r[k]:.2f}" + ("" if r["met"][k] else " **missed**")) if k in r else "n/a"  # noqa: E731
            lines.append(f"| {method} | {cell('vs_trl_default')} | {cell('vs_trl_packed')} | {cell('vs_bare')} | "
                         f"{cell('vs_bare_kernels')} | {cell('packing_efficiency')} | {cell('rss_vs_trl_default')} |")
    (out_dir / f"{stem}.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=["compare", "options"], default="compare")
    parser.add_argument("--rounds", type=int, default=2, help="runs of every contender, in rotating order")
    parser.add_argument("--steps", type=int, default=4, help="measured optimizer steps per contender")
    parser.add_argument("--warmup", type=int, default=1, help="optimizer steps run before measuring")
    parser.add_argument("--conversations", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="scratch dir (default: a new temporary dir)")
    parser.add_argument("--only", action="append", help="run only contenders whose name contains this")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per contender run")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads per contender (default: all cores). On a machine shared with other "
                        "jobs use 1: a lone thread gets a whole core and never waits for a descheduled sibling, so "
                        "its tokens per CPU-second measure the same thing whatever the load")
    parser.add_argument("--quiet-below", type=float,
                        help="start a contender only when other processes use less than this share of the CPUs "
                        "(default: what leaves the contender's threads free cores, less 5%%)")
    parser.add_argument("--max-wait", type=float, default=120, help="seconds to wait for a quiet machine")
    parser.add_argument("--contended", type=float, default=0.1,
                        help="a run during which others took more than quiet-below plus this share of the CPUs is "
                        "re-run (once), and ranked after the runs made on a quiet enough machine")
    parser.add_argument("--trl-packed-batch", type=int, default=1, choices=[1, 2, 4, 8],
                        help="packed sequences per TRL micro-batch. TRL's padding-free collator concatenates them "
                        "into one row, so on CPU (no flash-attention) 1 is TRL's fastest; the accumulation keeps "
                        "the tokens per optimizer step equal")
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    if args.quiet_below is None:
        args.quiet_below = max(0.05, 1 - args.threads / cores - 0.05)

    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load_start = os.getloadavg()[0]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sftpipe-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    config = build_workdir(workdir, args.conversations, args.seed)
    data = data_figures(workdir)
    # TRL's default batches hold 8 examples; accumulate enough of them for ~the same tokens per step
    trl_default_accum = max(1, round(TOKENS_PER_STEP / (TRL_DEFAULT_BATCH * data["mean_length"])))
    cs = contenders(args.suite, trl_default_accum, args.trl_packed_batch)
    if args.only:
        cs = [c for c in cs if any(o in c["name"] for o in args.only)]
    spec = {"workdir": str(workdir), "config": str(config), "warmup": args.warmup, "steps": args.steps,
            "contenders": cs}
    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))

    runs: dict[str, list[dict]] = {c["name"]: [] for c in cs}
    for r in range(args.rounds):
        order = cs[r % len(cs):] + cs[: r % len(cs)] if r % 2 == 0 else list(reversed(cs))
        for c in order:
            for attempt in range(2):
                quiet = wait_for_quiet(args.quiet_below, args.max_wait)
                print(f"round {r + 1}/{args.rounds}: {c['name']} (others at {quiet:.0%}) ...", end=" ", flush=True)
                res = run_contender(spec_path, c["name"], args.timeout, args.threads)
                runs[c["name"]].append(res)
                print(res["error"][-300:] if "error" in res else
                      f"{res['tokens_per_s']:.0f} tok/s, {res['supervised_per_s']:.0f} sup/s, "
                      f"{res['tokens_per_cpu_s']:.0f} tok/cpu-s, eff {res['packing_efficiency']:.3f}, "
                      f"RSS {res['peak_rss_mb']:.0f} MB, others took {res['others_cpu_share'] or 0:.0%} of the CPUs",
                      flush=True)
                if "error" in res or (res["others_cpu_share"] or 0) <= args.quiet_below + args.contended:
                    break
    summary = {name: summarize(rs, args.quiet_below + args.contended) for name, rs in runs.items()}
    settings = (f"Per optimizer step: sftpipe and bare {TOKENS_PER_STEP} token slots ({ROWS_PER_MICRO_BATCH} rows "
                f"of {PACK_LENGTH} x {GRAD_ACCUM} micro-batches); TRL packed (bfd, padding-free) {args.trl_packed_batch} "
                f"packed sequence(s) of {MAX_LENGTH} x {TOKENS_PER_STEP // MAX_LENGTH // args.trl_packed_batch} "
                f"micro-batches; TRL default {TRL_DEFAULT_BATCH} examples x "
                f"{trl_default_accum} micro-batches (~{TRL_DEFAULT_BATCH * trl_default_accum * data['mean_length']:.0f} "
                f"real tokens). Bare loops: `bare` = transformers' sdpa (block-causal masks from position_ids) + cross-entropy on "
                f"full logits on the padded packed rows; `bare-kernels` = sftpipe's kernels (sdpa_varlen on flat "
                f"padding-free rows + chunked linear cross-entropy), the strict limit for sftpipe's overhead. "
                f"lr 2e-4 constant, AdamW, grad clip 1.0 (bare loops: none), LoRA r16/alpha32/dropout 0.05 "
                f"on all linear layers. {args.warmup} warm-up + {args.steps} measured steps per contender.")
    result = {"suite": args.suite, "argv": argv if argv is not None else sys.argv[1:], "started": started,
              "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "load_start": load_start,
              "load_end": os.getloadavg()[0], "machine": machine(), "data": data, "settings": settings,
              "targets": TARGETS, "threads": args.threads, "contended": args.quiet_below + args.contended,
              "primary": "tokens_per_cpu_s" if args.threads == 1 else "tokens_per_s", "summary": summary,
              "ratios": {m: ratios(summary, m) for m in ("tokens_per_cpu_s", "tokens_per_s")}
              if args.suite == "compare" else {}, "runs": runs}
    import torch

    stem = f"{'cuda' if torch.cuda.is_available() else 'cpu'}-{args.suite}-threads{args.threads}"
    if args.only or args.trl_packed_batch != 1:
        stem += "-partial" if args.only else f"-trl-packed-batch{args.trl_packed_batch}"
    write_report(result, args.out, stem)
    print((args.out / f"{stem}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
