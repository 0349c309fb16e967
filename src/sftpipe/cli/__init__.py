"""Command line: parse, load config, call the stage's `run`, print its figures, set the exit code.

The package holds the parser and commands (here), the printed summaries (`report.py`) and the demo
(`demo.py`), which runs every stage in turn.

Problems the user can fix (`SftpipeError`, including every config error) are printed as one clean
message with exit code 2; no traceback reaches the user for bad input.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # silence fork warnings; we batch ourselves

from sftpipe.errors import SftpipeError  # noqa: E402


def _config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("config", nargs=None if required else "?", help="YAML or JSON config file")
    p.add_argument("--preset", help="preset applied under the file: default, fast_test, full_training, low_memory")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.lr=1e-4 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sftpipe", description="Supervised fine-tuning pipeline for LLMs.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="read, split, template and tokenize data into a data dir")
    _config_args(p)
    p = sub.add_parser("train", help="train (full or LoRA) on a prepared data dir")
    _config_args(p)
    p.add_argument("--resume", default="auto", help="auto (newest complete checkpoint), never, or a checkpoint dir")
    p.add_argument("--resume-force", action="store_true",
                   help="resume even from a checkpoint made with other settings, data or model")
    p.add_argument("--method", choices=["lora", "qlora", "full"], help="--set train.method=METHOD")
    p.add_argument("--dry-run", action="store_true",
                   help="validate, estimate memory, build the model and run one step on the largest micro-batch; "
                   "print step time and peak memory next to the estimate; write nothing (exit 1 if it does not fit)")
    p.add_argument("--gpu-memory", help="with --dry-run: memory per device to fit, e.g. 24GiB (default: the GPU's)")
    p = sub.add_parser("hpo", help="hyperparameter search (Optuna): each trial is a training run; best.yaml, report",
                       description="Search the config's hpo.search_space with Optuna. Several processes given the "
                       "same storage and study name (on any machines) share one study; run the same command again "
                       "after a crash to continue it. The flags are shortcuts for --set and override it.")
    _config_args(p)
    p.add_argument("--n-trials", type=int, help="--set hpo.n_trials=N: finished trials the study ends with")
    p.add_argument("--storage", help="--set hpo.storage=URL (SQLAlchemy URL or journal:PATH)")
    p.add_argument("--study-name", help="--set hpo.study_name=NAME")
    p.add_argument("--retrain-best", action="store_true",
                   help="after the search, train best.yaml into <hpo.output_dir>/best")
    p = sub.add_parser("eval", help="loss/accuracy on a prepared split, generation metrics, executed tests (pass@k)")
    _config_args(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", help="run dir, adapter dir or model dir (default: train.output_dir)")
    which.add_argument("--compare", nargs=2, metavar=("BASE", "RUN"),
                       help="evaluate two models side by side on the same prompts (e.g. the base model and a run)")
    which.add_argument("--completions", metavar="FILE",
                       help="score existing completions (JSONL: {name|task_id, completion} or {name, completions: "
                       "[...]}) against the problems of eval.generation.source, no model")
    p.add_argument("--out", help="output dir (default: <run dir>/eval; with --compare: <train.output_dir>/eval_compare; "
                   "with --completions: FILE without its suffix + .eval)")
    p = sub.add_parser("merge", help="merge a LoRA adapter into its base model (checked by logits)")
    _config_args(p)
    p.add_argument("--adapter", help="run dir or adapter dir (default: train.output_dir)")
    p.add_argument("--out", help="output dir (default: export.output_dir)")
    p = sub.add_parser("infer", help="generate with a trained model using its training template",
                       description="Generate as eval does: the model's template and stop tokens, and the decoding "
                       "settings of the config's eval section (built-in defaults without a config). The decoding "
                       "flags are shortcuts for --set and override it.")
    _config_args(p, required=False)
    p.add_argument("--model", required=True, help="run dir, adapter dir, merged or base model dir")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--prompt", help="one user prompt")
    group.add_argument("--prompts-file", type=Path, help='JSONL of {"prompt": ...} or {"messages": [...]}')
    p.add_argument("--system", help="system message for --prompt")
    p.add_argument("--output", type=Path, help="write JSONL results here (default: print)")
    p.add_argument("--max-new-tokens", type=int, help="--set eval.max_new_tokens=N (default 256)")
    p.add_argument("--temperature", type=float, help="--set eval.generation.temperature=T (default 0: greedy)")
    p.add_argument("--top-p", type=float, help="--set eval.generation.top_p=P (default 1.0)")
    p.add_argument("--batch-size", type=int, help="--set eval.generation.batch_size=N (default 8)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="--set train.device=DEVICE (default auto)")
    p = sub.add_parser("chat", help="talk with a trained model in the terminal, with its training template",
                       description="A multi-turn chat that generates as infer does: the model's template and stop "
                       "tokens, the decoding settings of the config's eval section (built-in defaults without a "
                       "config); replies are printed as they are generated. Commands: /system TEXT, /reset, "
                       "/save FILE, /quit.")
    _config_args(p, required=False)
    p.add_argument("--model", required=True, help="run dir, checkpoint, adapter dir, merged or base model dir")
    p.add_argument("--max-new-tokens", type=int, help="--set eval.max_new_tokens=N (default 256)")
    p.add_argument("--temperature", type=float, help="--set eval.generation.temperature=T (default 0: greedy)")
    p.add_argument("--top-p", type=float, help="--set eval.generation.top_p=P (default 1.0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="--set train.device=DEVICE (default auto)")
    p.set_defaults(batch_size=None)  # one conversation: infer's --batch-size has nothing to batch
    p = sub.add_parser("estimate", help="memory per device of a training step, before loading weights; the "
                       "largest micro-batch that fits")
    _config_args(p)
    p.add_argument("--gpus", type=int, default=1, help="devices the run is launched on (default 1)")
    p.add_argument("--gpu-memory", help="memory per device, e.g. 24GiB or 48GB (default: the first GPU's)")
    p.add_argument("--sharding", choices=["auto", "none", "fsdp"], default="auto",
                   help="FSDP full sharding of weights, gradients and optimizer states (auto: as the config's "
                   "train.sharding says)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON (bytes)")
    p = sub.add_parser("report", help="write RUN/report.html: curves, data summary, config changes, eval figures",
                       description="Write a run dir's report.html from what is on disk (train writes it at the end; "
                       "this also works on a run that was killed, and after eval adds its figures).")
    p.add_argument("run", type=Path, help="the run dir (train.output_dir)")
    p = sub.add_parser("validate", help="check a config, its files, masks, disk and device without training")
    _config_args(p)
    sub.add_parser("doctor", help="check the environment: torch, CUDA, GPUs, bf16, optional packages")
    p = sub.add_parser("show-config", help="print the resolved config (defaults < preset < file < --set)")
    _config_args(p, required=False)
    p.add_argument("--help-fields", action="store_true",
                   help="print every config field (dotted key, type, default, help) instead, by section")
    p = sub.add_parser("init-tiny", help="build the embedded tiny Llama and tokenizer (no download)")
    p.add_argument("--out", type=Path, default=Path("tiny"),
                   help="output dir (default: tiny, the default model.name_or_path)")
    p.add_argument("--size", default="small", choices=["small", "micro"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corpus", type=Path, action="append",
                   help="corpus files (.jsonl .json .txt .md .csv .hs) or dirs (default: the shipped examples)")
    p = sub.add_parser("demo", help="init-tiny -> prepare -> train LoRA -> eval -> merge -> infer, on CPU")
    p.add_argument("--out", type=Path, default=Path("demo_out"))
    p.add_argument("--quick", action="store_true", help="one epoch and short generations: checks every stage runs")
    return parser


def quiet_libraries() -> None:
    """Our own progress bar and figures are the output; hide the libraries' load/save bars and notices."""
    import warnings

    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def log_to_stderr() -> None:
    """sftpipe's own log lines (e.g. a speed option falling back) go to stderr as plain messages."""
    import logging

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("sftpipe")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "show-config":
        quiet_libraries()
        log_to_stderr()
    try:
        return COMMANDS[args.command](args)
    except SftpipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _load(args: argparse.Namespace):
    from sftpipe.config import load_config

    return load_config(args.config, preset=args.preset, overrides=args.overrides)


