"""Training progress: a tqdm bar on a terminal, periodic plain lines anywhere else.

A bar redraws itself with carriage returns; written to a log file or a CI console that is one line growing
for the whole run, unreadable until it ends. Off a terminal the same figures come as whole lines instead.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from tqdm.auto import tqdm


class ProgressLines:
    """A line per `every_s` seconds (and at the first and last step): step, loss, tokens/s, elapsed, ETA.

    Offers the part of tqdm's interface the loop uses (`set_postfix`, `update`, `close`).
    """

    def __init__(self, total: int, initial: int, every_s: float, stream: TextIO,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.n, self.initial = total, initial, initial
        self.every_s = every_s
        self.stream = stream
        self.clock = clock
        self.started = self.last_line = clock()
        self.figures: dict[str, Any] = {}

    def set_postfix(self, **figures: Any) -> None:
        """The figures of the next line (the loop passes `loss` and `tok_s`)."""
        self.figures = figures

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if self.n - n == self.initial or self.n >= self.total or now - self.last_line >= self.every_s:
            self.last_line = now
            print(self.line(now), file=self.stream, flush=True)

    def line(self, now: float) -> str:
        elapsed = now - self.started
        done = self.n - self.initial  # steps of this process: a resumed run's ETA counts only its own speed
        eta = tqdm.format_interval(elapsed / done * (self.total - self.n)) if done else "?"
        parts = [f"train step {self.n}/{self.total} ({self.n / max(self.total, 1):.0%})"]
        if "loss" in self.figures:
            parts.append(f"loss {self.figures['loss']}")
        if "tok_s" in self.figures:
            parts.append(f"{self.figures['tok_s']} tokens/s")
        parts.append(f"elapsed {tqdm.format_interval(elapsed)}, ETA {eta}")
        return ", ".join(parts)

    def close(self) -> None:
        """Nothing to close: every line is complete when written."""


def progress(*, total: int, initial: int, enabled: bool, every_s: float, stream: TextIO | None = None
             ) -> tqdm | ProgressLines:
    """A progress display for `total` optimizer steps starting at `initial`, on `stream` (default stderr).

    Returns:
        a tqdm bar when `stream` is a terminal, `ProgressLines` otherwise, a disabled bar when not `enabled`.
    """
    stream = sys.stderr if stream is None else stream
    if not enabled:
        return tqdm(total=total, initial=initial, disable=True)
    if stream.isatty():
        return tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True, file=stream)
    return ProgressLines(total, initial, every_s, stream)
