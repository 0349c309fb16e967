"""Benchmark: `sftpipe prepare` against TRL's own dataset preparation on the same Alpaca-shaped records.

    python benchmarks/prepare/bench_prepare.py                  # 52,002 records, results/ next to this file
    python benchmarks/prepare/bench_prepare.py --records 5000   # a quick run

Every contender runs in a fresh interpreter, one after the other, on the same JSONL file, with the same
tokenizer (the embedded tiny byte-level BPE; no download), chat template (ChatML) and max length. Timed:
from reading the file to prepared data, excluding interpreter start and imports (sftpipe's time includes
loading its tokenizer; TRL's excludes loading the model and tokenizer it is given).

- sftpipe: `prepare.run` with the default data config (quality filters, exact + near dedup and
  decontamination, content-keyed split, sharded output, data card), on all cores and in one process;
  and with dedup off (tokenization with masks only, the same work TRL does).
- TRL: `SFTTrainer(...)` construction, which tokenizes the conversational prompt/completion dataset
  (apply_chat_template, completion mask, labels, truncation), with `dataset_num_proc` at its default
  (None: one process) and at the number of cores.

Each contender runs `--repeats` times (rounds interleave the contenders); figures are the fastest run's
(the least disturbed by other jobs on a shared machine), memory the largest of any run; CPU-seconds (user
+ system of all the contender's processes) measure the work whatever the load. Memory: each child's own
peak RSS (VmHWM), the largest worker's (ru_maxrss of the children: it counts pages shared with the
parent at fork), and the peak of the summed proportional set size (PSS: shared pages counted once) of
the whole process tree, sampled every 0.2 s. The peak-RSS
scaling of sftpipe is measured at a tenth of the records and at all of them.
A check that both tools did the same work compares their token ids on the records both kept.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import threading
from datetime import datetime, timezone
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

SFTPIPE_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    from sftpipe.cli import quiet_libraries
    quiet_libraries()
    from sftpipe.config import load_config
    from sftpipe.contracts.data_dir import DataDir
    from sftpipe.data import prepare
    config, sample_out = sys.argv[1], sys.argv[2]
    def cpu():
        return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                   for f in ("ru_utime", "ru_stime"))
    def hwm():  # peak RSS of this address space (ru_maxrss would include the parent's at fork)
        return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
    cfg = load_config(config)
    t0, c0 = time.perf_counter(), cpu()
    result = prepare.run(cfg)
    seconds, cpu_seconds = time.perf_counter() - t0, cpu() - c0
    sample = {}
    train = DataDir(result.output_dir).load_split("train")
    for row in train.select(range(min(300, len(train)))):
        messages = json.loads(row["messages"])
        sample[messages[0]["content"] + "\\x1f" + messages[1]["content"]] = [row["input_ids"], row["labels"]]
    json.dump(sample, open(sample_out, "w"))
    print(json.dumps({
        "seconds": seconds, "cpu_seconds": cpu_seconds, "records": result.records_read,
        "examples": sum(s.examples for s in result.splits.values()),
        "tokens": sum(s.tokens for s in result.splits.values()),
        "rejected": dict(result.rejected),
        "peak_rss_mib": hwm(),
        "workers_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }))
""")

TRL_CHILD = textwrap.dedent("""
    import json, os, resource, sys, time, warnings
    warnings.filterwarnings("ignore")
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging
    from trl import SFTConfig, SFTTrainer
    from sftpipe.data.templates import CHATML
    datasets.disable_progress_bars(); logging.set_verbosity_error()
    data, model_dir, num_proc, max_length, out_dir, sample_out = sys.argv[1:7]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = CHATML
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    def cpu():
        return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                   for f in ("ru_utime", "ru_stime"))
    def hwm():  # peak RSS of this address space (ru_maxrss would include the parent's at fork)
        return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
    t0, c0 = time.perf_counter(), cpu()
    rows = []
    with open(data, encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            user = f"{r['instruction']}\\n\\n{r['input']}" if r["input"].strip() else r["instruction"]
            rows.append({"prompt": [{"role": "user", "content": user}],
                         "completion": [{"role": "assistant", "content": r["output"]}]})
    dataset = datasets.Dataset.from_list(rows)
    args = SFTConfig(output_dir=out_dir, max_length=int(max_length), report_to=[], use_cpu=True, bf16=False,
                     dataset_num_proc=int(num_proc) or None)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    seconds, cpu_seconds = time.perf_counter() - t0, cpu() - c0
    ds = trainer.train_dataset
    tokens = sum(len(ids) for ids in ds["input_ids"])
    sample = {}
    for row in ds.select(range(min(len(ds), 5000))):
        key = row["prompt"][0]["content"] + "\\x1f" + row["completion"][0]["content"]
        sample[key] = [row["input_ids"], row["labels"]]
    json.dump(sample, open(sample_out, "w"))
    print(json.dumps({
        "seconds": seconds, "cpu_seconds": cpu_seconds, "records": len(rows), "examples": len(ds), "tokens": tokens,
        "peak_rss_mib": hwm(),
        "workers_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }))
""")