def cmd_prepare(args: argparse.Namespace) -> int:
    from sftpipe.data.prepare import run
    from sftpipe.cli.report import print_prepare

    print_prepare(run(_load(args)))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from sftpipe.cli.report import print_train
    from sftpipe.stages import train

    if args.method:  # a shortcut for --set, applied after every --set
        args.overrides = [*args.overrides, f"train.method={args.method}"]
    if args.dry_run:
        from sftpipe.cli.estimate import print_dry_run
        from sftpipe.preflight.dry_run import run as dry_run
        from sftpipe.preflight.estimate import parse_bytes

        result = dry_run(_load(args), gpu_memory=parse_bytes(args.gpu_memory) if args.gpu_memory else None)
        print_dry_run(result)
        return 0 if result.ok else 1
    if args.gpu_memory:
        raise SftpipeError("train --gpu-memory goes with --dry-run (a training run uses the memory it has)")
    result = train(_load(args), resume=args.resume, resume_force=args.resume_force)
    if result.main_process:  # one summary for a multi-process launch (torchrun, accelerate launch)
        print_train(result)
    return 0


def cmd_hpo(args: argparse.Namespace) -> int:
    from sftpipe.cli.report import print_hpo, print_train
    from sftpipe.config import load_config
    from sftpipe.hpo import run

    flags = {"hpo.n_trials": args.n_trials, "hpo.storage": args.storage, "hpo.study_name": args.study_name}
    shortcuts = [f"{key}={value}" for key, value in flags.items() if value is not None]
    result = run(load_config(args.config, preset=args.preset, overrides=[*args.overrides, *shortcuts]),
                 retrain_best=args.retrain_best)
    print_hpo(result)
    if result.retrained is not None:
        print_train(result.retrained)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from sftpipe.cli.report import print_compare, print_eval
    from sftpipe.evaluate.run import compare
    from sftpipe.stages import evaluate, evaluated_run

    cfg = _load(args)
    if args.completions:
        from sftpipe.evaluate import completions

        print_eval(completions.run(cfg, args.completions, args.out))
    elif args.compare:
        print_compare(compare(cfg, args.compare[0], args.compare[1], args.out))
    else:
        model = args.model or cfg.train.output_dir
        result = evaluate(cfg, model, args.out)
        print_eval(result)
        run = evaluated_run(model, result)
        if run is not None:
            print(f"  run report: {run.report} (and the model card {run.final} gained the eval figures)")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from sftpipe.export.merge import run

    cfg = _load(args)
    result = run(cfg, args.adapter or cfg.train.output_dir, args.out)
    print(f"merged model: {result.output_dir} ({result.num_params:,} params, "
          f"max |merged - adapter| logit diff {result.max_abs_logit_diff:.2e})")
    return 0


def _infer_shortcuts(args: argparse.Namespace) -> list[str]:
    """infer's (and chat's) decoding flags as --set overrides; they come after every --set, so a flag wins."""
    flags = {"eval.max_new_tokens": args.max_new_tokens, "eval.generation.temperature": args.temperature,
             "eval.generation.top_p": args.top_p, "eval.generation.batch_size": args.batch_size,
             "train.device": args.device}
    return [f"{key}={value}" for key, value in flags.items() if value is not None]


def cmd_infer(args: argparse.Namespace) -> int:
    import json

    from sftpipe.config import load_config
    from sftpipe.infer.generate import read_prompts, run

    cfg = load_config(args.config, preset=args.preset, overrides=[*args.overrides, *_infer_shortcuts(args)])
    if args.prompt is not None:
        system = [{"role": "system", "content": args.system}] if args.system else []
        prompts = [system + [{"role": "user", "content": args.prompt}]]
    else:
        prompts = read_prompts(args.prompts_file)
    samples = run(cfg, args.model, prompts)
    if args.output:
        with args.output.open("w", encoding="utf-8") as fh:
            for messages, generations in zip(prompts, samples):
                texts = [g.text for g in generations]  # several with eval.generation.num_samples > 1
                record = {"messages": messages, "completion": texts[0]} if len(texts) == 1 else \
                    {"messages": messages, "completions": texts}
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        print(f"wrote {sum(len(s) for s in samples)} completions to {args.output}")
    else:
        for generations in samples:
            for generation in generations:
                print(generation.text)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from sftpipe.config import load_config
    from sftpipe.infer.chat import run

    run(load_config(args.config, preset=args.preset, overrides=[*args.overrides, *_infer_shortcuts(args)]), args.model)
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    import json

    from sftpipe.cli.estimate import print_estimate
    from sftpipe.preflight.estimate import parse_bytes, run

    budget = parse_bytes(args.gpu_memory) if args.gpu_memory else None
    sharded = None if args.sharding == "auto" else args.sharding == "fsdp"
    result = run(_load(args), gpus=args.gpus, gpu_memory=budget, sharded=sharded)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print_estimate(result)
    return 0 if result.fits is not False else 1


