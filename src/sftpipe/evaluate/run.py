"""The `eval` stage: a model (run dir, adapter, or full model), or two side by side (`--compare`).

Writes into the output dir: metrics.json (teacher-forced loss/ppl/accuracies on the prepared split,
generation figures, execution verdicts and pass@k), generations.jsonl (every sample with its verdict and
error excerpt) and report.html (self-contained).
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

from sftpipe.config.schema import Config
from sftpipe.contracts.data_dir import DataDir
from sftpipe.contracts.run_dir import RunDir
from sftpipe.errors import SftpipeError
from sftpipe.evaluate.execution.executor import Executor
from sftpipe.evaluate.generation import decoding_settings
from sftpipe.evaluate.metrics import evaluate_loss
from sftpipe.evaluate.problems import EvalItem, items_from_split, load_items, unique_ids
from sftpipe.evaluate.result import CompareResult, EvalResult
from sftpipe.evaluate.suite import make_executor, run_suite
from sftpipe.models.loading import load_trained, pick_device


def load_eval_items(cfg: Config) -> tuple[list[EvalItem], dict[str, int]]:
    """The prompts/problems of `eval.generation.source`, at most `max_prompts` of them, and the accounting:
    how many the source had, how many had no prompt, how many were left out by max_prompts."""
    if not cfg.eval.generation.enabled:
        return [], {}
    g = cfg.eval.generation
    no_prompt = 0
    if g.source == "split":
        items, no_prompt = items_from_split(Path(cfg.data.output_dir), cfg.eval.split, cfg.eval.code.language)
    else:
        items = load_items(g.source, cfg.eval.code.language, g.hf_config, g.hf_split, cfg.data.system_prompt)
    items = unique_ids(items)
    used = items[: g.max_prompts] if g.max_prompts else items
    counts = {"records": len(items) + no_prompt, "skipped_without_prompt": no_prompt,
              "left_out_by_max_prompts": len(items) - len(used)}
    return used, counts


def default_output_dir(cfg: Config, model_path: str) -> Path:
    """eval/ of the run whose model `model_path` is (eval/checkpoint-N/ for a checkpoint), else eval/ of the
    configured run dir."""
    run = RunDir.of_model(model_path)
    return run.eval_of(model_path) if run else RunDir(Path(cfg.train.output_dir)).eval


def run(cfg: Config, model_path: str, output_dir: str | None = None) -> EvalResult:
    """Evaluate `model_path` as `cfg.eval` says; write metrics.json, generations.jsonl, report.html."""
    from sftpipe.evaluate.report_html import write_report

    out = Path(output_dir) if output_dir else default_output_dir(cfg, model_path)
    items, counts = load_eval_items(cfg)
    executor, skipped = make_executor(cfg.eval.code, items)
    result = evaluate_model(cfg, model_path, out, items, executor, skipped, counts)
    write_report(out / "report.html", [("model", result)], cfg)
    return result


def compare(cfg: Config, base_path: str, run_path: str, output_dir: str | None = None) -> CompareResult:
    """Evaluate two models on the same items with the same settings (and seed); a side-by-side report."""
    out = Path(output_dir) if output_dir else RunDir(Path(cfg.train.output_dir)).eval_compare
    items, counts = load_eval_items(cfg)
    executor, skipped = make_executor(cfg.eval.code, items)
    base = evaluate_model(cfg, base_path, out / "base", items, executor, skipped, counts)
    tuned = evaluate_model(cfg, run_path, out / "run", items, executor, skipped, counts)
    write_compare(out, base, tuned, cfg)
    return CompareResult(base, tuned, out)


def write_compare(out: Path, base: EvalResult, tuned: EvalResult, cfg: Config) -> None:
    """metrics.json with both models and their differences, and the side-by-side report.html."""
    from sftpipe.evaluate.report_html import write_report

    payload = {"base": base.as_dict(), "run": tuned.as_dict(), "delta": deltas(base.as_dict(), tuned.as_dict())}
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
    write_report(out / "report.html", [("base", base), ("fine-tuned", tuned)], cfg)


def deltas(base: dict, tuned: dict) -> dict[str, float]:
    """run - base for the headline figures both have."""
    def flat(d: dict) -> dict[str, float]:
        figures = {k: d[k] for k in ("loss", "perplexity", "token_accuracy", "sequence_accuracy") if k in d}
        figures.update(d.get("code", {}).get("pass_at_k", {}))
        for k in ("distinct_2", "repetition_rate", "ended_with_eos", "length_mean"):
            if k in d.get("generation", {}):
                figures[k] = d["generation"][k]
        return figures

    a, b = flat(base), flat(tuned)
    return {k: b[k] - a[k] for k in a if k in b}


def evaluate_model(cfg: Config, model_path: str, out: Path, items: list[EvalItem], executor: Executor | None,
                   skipped: str | None, counts: dict[str, int] | None = None) -> EvalResult:
    """Loss on the prepared split (if eval.loss), generation + execution on `items`; writes metrics.json and
    generations.jsonl into `out`."""
    device = pick_device(cfg.train.device)
    model, tokenizer = load_trained(model_path, device, trust_remote_code=cfg.model.trust_remote_code)
    metrics = None
    data_dir = DataDir(Path(cfg.data.output_dir))
    if cfg.eval.loss:
        if not data_dir.tokenizer_matches(tokenizer):
            raise SftpipeError(f"{model_path}: its tokenizer differs from the one {data_dir.path} was prepared with; "
                               "evaluate on data prepared for this model (or set eval.loss: false)")
        dataset = data_dir.load_split(cfg.eval.split)
        if len(dataset) == 0:
            raise SftpipeError(f"{data_dir.path}/{cfg.eval.split} is empty; set eval.split or prepare with a non-zero "
                               "ratio")
        metrics = evaluate_loss(model, dataset, cfg.eval.batch_size, tokenizer.pad_token_id, device)
    suite = None
    if items:
        suite = run_suite(model, tokenizer, items, decoding_settings(cfg), cfg.eval.code, executor, skipped)
    del model
    gc.collect()
    g = cfg.eval.generation
    settings = {"data_dir": str(data_dir.path), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if items:
        settings["decoding"] = {"source": g.source, "prompts": len(items), "num_samples": g.num_samples,
                                "temperature": g.temperature, "top_p": g.top_p,
                                "max_new_tokens": cfg.eval.max_new_tokens, "seed": g.seed, **(counts or {})}
    result = EvalResult(str(model_path), cfg.eval.split, metrics, out, suite, settings)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result.as_dict(), indent=2), encoding="utf-8")
    with (out / "generations.jsonl").open("w", encoding="utf-8") as fh:
        for record in suite.records if suite else []:
            fh.write(json.dumps(record.as_dict(), ensure_ascii=False) + "\n")
    return result