def run_child(name: str, script: str, args: list[str], env: dict[str, str]) -> dict:
    """Run one contender in a fresh interpreter; sample its process tree's PSS while it runs."""
    print(f"-- {name}", flush=True)
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=REPO)
    peak_pss = 0.0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak_pss
        root = psutil.Process(proc.pid)
        while not stop.is_set():
            total = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    try:
                        total += p.memory_full_info().pss
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        pass
            except psutil.NoSuchProcess:
                return
            peak_pss = max(peak_pss, total / 2**20)
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{err[-4000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["tree_peak_pss_mib"] = round(peak_pss, 1)
    result["records_per_s"] = result["records"] / result["seconds"]
    result["tokens_per_s"] = result["tokens"] / result["seconds"]
    result["cpu_ms_per_record"] = 1000 * result["cpu_seconds"] / result["records"]
    print(f"   {result['seconds']:.1f}s ({result['cpu_seconds']:.1f} CPU-s), {result['records_per_s']:.0f} records/s, "
          f"{result['tokens_per_s']:.0f} "
          f"tokens/s, peak RSS {result['peak_rss_mib']:.0f} MiB (workers {result['workers_peak_rss_mib']:.0f}), "
          f"tree PSS {peak_pss:.0f} MiB", flush=True)
    return result


def _best_run(runs: list[dict]) -> dict:
    """The fastest run (the one least slowed by other jobs on the machine, as `timeit` advises), with the
    largest memory figures seen in any run."""
    chosen = dict(min(runs, key=lambda r: r["seconds"]))
    for key in ("peak_rss_mib", "workers_peak_rss_mib", "tree_peak_pss_mib"):
        chosen[key] = max(r[key] for r in runs)
    chosen["all_seconds"] = [round(r["seconds"], 2) for r in runs]
    chosen["all_cpu_seconds"] = [round(r["cpu_seconds"], 2) for r in runs]
    return chosen


def same_work(ours_path: Path, trl_path: Path, bos_id: int) -> dict:
    """On records both kept (matched by text): do the token ids and trained labels agree (BOS aside)?"""
    ours = json.loads(ours_path.read_text())
    trl = json.loads(trl_path.read_text())
    matched = ids_equal = labels_equal = labels_equal_but_last = 0
    for text, (ids, labels) in ours.items():
        if text not in trl:
            continue
        their_ids, their_labels = trl[text]
        if ids[:1] == [bos_id]:  # sftpipe starts with the BOS the tokenizer adds; TRL's template path has none
            ids, labels = ids[1:], labels[1:]
        matched += 1
        ids_equal += ids == their_ids
        labels_equal += labels == their_labels
        # TRL also trains the newline the template writes after <|im_end|>; sftpipe stops at the end token
        labels_equal_but_last += labels[:-1] == their_labels[:-1] and labels[-1:] == [-100]
    return {"matched": matched, "input_ids_equal": ids_equal, "labels_equal": labels_equal,
            "labels_equal_but_trailing_newline": labels_equal_but_last}


def write_config(path: Path, data: Path, model: Path, out: Path, max_length: int, extra: dict) -> Path:
    values = {"model": {"name_or_path": str(model)},
              "data": {"sources": [{"path": str(data)}], "output_dir": str(out), "max_length": max_length,
                       "template": "chatml", **extra}}
    path.write_text(json.dumps(values), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=52002)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--work", type=Path, help="scratch dir (default: a temporary dir)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds; the table shows each contender's fastest")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from make_alpaca import make_records

    from sftpipe.models.tiny import init_tiny

    work = args.work or Path(tempfile.mkdtemp(prefix="sftpipe-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_CACHE": str(work / "hf_cache")}
    load_before = os.getloadavg()

    records = make_records(args.records, seed=0)
    data = work / f"alpaca_{args.records}.jsonl"
    small = work / f"alpaca_{args.records // 10}.jsonl"
    for path, recs in ((data, records), (small, records[: args.records // 10])):
        with path.open("w", encoding="utf-8") as fh:
            for r in recs:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    tiny = init_tiny(work / "tiny", size="small", seed=0)
    from transformers import AutoTokenizer

    bos_id = AutoTokenizer.from_pretrained(tiny.out_dir).bos_token_id

    contenders: list[tuple[str, str, str, list[str]]] = []  # (key, label, child script, args)
    for key, label, source, extra in (
        ("sftpipe", "sftpipe prepare (filters + exact/near dedup + decontamination, all cores)", data, {}),
        ("sftpipe_one_process", "sftpipe prepare (default data config, num_proc=1)", data, {"num_proc": 1}),
        ("sftpipe_no_dedup", "sftpipe prepare (dedup off: tokenize with masks only, all cores)", data,
         {"dedup": {"exact": False, "near": False}}),
        ("sftpipe_tenth", f"sftpipe prepare on a tenth ({args.records // 10} records)", small, {}),
    ):
        cfg = write_config(work / f"{key}.json", source, tiny.out_dir, work / f"out_{key}", args.max_length, extra)
        contenders.append((key, label, SFTPIPE_CHILD, [str(cfg), str(work / f"sample_{key}.json")]))
    for procs in (0, cores):
        key = f"trl_num_proc_{procs or 'default'}"
        contenders.append((key, f"TRL SFTTrainer preparation (dataset_num_proc={procs or None})", TRL_CHILD,
                           [str(data), str(tiny.out_dir), str(procs), str(args.max_length),
                            str(work / f"trl_out_{procs}"), str(work / f"sample_{key}.json")]))
    runs: dict[str, list[dict]] = {key: [] for key, *_ in contenders}
    for round_ in range(args.repeats):  # rounds interleave the contenders, so load bursts hit all of them
        for key, label, script, child_args in contenders:
            runs[key].append(run_child(f"{label} [round {round_ + 1}/{args.repeats}]", script, child_args, env))
    results = {key: _best_run(r) for key, r in runs.items()}

    check = same_work(work / "sample_sftpipe_no_dedup.json", work / "sample_trl_num_proc_default.json", bos_id)
    trl_best = min((results[k] for k in results if k.startswith("trl")), key=lambda r: r["seconds"])
    trl_default = results["trl_num_proc_default"]
    summary = {
        "speedup_vs_trl_default": trl_default["seconds"] / results["sftpipe"]["seconds"],
        "speedup_vs_trl_best": trl_best["seconds"] / results["sftpipe"]["seconds"],
        "speedup_one_process_vs_trl_default": trl_default["seconds"] / results["sftpipe_one_process"]["seconds"],
        "cpu_ratio_trl_default_vs_sftpipe": trl_default["cpu_seconds"] / results["sftpipe"]["cpu_seconds"],
        "cpu_ratio_trl_best_vs_sftpipe": trl_best["cpu_seconds"] / results["sftpipe"]["cpu_seconds"],
        "cpu_ratio_trl_default_vs_sftpipe_no_dedup": trl_default["cpu_seconds"]
        / results["sftpipe_no_dedup"]["cpu_seconds"],
        "speedup_no_dedup_vs_trl_default": trl_default["seconds"] / results["sftpipe_no_dedup"]["seconds"],
        "speedup_no_dedup_vs_trl_best": trl_best["seconds"] / results["sftpipe_no_dedup"]["seconds"],
        "peak_rss_ratio_10x_vs_1x": results["sftpipe"]["peak_rss_mib"] / results["sftpipe_tenth"]["peak_rss_mib"],
        "tree_pss_ratio_10x_vs_1x": results["sftpipe"]["tree_peak_pss_mib"]
        / results["sftpipe_tenth"]["tree_peak_pss_mib"],
        "same_work_check": check,
    }
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cores": cores, "cpu": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "versions": _versions(),
        "records": args.records, "max_length": args.max_length, "repeats": args.repeats, "results": results,
        "summary": summary,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    stem = f"prepare_{args.records}"
    (args.results / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (args.results / f"{stem}.md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("sftpipe", "torch", "transformers", "tokenizers", "datasets", "trl",
                                             "datasketch", "pyarrow")}


def markdown(report: dict) -> str:
    r, s, m = report["results"], report["summary"], report["machine"]
    rows = [("sftpipe prepare, default (filters, exact+near dedup, decontamination), all cores", r["sftpipe"]),
            ("sftpipe prepare, default, num_proc=1 (one process)", r["sftpipe_one_process"]),
            ("sftpipe prepare, dedup off, all cores", r["sftpipe_no_dedup"]),
            ("TRL SFTTrainer preparation, dataset_num_proc=None (default)", r["trl_num_proc_default"]),
            (f"TRL SFTTrainer preparation, dataset_num_proc={m['cores']}", r[f"trl_num_proc_{m['cores']}"])]
    lines = [f"# prepare benchmark: {report['records']} Alpaca-shaped records", "",
             f"{report['date']}; {m['cores']} cores, {m['memory_gib']} GiB; load average before "
             f"{m['load_average_before']}, after {m['load_average_after']} (a machine shared with other jobs: "
             f"wall times are noisy, so each contender ran {report['repeats']} times, rounds interleaved, and the "
             "table shows its fastest run; CPU-seconds measure the work whatever the load). Tokenizer: the embedded "
             f"tiny BPE; template ChatML; max_length {report['max_length']}.", "",
             "| contender | seconds | CPU-seconds | records/s | tokens/s | peak RSS MiB (main) "
             "| peak RSS MiB (largest worker) | peak PSS MiB (process tree) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, x in rows:
        lines.append(f"| {name} | {x['seconds']:.1f} | {x['cpu_seconds']:.1f} | {x['records_per_s']:.0f} "
                     f"| {x['tokens_per_s']:.0f} | "
                     f"{x['peak_rss_mib']:.0f} | {x['workers_peak_rss_mib']:.0f} | {x['tree_peak_pss_mib']:.0f} |")
    t = r["sftpipe_tenth"]
    check = s["same_work_check"]
    lines += ["", "Wall seconds of every run: " + "; ".join(
        f"{key} {x['all_seconds']}" for key, x in r.items()) + ".", "", "CPU-seconds of every run: " + "; ".join(
        f"{key} {x['all_cpu_seconds']}" for key, x in r.items()) + ".", "",
        f"- sftpipe default vs TRL default: **{s['speedup_vs_trl_default']:.2f}x** faster; vs the faster "
              f"TRL setting: **{s['speedup_vs_trl_best']:.2f}x**.",
              f"- sftpipe default in one process vs TRL default (one process each): "
              f"{s['speedup_one_process_vs_trl_default']:.2f}x.",
              f"- CPU time (user + system, all processes; independent of how busy the machine was): TRL default "
              f"used {s['cpu_ratio_trl_default_vs_sftpipe']:.2f}x the CPU of sftpipe default (the faster TRL "
              f"setting {s['cpu_ratio_trl_best_vs_sftpipe']:.2f}x) and "
              f"{s['cpu_ratio_trl_default_vs_sftpipe_no_dedup']:.2f}x that of sftpipe with dedup off.",
              f"- sftpipe with dedup off vs TRL default: {s['speedup_no_dedup_vs_trl_default']:.2f}x; vs the faster "
              f"TRL setting: {s['speedup_no_dedup_vs_trl_best']:.2f}x.",
              f"- sftpipe peak RSS at {report['records']} records vs a tenth ({t['records']}): main "
              f"{r['sftpipe']['peak_rss_mib']:.0f} vs {t['peak_rss_mib']:.0f} MiB "
              f"(x{s['peak_rss_ratio_10x_vs_1x']:.2f}); "
              f"process tree PSS {r['sftpipe']['tree_peak_pss_mib']:.0f} vs {t['tree_peak_pss_mib']:.0f} "
              "MiB "
              f"(x{s['tree_pss_ratio_10x_vs_1x']:.2f}).",
              f"- Same work: of {check['matched']} records both kept (sftpipe dedup off vs TRL default), "
              f"{check['input_ids_equal']} have identical token ids (sftpipe's leading BOS set aside); labels are "
              f"identical in {check['labels_equal']} and identical but for the last token in "
              f"{check['labels_equal_but_trailing_newline']}: TRL also trains the newline after <|im_end|>.",
              f"- sftpipe default removed: {json.dumps(r['sftpipe']['rejected'], sort_keys=True)}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
