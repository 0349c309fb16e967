"""Run the real `sftpipe` CLI in processes forked from a warm fork server, so tests can start many of them.

Starting `python -m sftpipe.cli` costs seconds of imports (torch, transformers, peft, datasets) before any
work; a test that kills and restarts training twenty times would spend minutes importing. A
`multiprocessing` fork server imports this module (and with it sftpipe and its libraries) once, without
running anything; each `start_cli` forks a fresh child from it that calls `sftpipe.cli.main(argv)`, a
separate process with its own pid that a test can SIGKILL like any `sftpipe train`. The one difference from
`sftpipe train` started from a shell is that the imports happened before the fork.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from pathlib import Path

import sftpipe.cli  # noqa: F401  (imported here so the fork server holds it warm)
import sftpipe.data.prepare  # noqa: F401
import sftpipe.train.loop  # noqa: F401

_CTX = None


def context():
    """The fork-server context, preloading this module (created on first use)."""
    global _CTX
    if _CTX is None:
        _CTX = multiprocessing.get_context("forkserver")
        _CTX.set_forkserver_preload([__name__])
    return _CTX


def start_cli(argv: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None):
    """Start `sftpipe <argv>` in a forked child; its stdout and stderr go to `log`. Returns the Process."""
    process = context().Process(target=_child, args=([str(a) for a in argv], str(cwd), str(log), env or {}))
    process.start()
    return process


def _child(argv: list[str], cwd: str, log: str, env: dict[str, str]) -> None:
    import torch

    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(env)
    os.chdir(cwd)
    torch.set_num_threads(1)  # as the test processes; see tests/conftest.py
    # tqdm's default lock is a multiprocessing semaphore registered with the parent's resource tracker; a
    # SIGKILLed child never unregisters it, so the test run would end with "leaked semaphore" warnings.
    import threading

    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())
    from sftpipe.cli import main

    try:
        code = main(argv)
    except BaseException:  # a traceback reaching the user: print it as Python would, exit 1
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
