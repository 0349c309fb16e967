"""`sftpipe demo`: the whole pipeline on CPU in minutes, with no network.

init-tiny -> prepare (shipped Haskell problems) -> eval base -> train LoRA -> eval -> merge -> infer; the run's
report.html (curves, data summary, config changes, eval figures) is written and its path printed.
It writes `demo.yaml` into the output dir, so every stage can be re-run by hand with the printed commands.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from sftpipe.config import load_config
from sftpipe.models.tiny import find_examples_dir, init_tiny


def demo_config(out: Path, examples: Path, quick: bool = False) -> dict:
    """The demo's config; `quick` trains one epoch and generates short answers (a smoke test of every stage)."""
    return {
        "model": {"name_or_path": str(out / "tiny")},
        "data": {
            "sources": [{"path": str(examples / "haskell" / "problems.jsonl"), "format": "code",
                         "fields": {"code": "solution"}, "name": "haskell-problems"}],
            "output_dir": str(out / "data"),
            "template": "chatml",
            "max_length": 512,
            "split": {"train": 0.8, "val": 0.1, "test": 0.1, "seed": 7},
        },
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05},
        "train": {"method": "lora", "output_dir": str(out / "run"), "epochs": 1 if quick else 15, "micro_batch_size": 4,
                  "grad_accum": 2, "lr": 3.0e-3, "warmup_ratio": 0.05, "scheduler": "cosine",
                  "eval_every": 30, "save_every": 30, "save_total_limit": 2, "log_every": 5},
        # Held-out test problems are generated for and their answers compiled and run against the tests.
        "eval": {"split": "test", "batch_size": 8, "max_new_tokens": 16 if quick else 96,
                 "code": {"cache_dir": str(out / "exec_cache")}},
        "export": {"output_dir": str(out / "merged")},
    }


def _pass_at_1(result) -> str:
    code = result.suite.code if result.suite else None
    if code is None or not code.problems:
        return "n/a"
    return f"{code.pass_at_k['pass@1']:.3f} ({code.verdicts['pass']}/{code.samples} samples pass)"


def _pass_at_1_line(before, after, report: Path) -> str:
    code = after.suite.code if after.suite else None
    if code is not None and code.skipped and not code.problems:
        return f"held-out pass@1: not measured ({code.skipped})"
    return f"held-out pass@1: {_pass_at_1(before)} -> fine-tuned {_pass_at_1(after)} (report: {report})"


def missing_execution(cfg) -> str | None:
    """Why the demo cannot compile and run the generated Haskell here (None when it can)."""
    from sftpipe.evaluate.execution.executor import Executor

    return Executor(cfg.eval.code).missing_toolchain("haskell")


def _stage(name: str) -> float:
    print(f"\n== {name} ==", flush=True)
    return time.perf_counter()


def run(out: Path, quick: bool = False) -> None:
    from sftpipe.data import prepare
    from sftpipe.evaluate import run as evaluate
    from sftpipe.export import merge
    from sftpipe.infer.generate import run as infer
    from sftpipe.cli.report import print_eval, print_prepare, print_train
    from sftpipe.contracts.run_dir import RunDir
    from sftpipe.stages import evaluate as evaluate_run, train

    t0 = time.perf_counter()
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    examples = find_examples_dir()
    config_path = out / "demo.yaml"
    config_path.write_text(yaml.safe_dump(demo_config(out, examples, quick), sort_keys=False), encoding="utf-8")
    cfg = load_config(config_path)
    missing = missing_execution(cfg)
    if missing:
        print(f"note: pass@k will not be measured: {missing}. `make demo` installs GHC and bubblewrap where it can "
              "(root with apt-get).")
    timings: dict[str, float] = {}

    t = _stage("init-tiny")
    tiny = init_tiny(out / "tiny", size="small", seed=0)
    print(f"tiny Llama: {tiny.num_params:,} params, tokenizer vocab {tiny.vocab_size} -> {tiny.out_dir}")
    timings["init-tiny"] = time.perf_counter() - t

    t = _stage("prepare")
    print_prepare(prepare.run(cfg))
    timings["prepare"] = time.perf_counter() - t

    t = _stage("eval base model (test split)")
    before = evaluate.run(cfg, str(out / "tiny"), str(out / "eval_base"))
    print_eval(before, show_skip=False)
    timings["eval base"] = time.perf_counter() - t

    t = _stage("train LoRA")
    print_train(train(cfg, resume="never"))
    timings["train"] = time.perf_counter() - t

    t = _stage("eval fine-tuned model (test split)")
    after = evaluate_run(cfg, str(out / "run"))  # also adds its figures to the model card and the run report
    print_eval(after, show_skip=False)
    evaluate.write_compare(out / "eval_compare", before, after, cfg)
    print(f"base vs fine-tuned side by side: {out / 'eval_compare' / 'report.html'}")
    timings["eval"] = time.perf_counter() - t

    t = _stage("merge")
    merged = merge.run(cfg, str(out / "run"))
    print(f"merged model: {merged.output_dir} (max |merged - adapter| logit diff {merged.max_abs_logit_diff:.2e})")
    timings["merge"] = time.perf_counter() - t

    t = _stage("infer (merged model, held-out instruction)")
    from sftpipe.contracts.data_dir import DataDir

    held_out = json.loads(DataDir(Path(cfg.data.output_dir)).load_split("test")[0]["messages"])
    prompt = [m for m in held_out if m["role"] != "assistant"]
    completion = infer(cfg, str(merged.output_dir), [prompt])[0][0].text
    print(f"prompt: {prompt[-1]['content']}\ncompletion: {completion!r}")
    timings["infer"] = time.perf_counter() - t

    total = time.perf_counter() - t0
    print("\n== summary ==")
    print(f"held-out test loss: base {before.metrics.loss:.4f} -> fine-tuned {after.metrics.loss:.4f}")
    print(_pass_at_1_line(before, after, out / "eval_compare" / "report.html"))
    print(f"run report (curves, data, config, eval): {RunDir(out / 'run').report}")
    print("stage times: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()) + f"; total {total:.1f}s")
    print(f"outputs under {out}: tiny/, data/, run/ (final/, checkpoints/, logs/), run/eval/, eval_base/, "
          "eval_compare/, merged/")
    print(f"re-run any stage by hand, e.g.: sftpipe train {config_path}")
