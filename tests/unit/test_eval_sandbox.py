"""The execution sandbox's layers, for every isolation mode this machine offers (none is always tested)."""

import os
import shutil
import signal
import socket
import sys
import threading
import time
import uuid

import pytest

from sftpipe.errors import SftpipeError
from sftpipe.evaluate.execution import sandbox as sandbox_mod
from sftpipe.evaluate.execution.sandbox import Limits, Sandbox, available_isolation, interpreter_paths

MODES = available_isolation()
LIMITS = Limits(timeout_s=5, memory_mb=512)


def py(code: str) -> list[str]:
    return [sys.executable, "-I", "-c", code]


@pytest.fixture(params=MODES)
def box(request):
    return Sandbox(request.param, ro_paths=interpreter_paths())


def test_stdin_in_stdout_out_and_clean_environment(box, tmp_path, monkeypatch):
    monkeypatch.setenv("SFTPIPE_TEST_SECRET", "hunter2")
    code = "import os, sys; print(sys.stdin.read().upper()); print(sorted(os.environ)); print(os.getcwd())"
    done = box.run(py(code), tmp_path, LIMITS, stdin=b"hello")
    assert done.returncode == 0 and not done.timed_out, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "HELLO"
    assert "SFTPIPE_TEST_SECRET" not in lines[1] and "hunter2" not in done.stdout
    assert lines[2] == str(tmp_path)


def test_timeout_kills_the_whole_process_tree(box, tmp_path):
    # The child forks a grandchild in a new session that would outlive a plain kill of the child.
    marker = f"sftpipe-test-{uuid.uuid4().hex}"  # finds exactly this test's grandchild in /proc
    code = ("import os, subprocess, sys, time\n"
            f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)  # {marker}'], "
            "start_new_session=True)\n"
            "open('grandchild.pid', 'w').write(str(p.pid))\n"
            "time.sleep(60)\n")
    start = time.perf_counter()
    done = box.run(py(code), tmp_path, Limits(timeout_s=2, memory_mb=512))
    assert done.timed_out and time.perf_counter() - start < 30
    pid_file = tmp_path / "grandchild.pid"
    assert pid_file.exists()
    time.sleep(0.5)
    leftovers = [p for p in os.listdir("/proc") if p.isdigit() and marker in _cmdline(p)]
    if box.mode == "none":
        # Without a PID namespace a process that leaves the session survives (documented). This is also the
        # negative control: the /proc scan does find a leftover when there is one.
        assert leftovers, "expected the escaped grandchild to be found"
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
    else:
        assert leftovers == []


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def test_memory_limit(box, tmp_path):
    done = box.run(py("x = bytearray(900 * 1024 * 1024); print('allocated')"), tmp_path, Limits(5, memory_mb=256))
    assert done.returncode != 0 and "allocated" not in done.stdout and "MemoryError" in done.stderr
    control = box.run(py("x = bytearray(50 * 1024 * 1024); print('allocated')"), tmp_path, Limits(5, memory_mb=256))
    assert "allocated" in control.stdout  # the limit is not simply "nothing can allocate"


def test_output_is_capped_by_the_file_size_limit(box, tmp_path):
    done = box.run(py("while True: print('x' * 1000)"), tmp_path, Limits(10, 256, file_size_mb=1, output_bytes=4096))
    assert not done.timed_out and done.returncode != 0
    assert done.output_truncated and len(done.stdout) <= 4096


def test_cpu_limit_backs_up_the_wall_clock(box, tmp_path):
    done = box.run(py("while True: pass"), tmp_path, Limits(timeout_s=1.5, memory_mb=256))
    assert done.timed_out or done.signal is not None


def test_network_is_cut_except_without_isolation(tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    threading.Thread(target=lambda: server.accept(), daemon=True).start()
    code = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3); print('connected')"
    try:
        for mode in MODES:
            done = Sandbox(mode, ro_paths=interpreter_paths()).run(py(code), tmp_path, LIMITS)
            if mode == "none":  # negative control: the same program does connect without a namespace
                assert "connected" in done.stdout, done.stderr
            else:
                assert "connected" not in done.stdout, mode
    finally:
        server.close()


@pytest.mark.skipif("bwrap" not in MODES, reason="bubblewrap is not installed or not usable here")
def test_bwrap_hides_user_files_and_makes_the_system_read_only(tmp_path):
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    (secret_dir / "key.txt").write_text("s3cret")
    work = tmp_path / "work"
    work.mkdir()
    code = (f"import os\nprint(os.path.exists({str(secret_dir / 'key.txt')!r}))\n"
            "open('mine.txt', 'w').write('ok')\n"
            "try:\n    open('/usr/sftpipe-test', 'w')\n    print('wrote /usr')\n"
            "except OSError:\n    print('read-only')\n")
    done = Sandbox("bwrap", ro_paths=interpreter_paths()).run(py(code), work, LIMITS)
    assert done.stdout.split() == ["False", "read-only"], done.stderr
    assert (work / "mine.txt").read_text() == "ok"
    control = Sandbox("none").run(py(code.replace("open('/usr", "open('/nonexistent-dir/x")), work, LIMITS)
    assert control.stdout.split()[0] == "True"  # negative control: without bwrap the file is visible


def test_requesting_an_unavailable_mode_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(sandbox_mod, "available_isolation", lambda: ("none",))
    with pytest.raises(SftpipeError, match="bwrap is not usable.*apt-get install bubblewrap"):
        Sandbox("bwrap")
    assert Sandbox("auto").mode == "none"


def test_limits_hold_without_the_prlimit_tool(tmp_path):
    box = Sandbox("none")
    box.prlimit = None  # a system without util-linux's prlimit: limits are set in the child before exec
    done = box.run(py("x = bytearray(900 * 1024 * 1024); print('allocated')"), tmp_path, Limits(5, memory_mb=256))
    assert "MemoryError" in done.stderr and "allocated" not in done.stdout
    assert box.wrap(["prog"], tmp_path, LIMITS) == ["prog"]
    if shutil.which("prlimit"):
        assert Sandbox("none").wrap(["prog"], tmp_path, LIMITS)[-2:] == ["--", "prog"]  # prlimit wraps it otherwise
