"""The trackers of `train.report_to` (TensorBoard, W&B, MLflow): what they get once per run and at its end.

The trackers are accelerate's own tracker classes, handed to the `Accelerator`: the loop already logs every
step through `accelerator.log`, which calls them on the main process only (and `init_trackers` starts them
there only), so a multi-process launch makes one tracker run, not one per rank. What accelerate's classes do
not do is done here with each library's own API on the run object the tracker wraps: the resolved config
(secrets redacted) logged whole (accelerate's MLflow tracker drops long values with a warning), the data
summary and the run manifest as documents, and the final figures as the run's summary.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping
from typing import Any

import yaml
from accelerate.tracking import GeneralTracker, MLflowTracker, TensorBoardTracker, WandBTracker

from sftpipe.config.schema import Config, TrainConfig
from sftpipe.contracts.data_dir import DataManifest
from sftpipe.contracts.run_dir import EvalFigures, FinalSource, RunDir
from sftpipe.errors import SftpipeError
from sftpipe.models.loss import LossMetrics
from sftpipe.redact import redact

# The module each tracker needs and the pip extra that installs it.
LIBRARIES = {"tensorboard": ("tensorboard", "sftpipe"), "wandb": ("wandb", "sftpipe[wandb]"),
             "mlflow": ("mlflow", "sftpipe[mlflow]")}
TENSORBOARD_DIR = "tensorboard"  # under the run's logs/
# Where the documents logged once go in an MLflow run's artifacts.
MLFLOW_ARTIFACTS = {"config": "sftpipe/config.json", "data": "sftpipe/data_summary.json",
                    "run": "sftpipe/run.json", "final": "sftpipe/final.json"}


def check_tracker_libraries(report_to: list[str]) -> None:
    """Fail before training when a tracker of `train.report_to` cannot be imported, naming the extra to install.

    Raises:
        SftpipeError: one or more libraries are missing (all of them are named).
    """
    missing = [name for name in report_to if importlib.util.find_spec(LIBRARIES[name][0]) is None]
    if missing:
        installs = " ".join(f"'{LIBRARIES[name][1]}'" for name in missing)
        raise SftpipeError(f"train.report_to: {report_to} names {', '.join(missing)}, which is not installed: "
                           f"pip install {installs}, or leave it out of train.report_to")


def build_trackers(tc: TrainConfig, run_dir: RunDir) -> list[GeneralTracker]:
    """accelerate trackers for `tc.report_to`, not started yet (`accelerator.init_trackers` starts them).

    TensorBoard writes under logs/tensorboard; W&B's local files (all of the run with WANDB_MODE=offline) go
    under logs/wandb; MLflow logs where MLFLOW_TRACKING_URI says (MLflow's default: ./mlflow.db).
    """
    name = tc.run_name or run_dir.path.resolve().name
    trackers: list[GeneralTracker] = []
    for kind in tc.report_to:
        if kind == "tensorboard":
            trackers.append(TensorBoardTracker(TENSORBOARD_DIR, run_dir.logs))
        elif kind == "wandb":
            run_dir.logs.mkdir(parents=True, exist_ok=True)  # wandb.init refuses a dir that does not exist
            trackers.append(WandBTracker(tc.project, name=name, tags=list(tc.tags), dir=str(run_dir.logs)))
        else:
            trackers.append(MLflowTracker(experiment_name=tc.project, run_name=name,
                                          tags={tag: "true" for tag in tc.tags}))
    return trackers


def start_trackers(accelerator: Any, tc: TrainConfig) -> None:
    """Start the trackers (on the main process only); a library that cannot start is an error that says why.

    Raises:
        SftpipeError: a tracker failed to start (W&B not logged in, MLflow's store unreachable, ...).
    """
    try:
        accelerator.init_trackers(tc.project)
    except Exception as exc:  # noqa: BLE001 - each library raises its own errors
        raise SftpipeError(f"train.report_to {tc.report_to}: a tracker could not start ({type(exc).__name__}: "
                           f"{exc}). W&B needs `wandb login` or WANDB_API_KEY (or WANDB_MODE=offline); MLflow a "
                           "reachable MLFLOW_TRACKING_URI; or leave the tracker out of train.report_to") from None


def data_summary(manifest: DataManifest) -> dict[str, Any]:
    """The data card's figures: records, splits, sources, rejections by reason, and the hashes."""
    return {
        "records_read": manifest.records_read,
        "max_length": manifest.max_length,
        "template": manifest.template.name,
        "splits": {name: {"examples": s.examples, "tokens": s.tokens, "trained_tokens": s.trained_tokens,
                          "truncated": s.truncated} for name, s in manifest.splits.items()},
        "sources": {name: {"read": c.read, "kept": c.kept, "rejected": c.rejected}
                    for name, c in manifest.sources.items()},
        "rejected": dict(manifest.rejected),
        "tokenizer_sha256": manifest.tokenizer.sha256,
        "template_sha256": manifest.template.sha256,
        "data_manifest_sha256": manifest.sha256,
    }


def log_run_start(trackers: list[GeneralTracker], cfg: Config, data: DataManifest, run_dir: RunDir) -> None:
    """Log the resolved config (secrets redacted), the data summary and the run manifest to every tracker, and
    record the W&B and MLflow run ids in the run manifest (`log_eval` adds eval figures to those runs)."""
    run = run_dir.manifest
    documents = {"config": redact(cfg.model_dump(mode="json")), "data": data_summary(data),
                 "run": run.model_dump(mode="json")}
    ids = {}
    for tracker in trackers:
        if isinstance(tracker, WandBTracker):
            ids["wandb"], ids["wandb_project"] = tracker.run.id, tracker.run.project
        elif isinstance(tracker, MLflowTracker):
            ids["mlflow"] = tracker.active_run.info.run_id
    if ids:
        run_dir.write_manifest(run.model_copy(update={"trackers": ids}))
    for tracker in trackers:
        if isinstance(tracker, TensorBoardTracker):
            for key, document in documents.items():
                tracker.writer.add_text(key, _markdown_yaml(document))
            tracker.writer.flush()
        elif isinstance(tracker, WandBTracker):
            tracker.run.config.update(documents, allow_val_change=True)
        elif isinstance(tracker, MLflowTracker):
            _mlflow_documents(documents)


def final_figures(final: FinalSource, last_step: int, last_val: LossMetrics | None) -> dict[str, float | int | str]:
    """What a tracker's run summary says at the end: the step final/ holds and why, and the last validation."""
    figures: dict[str, float | int | str] = {"step": final.step, "selected_by": final.selected_by,
                                             "last_step": last_step}
    if final.value is not None:
        figures["selected_value"] = final.value
    if last_val is not None:
        figures.update({f"last_{k}": v for k, v in last_val.as_dict("val_").items()})
    return figures


def log_run_end(trackers: list[GeneralTracker], figures: Mapping[str, float | int | str]) -> None:
    """Log the run's final figures (which step final/ holds and why, the last validation) once, as its summary."""
    numbers = {k: v for k, v in figures.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for tracker in trackers:
        if isinstance(tracker, TensorBoardTracker):
            tracker.writer.add_text("final", _markdown_yaml(dict(figures)))
            tracker.writer.flush()
        elif isinstance(tracker, WandBTracker):
            tracker.run.summary.update({f"final/{k}": v for k, v in figures.items()})
        elif isinstance(tracker, MLflowTracker):
            import mlflow

            mlflow.log_metrics({f"final_{k}": float(v) for k, v in numbers.items()})
            mlflow.log_dict(dict(figures), MLFLOW_ARTIFACTS["final"])


def _mlflow_documents(documents: dict[str, dict[str, Any]]) -> None:
    """The config as MLflow params (dotted keys; a value longer than MLflow allows is only in the artifact) and
    every document whole as a JSON artifact."""
    import mlflow
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

    params = [(k, v) for k, v in _flatten(documents["config"]).items() if len(str(v)) <= MAX_PARAM_VAL_LENGTH]
    for i in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
        mlflow.log_params(dict(params[i:i + MAX_PARAMS_TAGS_PER_BATCH]))
    for key, document in documents.items():
        mlflow.log_dict(document, MLFLOW_ARTIFACTS[key])


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict of dotted keys; lists stay values (as JSON)."""
    if not isinstance(value, dict):
        return {prefix: json.dumps(value) if isinstance(value, list) else value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _markdown_yaml(document: dict[str, Any]) -> str:
    """YAML as a Markdown code block (TensorBoard renders text summaries as Markdown)."""
    text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    return "\n".join("    " + line for line in text.splitlines())


def eval_numbers(figures: EvalFigures) -> dict[str, float]:
    """The figures of an eval as tracker metrics: eval/loss, eval/perplexity, eval/token_accuracy, eval/pass@k."""
    numbers = {"loss": figures.loss, "perplexity": figures.perplexity, "token_accuracy": figures.token_accuracy,
               **figures.pass_at_k}
    return {f"eval/{k}": float(v) for k, v in numbers.items() if v is not None}


def log_eval(run_dir: RunDir, figures: EvalFigures) -> list[str]:
    """Add the figures of `sftpipe eval` on the run's final model to the tracker runs the training logged to, at
    the step final/ holds: TensorBoard (the run's logs/tensorboard), W&B (its run resumed by id, as the run's
    summary) and MLflow (metrics of its run id, in the store MLFLOW_TRACKING_URI names now).

    Returns:
        The trackers the figures went to.
    """
    manifest = run_dir.manifest
    numbers = eval_numbers(figures)
    step = manifest.final.step if manifest.final else 0
    ids = manifest.trackers or {}
    logged = []
    if (run_dir.logs / TENSORBOARD_DIR).is_dir():
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir.logs / TENSORBOARD_DIR))
        for key, value in numbers.items():
            writer.add_scalar(key, value, global_step=step)
        writer.add_text("eval", _markdown_yaml(figures.model_dump(mode="json")), global_step=step)
        writer.close()
        logged.append("tensorboard")
    if "wandb" in ids:
        import wandb

        run = wandb.init(id=ids["wandb"], project=ids["wandb_project"], resume="allow", dir=str(run_dir.logs))
        run.summary.update(numbers)
        run.finish()
        logged.append("wandb")
    if "mlflow" in ids:
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        for key, value in numbers.items():
            client.log_metric(ids["mlflow"], key, value, step=step)
        logged.append("mlflow")
    return logged