def cmd_report(args: argparse.Namespace) -> int:
    from sftpipe.contracts.run_dir import RunDir
    from sftpipe.train.run_report import write_run_report

    print(f"run report: {write_run_report(RunDir(args.run))}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from sftpipe.preflight.validate import run
    from sftpipe.cli.report import print_checks

    result = run(_load(args))
    print(f"validate {args.config}")
    print_checks(result.checks)
    if result.sample is not None:
        print(f"\nsample {result.sample_location}, trained text between [[ and ]]:\n{result.sample}")
    if result.failed:
        raise SftpipeError(f"{len(result.failed)} check(s) failed: " + ", ".join(c.name for c in result.failed))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from sftpipe.preflight.doctor import run
    from sftpipe.cli.report import print_checks

    checks = run()
    print_checks(checks)
    failed = [c.name for c in checks if c.status == "fail"]
    if failed:
        raise SftpipeError(f"required parts missing: {', '.join(failed)}")
    return 0


def cmd_show_config(args: argparse.Namespace) -> int:
    from sftpipe.config import dump_config, load_config
    from sftpipe.config.fields import fields_help

    if args.help_fields:
        if args.config or args.preset or args.overrides:
            raise SftpipeError("show-config --help-fields describes the fields of every config; give it no "
                               "CONFIG, --preset or --set (without --help-fields they print the resolved config)")
        print(fields_help(), end="")
        return 0
    print(dump_config(load_config(args.config, preset=args.preset, overrides=args.overrides)), end="")
    return 0


def cmd_init_tiny(args: argparse.Namespace) -> int:
    from sftpipe.models.tiny import init_tiny

    result = init_tiny(args.out, size=args.size, seed=args.seed, corpus=args.corpus)
    print(f"tiny model: {result.out_dir} ({result.num_params:,} params, vocab {result.vocab_size})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from sftpipe.cli.demo import run

    run(args.out, quick=args.quick)
    return 0


COMMANDS = {
    "prepare": cmd_prepare,
    "train": cmd_train,
    "hpo": cmd_hpo,
    "eval": cmd_eval,
    "merge": cmd_merge,
    "infer": cmd_infer,
    "chat": cmd_chat,
    "estimate": cmd_estimate,
    "report": cmd_report,
    "validate": cmd_validate,
    "doctor": cmd_doctor,
    "show-config": cmd_show_config,
    "init-tiny": cmd_init_tiny,
    "demo": cmd_demo,
}

