"""Kill -9 a 2-rank FSDP run (torchrun, CPU, gloo) again and again, restart it, end bitwise equal to a clean run.

One chain = one run dir: `torchrun --nproc_per_node 2 -m sftpipe.cli train` is killed, restarted (it resumes from
the newest complete checkpoint), killed again, ... then the last start finishes. Kills are failpoints (every rank
SIGKILLs itself at a named place: inside a sharded save between the gathered weights and the shards, between the
shards and the trainer state, between the rename and the COMPLETE marker, during retention, after an optimizer
step...; see `sftpipe.train.faults`; a point only the main process passes kills it while the other rank waits,
and torchrun then ends that one) and timed kills of torchrun and every worker at once at a seeded random moment after the
restarted run logs a step. The chain's final weights and whole metrics.jsonl (less wall-clock fields) must equal
those of the uninterrupted 2-rank run. That this comparison catches a wrong resume is shown by
tests/integration/test_fsdp_cli.py::test_swapped_rank_rng_states_are_caught.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sftpipe.contracts.checkpoint import (
    COMPLETE,
    complete_checkpoints,
    verify_checkpoint,
)
from sftpipe.data import prepare
from sftpipe.train.faults import ENV as FAILPOINT
from tests.conftest import free_port, make_config, pc_records, write_jsonl
from tests.run_compare import run_differences

pytestmark = [pytest.mark.integration, pytest.mark.heavy]

REPO = Path(__file__).resolve().parents[2]
THREADS = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
# (failpoint, hit count in the restarted run): 18 steps, a save after each, so every kill costs about one step
KILLS = [
    ("checkpoint.weights", 1),  # gathered weights written, no shard yet
    ("train.optimizer_step", 2),
    ("checkpoint.optimizer", 1),  # every rank's shard and .metadata written, no trainer state
    ("checkpoint.begin", 2),
    ("checkpoint.renamed", 1),  # renamed, no COMPLETE marker
    ("checkpoint.state", 1),
    ("checkpoint.fsynced", 1),
    ("checkpoint.retention", 1),  # an old checkpoint unmarked, not yet deleted
    ("train.logged", 2),
    ("checkpoint.complete", 1),
]
TIMED = 2
SEED = 7


def start(config: Path, run_dir: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
            "-m", "sftpipe.cli", "train", str(config), "--preset", "fast_test", "--set", f"train.output_dir={run_dir}"]
    with log.open("a") as fh:
        fh.write(f"\n=== {' '.join(f'{k}={v}' for k, v in (env or {}).items())}\n")
    return subprocess.Popen(argv, stdout=log.open("a"), stderr=subprocess.STDOUT, cwd=REPO,
                            env={**os.environ, **THREADS, **(env or {})})


def landed(run_dir: Path) -> str:
    root = run_dir / "checkpoints"
    names = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    partial = [n for n in names if n.startswith(".tmp-") or not (root / n / COMPLETE).exists()]
    return f"complete {[n for n in names if n not in partial]}" + (f", partial {partial}" if partial else "")


def last_logged_step(run_dir: Path, since_ns: int) -> int:
    metrics = run_dir / "logs" / "metrics.jsonl"
    try:
        if metrics.stat().st_mtime_ns < since_ns:
            return -1
        record = json.loads(metrics.read_text().splitlines()[-1])
    except (FileNotFoundError, IndexError, ValueError):
        return -1
    return record["step"] if "loss" in record else -1


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc), children first listed first."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


def kill_timed(config: Path, run_dir: Path, log: Path, delay: float) -> str:
    done = complete_checkpoints(run_dir)
    resumes_at = int(done[-1].name.split("-")[1]) if done else 0
    started_ns = time.time_ns()
    proc = start(config, run_dir, log)
    deadline = time.monotonic() + 600
    while proc.poll() is None and last_logged_step(run_dir, started_ns) <= resumes_at:
        time.sleep(0.01)
        assert time.monotonic() < deadline, "the restarted run never logged a step"
    time.sleep(delay)
    if proc.poll() is not None:
        return f"timed {delay:.2f}s: missed (exit {proc.returncode})"
    for pid in [proc.pid, *descendants(proc.pid)]:  # torchrun starts its workers in sessions of their own
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)
    return f"timed {delay:.2f}s: {landed(run_dir)}"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, dropout_model):
    tmp = tmp_path_factory.mktemp("fsdp_kill")
    source = write_jsonl(tmp / "pc15.jsonl", pc_records(15))
    cfg = make_config(
        tmp, dropout_model, [{"path": str(source)}],
        data={"split": {"train": 0.8, "val": 0.2, "test": 0.0}},
        lora={"dropout": 0.1},
        train={"method": "lora", "sharding": "fsdp", "micro_batch_size": 2, "grad_accum": 1, "max_steps": 0,
               "epochs": 6, "lr": 1e-2, "warmup_ratio": 0.2, "save_every": 1, "save_total_limit": 1,
               "eval_every": 4},
    )
    prepare.run(cfg)
    reference = tmp / "reference"
    proc = start(tmp / "config.json", reference, tmp / "reference.log")
    assert proc.wait(timeout=900) == 0, (tmp / "reference.log").read_text()[-3000:]
    return tmp


def test_kill_9_battery_of_a_two_rank_fsdp_run_resumes_bitwise(setup):
    config, run_dir, log = setup / "config.json", setup / "chain" / "run", setup / "chain.log"
    run_dir.parent.mkdir()
    rng = random.Random(SEED)
    plan: list[tuple[str, object]] = [("failpoint", k) for k in KILLS] + [("timed", rng.uniform(0.0, 4.0))
                                                                          for _ in range(TIMED)]
    rng.shuffle(plan)
    kills = []
    for kind, arg in plan:
        if kind == "timed":
            kills.append(kill_timed(config, run_dir, log, arg))
            continue
        point, nth = arg
        proc = start(config, run_dir, log, {FAILPOINT: f"{point}@{nth}"})
        if proc.wait(timeout=900) == 0:
            kills.append(f"failpoint {point}@{nth}: missed, the run finished")
            break
        kills.append(f"failpoint {point}@{nth}: {landed(run_dir)}")
    final = start(config, run_dir, log)
    assert final.wait(timeout=900) == 0, log.read_text()[-4000:]
    print(f"{len(kills)} kills:\n  " + "\n  ".join(kills))
    landed_kills = [k for k in kills if "missed" not in k]
    assert len(landed_kills) >= 8, kills
    diffs = run_differences(setup / "reference", run_dir)
    assert not diffs, "\n".join(diffs[:10])
    root = run_dir / "checkpoints"
    assert all(p.name.startswith("checkpoint-") for p in root.iterdir()), sorted(root.iterdir())
    for ckpt in complete_checkpoints(run_dir):
        verify_checkpoint(ckpt)
