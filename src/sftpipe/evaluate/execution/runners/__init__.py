"""One runner per language and profile behind one interface (`base.Runner`). Adding a language is adding
a module here and a line to each profile of `RUNNERS`.

Profiles (`eval.code.profile`): `default` builds Haskell in batches with `ghc` and judges each check with
a harness of ours; `multipl-e` runs each sample as one plain program with MultiPL-E's runner, limit and
three outcomes (`single_file`).
"""

from __future__ import annotations

from sftpipe.evaluate.execution.runners.base import Job, Runner
from sftpipe.evaluate.execution.runners.haskell import HaskellRunner
from sftpipe.evaluate.execution.runners.python import PythonRunner
from sftpipe.evaluate.execution.runners.single_file import PlainPythonRunner, RunghcRunner

RUNNERS: dict[str, dict[str, type[Runner]]] = {
    "default": {"haskell": HaskellRunner, "python": PythonRunner},
    "multipl-e": {"haskell": RunghcRunner, "python": PlainPythonRunner},
}

__all__ = ["RUNNERS", "Job", "Runner"]
