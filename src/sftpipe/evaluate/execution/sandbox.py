"""Run untrusted programs (generated code, and the compiler building it) in layers of isolation.

Layers, outermost first:
1. Namespaces. `bwrap` (bubblewrap, when installed and usable): no network, new PID/IPC/UTS namespaces,
   only the system directories (`/usr`, a few `/etc` files, the interpreter prefix) mounted read-only,
   a private `/tmp`, and read-write access to nothing but the sample's own directory. Else
   `unshare -rnpf --kill-child`: no network and a PID namespace (everything the program forks dies with
   it), but the file system is the host's. Else nothing (recorded as `none` in every report).
2. Resource limits (`prlimit`, set on the program itself): address space, CPU seconds, size of any file
   written (which also caps stdout/stderr, captured to files), open files, no core dumps.
3. A wall-clock timeout, then SIGKILL to the whole process group (the program runs in its own session).
4. A clean environment (PATH, HOME and TMPDIR pointing into the sample's directory, a UTF-8 locale), a
   fresh empty working directory per sample, stdin closed after the bytes we send.

What this does NOT protect against is documented in the README ("Execution sandbox"): without bwrap the
program can read and write any file the user can; nothing here defends against kernel exploits; the
limits bound one program, not the sum of parallel workers.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from sftpipe.errors import SftpipeError

ISOLATION_MODES = ("bwrap", "unshare", "none")
# System paths a compiler or interpreter needs; nothing under /home, /root or the working tree.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives", "/etc/localtime",
             "/etc/passwd", "/etc/group", "/etc/nsswitch.conf")
TAIL_BYTES = 4096


@dataclass(frozen=True)
class Limits:
    """Limits for one program run."""

    timeout_s: float
    memory_mb: int
    file_size_mb: int = 16
    output_bytes: int = 64 * 1024
    open_files: int = 256


@dataclass
class Completed:
    """What a sandboxed program did. `stdout`/`stderr` hold at most `Limits.output_bytes` from the start;
    `stdout_tail` holds the last few KB (where harness summary lines are)."""

    returncode: int | None
    stdout: str
    stderr: str
    stdout_tail: str
    timed_out: bool
    wall_s: float
    output_truncated: bool

    @property
    def signal(self) -> int | None:
        """The signal that killed the program, when it was killed by one (also through a wrapper's 128+N)."""
        if self.returncode is None:
            return None
        if self.returncode < 0:
            return -self.returncode
        if 128 < self.returncode < 128 + 65 and self.returncode - 128 in (signal.SIGKILL, signal.SIGXCPU,
                                                                             signal.SIGXFSZ, signal.SIGSEGV,
                                                                             signal.SIGABRT, signal.SIGBUS):
            return self.returncode - 128
        return None


def _probe(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=20, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@lru_cache(maxsize=None)
def available_isolation() -> tuple[str, ...]:
    """Isolation modes that work on this machine (probed once per process)."""
    modes = []
    true = shutil.which("true") or "/bin/true"
    if shutil.which("bwrap") and _probe(["bwrap", *_bwrap_mounts(()), "--unshare-all", "--die-with-parent",
                                         "--", true]):
        modes.append("bwrap")
    if shutil.which("unshare") and _probe(["unshare", "-rnpf", "--kill-child", "--", true]):
        modes.append("unshare")
    modes.append("none")
    return tuple(modes)


def resolve_isolation(requested: str) -> str:
    """`auto` picks the strongest available mode; an explicit mode that does not work here is an error."""
    available = available_isolation()
    if requested == "auto":
        return available[0]
    if requested not in ISOLATION_MODES:
        raise SftpipeError(f"eval.code.sandbox: unknown mode {requested!r}; use auto, bwrap, unshare or none")
    if requested not in available:
        hint = "install bubblewrap (apt-get install bubblewrap)" if requested == "bwrap" else \
            "user namespaces are not available here (unshare -rn fails)"
        raise SftpipeError(f"eval.code.sandbox: {requested} is not usable on this machine ({hint}); "
                           f"available: {', '.join(available)}")
    return requested


def _bwrap_mounts(ro_paths: tuple[str, ...]) -> list[str]:
    args: list[str] = []
    for path in SYSTEM_DIRS + ETC_FILES:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.exists(path):
            args += ["--ro-bind", path, path]
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for path in ro_paths:
        if os.path.exists(path):
            args += ["--ro-bind", path, path]
    return args


def interpreter_paths() -> tuple[str, ...]:
    """Directories the running Python needs to start (its prefix and, for a venv, the base prefix)."""
    return tuple(sorted({os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)}))


class Sandbox:
    """Runs commands under one isolation mode. Thread-safe: each call gets its own directories."""

    def __init__(self, mode: str = "auto", ro_paths: tuple[str, ...] = ()):
        self.mode = resolve_isolation(mode)
        self.ro_paths = tuple(ro_paths)
        self.prlimit = shutil.which("prlimit")

    def wrap(self, argv: list[str], workdir: Path, limits: Limits, rw_paths: tuple[Path, ...] = (),
             ro_paths: tuple[Path, ...] = ()) -> list[str]:
        """The full command line: isolation wrapper, then resource limits, then the program."""
        cpu = max(1, math.ceil(limits.timeout_s) + 1)  # the wall clock normally fires first
        limited = list(argv)
        if self.prlimit:
            limited = [self.prlimit, f"--as={limits.memory_mb * 1024 * 1024}", f"--cpu={cpu}",
                       f"--fsize={limits.file_size_mb * 1024 * 1024}", f"--nofile={limits.open_files}",
                       "--core=0", "--", *argv]
        if self.mode == "bwrap":
            binds: list[str] = []
            for path in (*map(str, ro_paths), *self.ro_paths):
                binds += ["--ro-bind", path, path]
            for path in (workdir, *rw_paths):
                binds += ["--bind", str(path), str(path)]
            return ["bwrap", *_bwrap_mounts(()), *binds, "--unshare-all", "--die-with-parent", "--new-session",
                    "--chdir", str(workdir), "--", *limited]
        if self.mode == "unshare":
            return ["unshare", "-rnpf", "--kill-child", "--", *limited]
        return limited

    def run(self, argv: list[str], workdir: Path, limits: Limits, stdin: bytes = b"",
            env: dict[str, str] | None = None, rw_paths: tuple[Path, ...] = (),
            ro_paths: tuple[Path, ...] = ()) -> Completed:
        """Run `argv` in `workdir` (which must exist and be empty or ours) under the limits.

        stdout/stderr go to files outside `workdir` (bounded by the file-size limit), so a program that
        prints forever is stopped by the kernel, not by our memory.
        """
        base_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(workdir), "TMPDIR": str(workdir),
                    "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        base_env.update(env or {})
        preexec = None if self.prlimit else _rlimit_setter(limits)
        with tempfile.TemporaryDirectory(prefix="sftpipe-io-") as io_dir:
            out_path, err_path = Path(io_dir) / "stdout", Path(io_dir) / "stderr"
            with out_path.open("wb") as out, err_path.open("wb") as err:
                start = time.perf_counter()
                proc = subprocess.Popen(
                    self.wrap(argv, workdir, limits, rw_paths, ro_paths), cwd=workdir, env=base_env,
                    stdin=subprocess.PIPE, stdout=out, stderr=err, start_new_session=True,
                    preexec_fn=preexec,  # only without prlimit; then no threads may hold locks we need
                )
                timed_out = False
                try:
                    try:
                        proc.stdin.write(stdin)
                        proc.stdin.close()
                    except (BrokenPipeError, OSError):
                        pass  # the program exited or closed stdin without reading: its business
                    proc.wait(timeout=limits.timeout_s)
                except subprocess.TimeoutExpired:
                    timed_out = True
                finally:
                    _kill_group(proc)
                wall = time.perf_counter() - start
            stdout, cut_out, tail = _read_capped(out_path, limits.output_bytes)
            stderr, cut_err, _ = _read_capped(err_path, limits.output_bytes)
        return Completed(proc.returncode, stdout, stderr, tail, timed_out, wall, cut_out or cut_err)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL everything left in the program's session (children that outlived it, or all on timeout)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _read_capped(path: Path, limit: int) -> tuple[str, bool, str]:
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(limit)
        fh.seek(max(0, size - TAIL_BYTES))
        tail = fh.read()
    return head.decode("utf-8", "replace"), size > limit, tail.decode("utf-8", "replace")


def _rlimit_setter(limits: Limits):
    import resource

    cpu = max(1, math.ceil(limits.timeout_s) + 1)

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb << 20,) * 2)
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size_mb << 20,) * 2)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files,) * 2)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply
