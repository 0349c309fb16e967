"""The study dir `hpo` writes: the default SQLite storage, one run dir per trial, and the study's results.

The trials themselves (values, states, intermediate figures, which run dir each trained in) live in Optuna's
storage, read and written only through Optuna; this contract names the files around it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TRIAL_PREFIX = "trial-"


@dataclass(frozen=True)
class StudyDir:
    """Where one study's files live, under `path` (hpo.output_dir)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def default_storage(self) -> str:
        """The SQLAlchemy URL of the SQLite file used when hpo.storage is null."""
        return f"sqlite:///{(self.path / 'study.db').resolve()}"

    @property
    def trials(self) -> Path:
        return self.path / "trials"

    def trial(self, number: int) -> Path:
        """The run dir of trial `number` (a normal `train` run dir)."""
        return self.trials / f"{TRIAL_PREFIX}{number:04d}"

    @property
    def best_config(self) -> Path:
        """best.yaml: the best trial's complete config, its output dir set to `best_run`."""
        return self.path / "best.yaml"

    @property
    def best_run(self) -> Path:
        """Where `sftpipe hpo --retrain-best` (or `sftpipe train best.yaml`) trains."""
        return self.path / "best"

    @property
    def trials_csv(self) -> Path:
        return self.path / "trials.csv"

    @property
    def report(self) -> Path:
        """report.html: Optuna's plots with plotly's script inlined (opens from disk, no server, no network)."""
        return self.path / "report.html"
