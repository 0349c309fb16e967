"""The `hpo` config section: a search space over dotted config keys, the objective, sampler, pruner and storage.

Its keys are checked against the rest of the schema by `config.search_space` once the whole config is built
(a section model cannot see its siblings).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_serializer, model_validator

from sftpipe.config.base import Section
from sftpipe.redact import redact_url

Choice = bool | int | float | str | None  # what Optuna stores for a categorical parameter
class FloatParam(Section):
    """A float drawn between low and high (both included), on a log scale when `log`."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = Field(False, description="Sample on a log scale (learning rates); low must be > 0.")
    step: float | None = Field(None, gt=0, description="Discretisation step; not with log.")

    @model_validator(mode="after")
    def _range(self) -> "FloatParam":
        _check_range(self.low, self.high, self.log, self.step)
        return self


class IntParam(Section):
    """An integer drawn between low and high (both included)."""

    type: Literal["int"]
    low: int
    high: int
    log: bool = Field(False, description="Sample on a log scale; low must be > 0.")
    step: int = Field(1, gt=0, description="Spacing of the values; not with log (except 1).")

    @model_validator(mode="after")
    def _range(self) -> "IntParam":
        _check_range(self.low, self.high, self.log, None if self.step == 1 else self.step)
        return self


class CategoricalParam(Section):
    """One of a list of values (numbers, strings, booleans or null)."""

    type: Literal["categorical"]
    choices: list[Choice] = Field(min_length=1)


def _check_range(low: float, high: float, log: bool, step: float | None) -> None:
    if low > high:
        raise ValueError(f"low ({low}) is above high ({high})")
    if log and low <= 0:
        raise ValueError(f"log: true needs low > 0, got {low}")
    if log and step is not None:
        raise ValueError("step and log: true do not go together (Optuna samples one or the other)")


ParamSpec = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]
PARAM_TYPES = {"float": FloatParam, "int": IntParam, "categorical": CategoricalParam}  # by their `type`


class HpoConfig(Section):
    """Hyperparameter search (`sftpipe hpo`): each trial is a normal training run with sampled values."""

    search_space: dict[str, ParamSpec] = Field(
        default_factory=dict, description="Dotted config key -> distribution, e.g. train.lr: {type: float, low: "
        "1e-5, high: 1e-3, log: true}; lora.r: {type: categorical, choices: [8, 16, 32]}; int: {type: int, low, "
        "high, step}. Keys must be config fields outside hpo.")
    objective: str = Field(
        "val_loss", description="Figure the study optimises, taken at the step final/ holds: val_loss (or another "
        "val_* figure), or an in-training eval figure such as gen_pass@1 (needs eval.during_training.every).")
    direction: Literal["minimize", "maximize"] = Field("minimize", description="Whether lower or higher objective "
                                                        "is better.")
    n_trials: int | None = Field(
        20, ge=1, description="Stop once this many trials of the study have finished (complete or pruned), counted "
        "over every worker and every restart; null: no limit (use timeout_s).")
    timeout_s: float | None = Field(None, gt=0, description="Stop starting trials after this many seconds of this "
                                    "worker; null: no limit.")
    sampler: Literal["tpe", "random", "grid"] = Field(
        "tpe", description="tpe: Bayesian (Tree-structured Parzen Estimator); random; grid: every combination of "
        "categorical and int parameters (floats need a step).")
    seed: int = Field(0, description="Seed of the sampler; a worker adds the trials already in the study, so "
                      "one that joins or restarts a study does not repeat the draws before it.")
    pruner: Literal["median", "hyperband", "successive_halving", "none"] = Field(
        "median", description="Stops trials whose objective at a validation (every train.eval_every steps) is "
        "worse than the others' at the same step. median: worse than the median of earlier trials; hyperband / "
        "successive_halving: Optuna's bandit pruners; none: every trial runs to the end.")
    pruner_startup_trials: int = Field(2, ge=0, description="Trials that finish before the median pruner prunes.")
    pruner_warmup_steps: int = Field(0, ge=0, description="Optimizer steps of each trial before it may be pruned.")
    study_name: str = Field("sftpipe", min_length=1, description="Study name in the storage; workers that share a "
                            "storage and a study name cooperate on one study.")
    storage: str | None = Field(
        None, description="Where the study lives. null: sqlite:///<output_dir>/study.db. Any SQLAlchemy URL "
        "(postgresql+psycopg://user:pass@host/db) for workers on many machines, or journal:<path> for Optuna's "
        "journal file (a shared file system, no database server).")

    output_dir: str = Field("runs/hpo", description="Study dir: trials/trial-NNNN run dirs, best.yaml, trials.csv, "
                            "report.html, best/ (--retrain-best).")
    heartbeat_s: int = Field(
        60, gt=0, description="A running trial records a heartbeat this often (database storages); one silent for "
        "2x this long is taken as interrupted (killed worker, lost machine) and marked failed.")
    retry_interrupted: int = Field(
        1, ge=0, description="Times an interrupted trial is run again with the same values, resuming from its "
        "newest complete checkpoint (database storages).")

    @field_serializer("storage", when_used="json")
    def _storage_without_password(self, url: str | None) -> str | None:
        """Saved configs (run dirs, best.yaml) and show-config never hold the database password."""
        return redact_url(url) if url else url

    @model_validator(mode="after")
    def _stops(self) -> "HpoConfig":
        if self.n_trials is None and self.timeout_s is None:
            raise ValueError("n_trials and timeout_s are both null, so the search would never stop; set one")
        return self
