"""configs/slurm/sftpipe.sbatch without a Slurm: the commands it runs, read from stand-ins for `srun` and `scontrol`.

The script is run by bash as sbatch would run it (Slurm's variables in the environment), with `srun` and
`scontrol` on PATH replaced by scripts that record their arguments. The torchrun part of the recorded `srun`
command is then parsed by torchrun's own argument parser, so a flag torchrun does not know fails here. The real
submission to a real Slurm is tests/integration/test_slurm.py.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "configs" / "slurm" / "sftpipe.sbatch"

FAKE_SRUN = """#!/bin/bash
printf '%s\\0' "$@" > "$FAKE_OUT/srun.args"
# a running step: wait until `scontrol requeue` (the fake below) "kills" it, as Slurm would
if [ -n "${FAKE_SRUN_UNTIL_REQUEUE:-}" ]; then
    for _ in $(seq "$FAKE_SRUN_UNTIL_REQUEUE"); do [ -e "$FAKE_OUT/requeued" ] && exit 143; sleep 0.05; done
    exit 99
fi
exit "${FAKE_SRUN_STATUS:-0}"
"""
FAKE_SCONTROL = """#!/bin/bash
case "$1 $2" in
    "show hostnames") printf '%s\\n' $FAKE_HOSTS ;;
    "-o show") echo "NodeName=$4 Arch=x86_64 CoresPerSocket=1 NodeAddr=${FAKE_ADDR:-$4} NodeHostName=$4 Port=0" ;;
    "requeue $SLURM_JOB_ID") echo "$@" >> "$FAKE_OUT/scontrol.log"; touch "$FAKE_OUT/requeued" ;;
    *) echo "unexpected scontrol $*" >&2; exit 1 ;;
esac
"""


@pytest.fixture
def slurm_env(tmp_path) -> dict[str, str]:
    """The environment of a 2-node job with 4 GPUs per node, srun and scontrol replaced."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SFTPIPE_", "CUDA_VISIBLE"))}
    return {**env, "PATH": f"{bin_dir}:{env['PATH']}", "FAKE_OUT": str(tmp_path), "FAKE_HOSTS": "gpu07 gpu08",
            "SLURM_JOB_ID": "1234", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_NUM_NODES": "2",
            "SLURM_GPUS_ON_NODE": "4", "SLURM_CPUS_PER_TASK": "32"}


def run_script(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60)


def srun_args(tmp_path: Path) -> list[str]:
    return (tmp_path / "srun.args").read_text().split("\0")[:-1]


def torchrun_args(argv: list[str]):
    """The part after `PYTHON -m torch.distributed.run`, parsed by torchrun itself."""
    from torch.distributed.run import get_args_parser

    start = argv.index("torch.distributed.run")
    assert argv[start - 1] == "-m"
    return get_args_parser().parse_args(argv[start + 1:])


def test_two_nodes_rendezvous_on_the_first_node_and_every_argument_reaches_sftpipe(tmp_path, slurm_env):
    extra = ["--set", "train.sharding=fsdp", "--set", "train.output_dir=runs/a b", "--resume-force"]
    proc = run_script(slurm_env, "my config.yaml", *extra)
    assert proc.returncode == 0, proc.stderr
    argv = srun_args(tmp_path)
    python = argv.index("python")
    assert argv[:python] == ["--nodes", "2", "--ntasks-per-node", "1", "--cpus-per-task", "32", "--kill-on-bad-exit=1"]
    args = torchrun_args(argv)
    assert (args.nnodes, args.nproc_per_node, args.rdzv_backend) == ("2", "4", "c10d")
    assert args.rdzv_endpoint == "gpu07:29734"  # the first node; 29500 + job id % 1000
    assert args.rdzv_id == "sftpipe-1234"
    assert args.module and args.training_script == "sftpipe.cli"
    assert args.training_script_args == ["train", "my config.yaml", *extra]  # spaces survive, nothing dropped
    assert "attempt 1, 2 node(s) x 4 process(es), rendezvous gpu07:29734" in proc.stdout


@pytest.mark.parametrize(("variables", "nproc"), [
    ({}, "4"),  # the GPUs Slurm gave the node
    ({"SFTPIPE_NPROC_PER_NODE": "2"}, "2"),  # set by hand (CPU nodes)
    ({"SLURM_GPUS_ON_NODE": None, "CUDA_VISIBLE_DEVICES": "0,1,2"}, "3"),
    ({"SLURM_GPUS_ON_NODE": None}, "1"),
])
def test_processes_per_node(tmp_path, slurm_env, variables, nproc):
    for name, value in variables.items():
        slurm_env.pop(name) if value is None else slurm_env.__setitem__(name, value)
    assert run_script(slurm_env, "c.yaml").returncode == 0
    assert torchrun_args(srun_args(tmp_path)).nproc_per_node == nproc


def test_settings_from_the_environment(tmp_path, slurm_env):
    slurm_env.update(SFTPIPE_RDZV_PORT="41000", SFTPIPE_PYTHON="/opt/venv/bin/python", SLURM_JOB_NUM_NODES="1",
                     FAKE_HOSTS="cn1", SLURM_JOB_NODELIST="cn1", FAKE_ADDR="10.1.2.3")
    del slurm_env["SLURM_CPUS_PER_TASK"]
    assert run_script(slurm_env, "c.yaml").returncode == 0
    argv = srun_args(tmp_path)
    assert argv[argv.index("--cpus-per-task") + 1] == "1"
    assert "/opt/venv/bin/python" in argv
    args = torchrun_args(argv)
    assert (args.nnodes, args.rdzv_endpoint) == ("1", "10.1.2.3:41000")  # where Slurm reaches the node


def test_dry_run_prints_the_command_and_runs_nothing(tmp_path, slurm_env):
    proc = run_script({**slurm_env, "SFTPIPE_DRY_RUN": "1"}, "c.yaml", "--set", "train.lr=1e-4")
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "srun.args").exists()
    assert "srun --nodes 2" in proc.stdout and "-m sftpipe.cli train c.yaml --set train.lr=1e-4" in proc.stdout


def test_the_steps_exit_status_is_the_jobs(tmp_path, slurm_env):
    assert run_script({**slurm_env, "FAKE_SRUN_STATUS": "3"}, "c.yaml").returncode == 3


def test_usage_errors(slurm_env):
    proc = run_script(slurm_env)
    assert proc.returncode == 2 and "usage: sbatch" in proc.stderr
    del slurm_env["SLURM_JOB_ID"]
    proc = run_script(slurm_env, "c.yaml")
    assert proc.returncode != 0 and "submit this script with sbatch" in proc.stderr


def signal_and_finish(env: dict[str, str], tmp_path: Path, polls: int = 400) -> subprocess.CompletedProcess:
    """Start the script with a step that runs until requeued (or `polls` x 50 ms), send the batch shell the
    time-limit warning."""
    proc = subprocess.Popen(["bash", str(SCRIPT), "c.yaml"], env={**env, "FAKE_SRUN_UNTIL_REQUEUE": str(polls)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (tmp_path / "srun.args").exists():
        assert time.monotonic() < deadline and proc.poll() is None, "the step never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_the_time_limit_warning_requeues_the_job_and_waits_for_the_step(tmp_path, slurm_env):
    done = signal_and_finish(slurm_env, tmp_path)
    assert (tmp_path / "scontrol.log").read_text() == "requeue 1234\n"
    assert "time limit near: requeueing job 1234" in done.stdout
    assert done.returncode == 143, done.stderr  # the step's status: the trap did not end the script early


def test_no_requeue_past_the_limit(tmp_path, slurm_env):
    slurm_env.update(SLURM_RESTART_COUNT="2", SFTPIPE_MAX_REQUEUES="2")
    done = signal_and_finish(slurm_env, tmp_path, polls=40)
    assert not (tmp_path / "scontrol.log").exists()
    assert "not requeueing: 2 requeues already" in done.stdout
    assert done.returncode == 99  # the fake step gave up waiting for a requeue that never came


def sbatch_directives() -> dict[str, str]:
    """The #SBATCH options, checked to come before the first command (sbatch ignores any after it)."""
    options = {}
    for line in SCRIPT.read_text().splitlines()[1:]:
        if line.startswith("#SBATCH"):
            name, _, value = line.removeprefix("#SBATCH").strip().partition("=")
            options[name] = value
        elif line.strip() and not line.startswith("#"):
            break
    rest = SCRIPT.read_text().split(line, 1)[1]
    assert "#SBATCH" not in rest, "an #SBATCH line after the first command is ignored by sbatch"
    return options


def test_directives_make_the_job_requeueable_with_one_task_per_node_and_one_log():
    options = sbatch_directives()
    assert options["--ntasks-per-node"] == "1"
    assert "--requeue" in options
    assert options["--open-mode"] == "append"  # a requeued attempt adds to the log instead of truncating it
    assert re.fullmatch(r"B:USR1@\d+", options["--signal"]), options  # to the batch shell, where the trap is
    assert "%j" in options["--output"]
