"""`sftpipe estimate CONFIG`: the memory of a training step per device before any weight is loaded, and the
largest micro-batch that fits a memory budget (see `models/memory_plan.py`); sizes as the user writes them, and
the one-line summary `validate` shows.
"""

from __future__ import annotations

import re

from sftpipe.errors import SftpipeError
from sftpipe.models.memory import GiB
from sftpipe.models.memory_plan import EstimateResult
from sftpipe.models.memory_plan import estimate_config as run

__all__ = ["EstimateResult", "human", "parse_bytes", "run", "summary"]

UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
MAX_ROWS = 4096  # the search for the largest micro-batch stops here


def parse_bytes(text: str, flag: str = "--gpu-memory") -> int:
    """`48GiB`, `24GB`, `80 GiB`, `1.5TiB` or a plain number of bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in UNITS:
        raise SftpipeError(f"{flag} {text!r}: not a size; write e.g. 48GiB, 24GB or 80GiB")
    return int(float(match.group(1)) * UNITS[unit])


def human(nbytes: int) -> str:
    """GiB with two decimals, MiB below 1 GiB."""
    return f"{nbytes / GiB:.2f} GiB" if nbytes >= GiB else f"{nbytes / 2**20:.1f} MiB"


def summary(result: EstimateResult) -> str:
    """One line: the peak per device, and against the budget when there is one."""
    e = result.planned
    line = (f"~{human(e.reserved)} per device at the peak ({human(e.total)} in tensors), micro-batch {e.rows} x "
            f"{e.row_length} tokens, checkpointing {'on' if e.checkpointing else 'off'}")
    if result.budget is not None:
        line += f"; budget {human(result.budget)}: " + ("fits" if result.fits else "does NOT fit")
        rec = result.recommendation
        if rec is not None:
            line += (f"; largest that fits: micro_batch_size {rec.micro_batch_size}, grad_accum {rec.grad_accum}"
                     f", gradient_checkpointing {str(rec.gradient_checkpointing).lower()}")
        else:
            line += "; nothing fits, even one row with checkpointing"
    return line
