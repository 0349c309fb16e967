"""The run dir `train` writes: the resolved config, run_manifest.json, checkpoints/, final/, logs/, eval/.

A finished run dir (run_manifest.json and final/) stands for its final model wherever a model is asked for:
`eval`, `merge` and `infer` take the run dir as they take final/ itself. `EvalFigures` are the headline
figures of an eval dir's metrics.json (`EvalResult.as_dict()`), as the run report and the model card show them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from sftpipe.contracts.files import FORMAT_VERSION, Record, read_json, read_record, write_record
from sftpipe.errors import SftpipeError

RUN_MANIFEST = "run_manifest.json"
FINAL = "final"
CHECKPOINTS = "checkpoints"
# What `eval` writes into an eval dir; the figures other stages show of it are read here (`read_eval_figures`).
EVAL_METRICS = "metrics.json"
EVAL_REPORT = "report.html"


class AutoBatch(Record):
    """The batch `micro_batch_size: auto` / `tokens_per_batch: auto` chose; a resumed run reuses it."""

    micro_batch_size: int
    tokens_per_batch: int
    grad_accum: int
    gradient_checkpointing: bool
    budget_bytes: int  # memory per device it was fitted to
    estimate_bytes: int  # the estimated peak (reserved) of the chosen micro-batch
    probed: bool  # confirmed by a training step on CUDA (halved on out-of-memory)


class FinalSource(Record):
    """Which step's weights final/ holds, and why."""

    step: int
    selected_by: Literal["last", "val_loss"]  # the last step, or the checkpoint with the best such figure
    value: float | None = None  # that figure at `step`, when selected by one


class MixedDataDir(Record):
    """One data dir of a train-time mix (`train.data`): where it came from and its share of every epoch."""

    name: str
    dir: str
    weight: float
    template: str  # the data.template it was prepared with (baked into its tokens)
    template_sha256: str
    data_manifest_sha256: str
    available_examples: int  # in its train split
    examples: int  # per epoch, repeats counted
    tokens: int  # per epoch
    trained_tokens: int  # per epoch
    epochs: float  # examples / available_examples: above 1 repeated, below 1 subsampled
    target_share: float  # weight / sum of weights
    achieved_share: float  # of the epoch, in the mix unit


class TrainDataMix(Record):
    """How a run mixed its data dirs: the same every epoch (a function of the seed, dirs, weights and unit)."""

    unit: Literal["samples", "tokens", "trained_tokens"]
    seed: int
    dirs: list[MixedDataDir]


class RunManifest(Record):
    """run_manifest.json: what made the run (versions, git SHA, seed) and from what (model, data, tokenizer)."""

    format_version: int = FORMAT_VERSION
    kind: Literal["sftpipe-run"] = "sftpipe-run"
    created: str  # ISO 8601, UTC
    versions: dict[str, str]  # sftpipe, python and the libraries that decide the result
    git_sha: str | None  # of the sftpipe checkout, when it runs from one
    seed: int
    method: str
    base_model: str
    tokenizer_sha256: str
    template_sha256: str
    data_dir: str
    data_manifest_sha256: str  # `DataManifest.sha256` of the data dir's manifest
    world_size: int
    batch: AutoBatch | None = None  # what auto batch sizes chose; absent when the config set them
    device: str
    host: str
    final: FinalSource | None = None  # written when final/ is; absent in manifests of older runs and unfinished ones
    data_mix: TrainDataMix | None = None  # runs on train.data (data_dir is then unused); absent in older manifests
    trackers: dict[str, str] | None = None  # wandb, wandb_project, mlflow: run ids of the last start (for eval)


