"""Failpoints: named places where a test can make the process die by SIGKILL, exactly there.

Crash-safety claims ("a kill at any moment leaves a resumable run dir") are only worth what the tests
that kill the process at every interesting moment show. Random-time kills rarely land inside the short
windows that matter (between a checkpoint's rename and its COMPLETE marker, say), so those windows are
named here and a test picks one with the environment variable

    SFTPIPE_FAILPOINT=<name>@<n>     e.g. SFTPIPE_FAILPOINT=checkpoint.renamed@2

which kills the process with SIGKILL (no cleanup, no flushing, like `kill -9` or the OOM killer) the n-th
time it passes that point. Unset (always, outside tests), a failpoint is one dictionary lookup. The only
action is killing this process, so the variable gives nothing to someone who can already set our env.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "SFTPIPE_FAILPOINT"

# Every failpoint, in the order a training run passes them; tests iterate over this list.
POINTS = (
    "train.step",  # top of an optimizer step, before its micro-batches
    "train.optimizer_step",  # after optimizer.step(), before the trainer state counts the step
    "train.logged",  # after the step's metrics are appended to metrics.jsonl
    "checkpoint.begin",  # temporary dir created, nothing written
    "checkpoint.weights",  # weights written
    "checkpoint.optimizer",  # optimizer and scheduler state written
    "checkpoint.state",  # trainer state, RNG, config and fingerprint written
    "checkpoint.fsynced",  # everything fsynced, not yet renamed
    "checkpoint.renamed",  # renamed to checkpoint-<step>, no COMPLETE marker yet
    "checkpoint.complete",  # COMPLETE written, retention not applied
    "checkpoint.retention",  # an old checkpoint unmarked, not yet deleted
    "final.written",  # final/ written under its temporary name, not renamed
)

_hits: Counter[str] = Counter()


def failpoint(name: str) -> None:
    """Die by SIGKILL here if SFTPIPE_FAILPOINT names this point and hit count."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, nth = spec.partition("@")
    if target != name:
        return
    _hits[name] += 1
    if _hits[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
