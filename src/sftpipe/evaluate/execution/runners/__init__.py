"""One runner per language behind one interface (`base.Runner`). Adding a language is adding a module here
and a line to `RUNNERS`."""

from __future__ import annotations

from sftpipe.evaluate.execution.runners.base import Job, Runner
from sftpipe.evaluate.execution.runners.haskell import HaskellRunner
from sftpipe.evaluate.execution.runners.python import PythonRunner

RUNNERS: dict[str, type[Runner]] = {"haskell": HaskellRunner, "python": PythonRunner}

__all__ = ["RUNNERS", "Job", "Runner"]
