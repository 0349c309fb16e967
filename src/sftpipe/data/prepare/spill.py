"""Spill files: prepare's per-example side data (locations, MinHash signatures) kept on disk, not in memory.

Written once front to back, then read back by offset with `pread`: no memory map, so reading never adds the
file's pages to the process's resident set (prepare's peak RSS must not grow with the dataset).
"""

from __future__ import annotations

import os


class SpillFile:
    """A scratch file in two phases: append while writing, `finish_writing()`, then `pread` at offsets."""

    def __init__(self, path: os.PathLike):
        self.path = path
        self._fh = open(path, "wb")  # noqa: SIM115 - closed by finish_writing() or close()
        self._fd: int | None = None

    def write(self, data: bytes) -> None:
        self._fh.write(data)

    def finish_writing(self) -> None:
        self._fh.close()
        self._fd = os.open(self.path, os.O_RDONLY)

    def pread(self, size: int, offset: int) -> bytes:
        assert self._fd is not None, "finish_writing() first"
        return os.pread(self._fd, size, offset)

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