@dataclass(frozen=True)
class RunDir:
    """Where everything of one training run lives, under `path` (train.output_dir)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))  # a str from the config works too

    @property
    def config(self) -> Path:
        """The resolved config (secrets redacted)."""
        return self.path / "config.yaml"

    @property
    def manifest_path(self) -> Path:
        return self.path / RUN_MANIFEST

    @property
    def checkpoints(self) -> Path:
        """The dir of checkpoint-<step>/ dirs (see `contracts.checkpoint`)."""
        return self.path / CHECKPOINTS

    @property
    def final(self) -> Path:
        """The trained model (adapter or full) with its tokenizer, generation config and sftpipe.json."""
        return self.path / FINAL

    @property
    def logs(self) -> Path:
        """metrics.jsonl and the TensorBoard events."""
        return self.path / "logs"

    @property
    def metrics(self) -> Path:
        """One JSON object per logged step."""
        return self.logs / "metrics.jsonl"

    @property
    def report(self) -> Path:
        """report.html: the run's curves, data summary, config changes and eval figures (`sftpipe report`)."""
        return self.path / "report.html"

    @property
    def eval(self) -> Path:
        """Where `eval` writes by default for this run's model."""
        return self.path / "eval"

    def eval_of(self, model_path: str | Path) -> Path:
        """Where `eval` writes by default for `model_path`, a model of this run: eval/ for its final model,
        eval/<checkpoint-N>/ for a checkpoint (so evaluating one never overwrites the final model's figures)."""
        p = Path(model_path)
        if p.parent == self.checkpoints:
            return self.eval / p.name
        return self.eval

    @property
    def eval_compare(self) -> Path:
        """Where `eval --compare` writes by default."""
        return self.path / "eval_compare"

    @staticmethod
    def is_run_dir(path: Path) -> bool:
        """Whether `path` is a finished run dir: its manifest and its final model are there."""
        run = RunDir(path)
        return run.final.is_dir() and run.manifest_path.is_file()

    @classmethod
    def of_model(cls, path: str | Path) -> RunDir | None:
        """The run dir whose model `path` names (the run dir itself, its final/ or a checkpoint), else None."""
        p = Path(path)
        if cls.is_run_dir(p):
            return cls(p)
        if p.name == FINAL and p.is_dir():
            return cls(p.parent)
        if p.parent.name == CHECKPOINTS and (p.parent.parent / RUN_MANIFEST).is_file():
            return cls(p.parent.parent)  # one of its checkpoints, each usable as a model (see eval_of)
        return None

    @property
    def manifest(self) -> RunManifest:
        """The run manifest.

        Raises:
            SftpipeError: it is missing, unreadable or of a newer format_version.
        """
        return read_record(self.manifest_path, RunManifest, "a run manifest", "train the run again")

    def write_manifest(self, manifest: RunManifest) -> None:
        write_record(self.manifest_path, manifest)


class EvalFigures(BaseModel):
    """Loss figures on the evaluated split and, when answers were executed, pass@k."""

    model_config = ConfigDict(frozen=True)

    model: str
    split: str
    loss: float | None = None
    perplexity: float | None = None
    token_accuracy: float | None = None
    pass_at_k: dict[str, float] = {}
    problems: int = 0  # problems with tests whose answers were executed
    samples: int = 0
    code_skipped: str | None = None  # why answers were not executed, when they were not


def eval_report(eval_dir: Path) -> Path:
    """The eval dir's report.html."""
    return eval_dir / EVAL_REPORT


def read_eval_figures(eval_dir: Path) -> EvalFigures | None:
    """The figures of `eval_dir`'s metrics.json; None when there is none (eval has not run).

    Raises:
        SftpipeError: metrics.json is unreadable or not what `eval` writes for one model.
    """
    path = eval_dir / EVAL_METRICS
    if not path.is_file():
        return None
    values = read_json(path)
    if not isinstance(values, dict) or "model" not in values or "split" not in values:
        raise SftpipeError(f"{path}: not the metrics.json of `sftpipe eval` for one model (no model/split); "
                           "run `sftpipe eval` again")
    code = values.get("code") or {}
    return EvalFigures(model=str(values["model"]), split=str(values["split"]), loss=values.get("loss"),
                       perplexity=values.get("perplexity"), token_accuracy=values.get("token_accuracy"),
                       pass_at_k=code.get("pass_at_k") or {}, problems=code.get("problems", 0),
                       samples=code.get("samples", 0), code_skipped=code.get("skipped"))
