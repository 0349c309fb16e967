"""Kill anywhere: SIGKILL a real `sftpipe train` again and again, restart it, end bitwise equal to a clean run.

One chain = one run dir: start `sftpipe train`, kill it with SIGKILL, start it again (it resumes from the
newest complete checkpoint), kill it again, ... then let the last start finish. Kills come in two kinds:
failpoints (the process SIGKILLs itself at a named place, e.g. between a checkpoint's rename and its
COMPLETE marker, see `sftpipe.train.faults`) and timed kills (the test sends SIGKILL after a random delay), both
drawn from a seeded RNG. The chain's final weights and its whole metrics.jsonl (less wall-clock fields)
must equal those of an uninterrupted `sftpipe train` started from a shell. The negative control resumes
from a checkpoint whose data position was tampered with and shows the same comparison then fails.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sftpipe.contracts.checkpoint import COMPLETE, STATE, complete_checkpoints, file_digests, verify_checkpoint
from sftpipe.data import prepare
from sftpipe.contracts.checkpoint import COMPLETE, STATE, complete_checkpoints, file_digests, verify_checkpoint
from sftpipe.train.faults import ENV, POINTS
from tests.cli_forkserver import start_cli
from tests.conftest import make_config, pc_records, write_jsonl
from tests.run_compare import run_differences

pytestmark = pytest.mark.integration

THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@dataclass
class Chain:
    run_dir: Path
    config: Path
    log: Path
    kills: list[str] = field(default_factory=list)  # what each kill was and where it landed


def _setup(tmp: Path, tiny_dir: Path, method: str, epochs: int) -> Path:
    """Data dir + config file: 12 train examples, 6 micro-batches per epoch, 3 optimizer steps per epoch."""
    source = write_jsonl(tmp / "pc15.jsonl", pc_records(15))
    cfg = make_config(
        tmp, tiny_dir, [{"path": str(source)}],
        data={"split": {"train": 0.8, "val": 0.2, "test": 0.0}},
        lora={"dropout": 0.1},
        train={"method": method, "micro_batch_size": 2, "grad_accum": 2, "max_steps": 0, "epochs": epochs,
               "lr": 1e-2, "warmup_ratio": 0.2, "save_every": 2, "save_total_limit": 2, "eval_every": 3},
    )
    prepare.run(cfg)
    return tmp / "config.json"


def _reference(config: Path, tmp: Path) -> Path:
    """The uninterrupted run, started as `python -m sftpipe.cli train` in a fresh interpreter."""
    run_dir = tmp / "reference"
    proc = subprocess.run([sys.executable, "-m", "sftpipe.cli", "train", str(config), "--set",
                           f"train.output_dir={run_dir}"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **THREADS})
    assert proc.returncode == 0, proc.stderr
    return run_dir


def _landed(run_dir: Path) -> str:
    """What a kill left: the last step logged, complete checkpoints, and partial ones (temporary or unmarked)."""
    metrics = run_dir / "logs" / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    steps = [json.loads(x)["step"] for x in lines if x.endswith("}")]
    root = run_dir / "checkpoints"
    names = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    partial = [n for n in names if n.startswith(".tmp-") or not (root / n / COMPLETE).exists()]
    done = [n for n in names if n not in partial]
    return f"last logged step {max(steps, default=None)}, complete {done}" + (f", partial {partial}" if partial else "")


def _start(chain: Chain, env: dict[str, str] | None = None, resume: str = "auto"):
    return start_cli(["train", chain.config, "--set", f"train.output_dir={chain.run_dir}", "--resume", resume],
                     cwd=chain.run_dir.parent, log=chain.log, env={**THREADS, **(env or {})})


def _kill_by_failpoint(chain: Chain, point: str, nth: int) -> None:
    process = _start(chain, {ENV: f"{point}@{nth}"})
    process.join(timeout=300)
    assert process.exitcode == -signal.SIGKILL, f"{point}@{nth} was not reached: exit {process.exitcode}"
    chain.kills.append(f"failpoint {point}@{nth}: {_landed(chain.run_dir)}")


def _kill_after(chain: Chain, delay: float) -> None:
    """SIGKILL `delay` seconds after the restarted run logs its first new step (start-up is too slow to aim at)."""
    done = complete_checkpoints(chain.run_dir)
    resumes_at = json.loads((done[-1] / STATE).read_text())["step"] if done else 0
    started_ns = time.time_ns()
    process = _start(chain)
    started = time.monotonic()
    while process.is_alive() and _last_logged_step(chain.run_dir, started_ns) <= resumes_at:
        time.sleep(0.005)
        assert time.monotonic() - started < 300, "the restarted run never logged a step"
    process.join(timeout=delay)
    if process.is_alive():
        os.kill(process.pid, signal.SIGKILL)
        process.join(timeout=60)
        chain.kills.append(f"timed kill {delay:.3f}s after a step: {_landed(chain.run_dir)}")
    else:
        chain.kills.append(f"timed kill {delay:.3f}s after a step: missed, the run exited {process.exitcode}")


def _finish(chain: Chain) -> None:
    process = _start(chain)
    process.join(timeout=600)
    assert process.exitcode == 0, chain.log.read_text()[-3000:]


def _last_logged_step(run_dir: Path, since_ns: int) -> int:
    """The step of the last training record in metrics.jsonl if the file was written after `since_ns`, else -1
    (before the restarted run trims it, the file still ends with steps its killed predecessor logged)."""
    metrics = run_dir / "logs" / "metrics.jsonl"
    try:
        lines = metrics.read_text().splitlines() if metrics.stat().st_mtime_ns >= since_ns else []
    except FileNotFoundError:
        return -1
    try:
        record = json.loads(lines[-1]) if lines else {}
    except ValueError:  # caught mid-write
        return -1
    return record["step"] if "loss" in record else -1


def _kill_plan(seed: int, points: list[str], extra: int, timed: int, step_s: float) -> list[tuple[str, object]]:
    """A seeded, shuffled list of kills: `points` plus `extra` failpoints drawn at random, each at a random
    hit count, and `timed` kills at random delays of up to 3 steps."""
    rng = random.Random(seed)
    points = list(points) + rng.choices(POINTS, k=extra)
    # a train.* point is passed every step, a checkpoint.* one every save (2 steps): 1-6 steps of progress
    plan: list[tuple[str, object]] = [("failpoint", (p, rng.randint(1, 6) if p.startswith("train.") else
                                                     rng.randint(1, 3))) for p in points]
    plan += [("timed", rng.uniform(0.0, 3.0) * step_s) for _ in range(timed)]
    rng.shuffle(plan)
    # final.written is passed after the last step (and again by each restart from there): kills there go last
    last = [k for k in plan if k[0] == "failpoint" and k[1][0] == "final.written"]
    return [k for k in plan if k not in last] + [("failpoint", ("final.written", 1))] * len(last)


def _run_chain(tmp: Path, config: Path, plan: list[tuple[str, object]]) -> Chain:
    chain = Chain(tmp / "chain" / "run", config, tmp / "chain" / "train.log")
    chain.run_dir.parent.mkdir(parents=True)
    for kind, arg in plan:
        if kind == "failpoint":
            _kill_by_failpoint(chain, *arg)
        else:
            _kill_after(chain, arg)
    _finish(chain)
    return chain


def _check_chain(reference: Path, chain: Chain, min_kills: int) -> None:
    landed = [k for k in chain.kills if "missed" not in k]
    print(f"{len(landed)} kills landed of {len(chain.kills)}:\n  " + "\n  ".join(chain.kills))
    assert len(landed) >= min_kills
    diffs = run_differences(reference, chain.run_dir)
    assert not diffs, "\n".join(diffs[:10])
    root = chain.run_dir / "checkpoints"
    assert all(p.name.startswith("checkpoint-") for p in root.iterdir()), sorted(root.iterdir())
    for ckpt in complete_checkpoints(chain.run_dir):
        verify_checkpoint(ckpt)
    assert "Traceback" not in chain.log.read_text()


def _tampered_resume_differs(reference: Path, chain: Chain, tmp: Path) -> None:
    """Negative control: a resume that lands one micro-batch off must be caught by the same comparison."""
    bad = Chain(tmp / "tampered" / "run", chain.config, tmp / "tampered" / "train.log")
    shutil.copytree(chain.run_dir, bad.run_dir)
    shutil.rmtree(bad.run_dir / "final")
    ckpt = complete_checkpoints(bad.run_dir)[0]
    state = json.loads((ckpt / STATE).read_text())
    state["micro_batch"] += 1
    (ckpt / STATE).write_text(json.dumps(state))
    marker = json.loads((ckpt / COMPLETE).read_text())
    (ckpt / COMPLETE).write_text(json.dumps({**marker, "files": file_digests(ckpt)}))  # re-sealed: looks intact
    process = _start(bad, resume=str(ckpt))
    process.join(timeout=600)
    assert process.exitcode == 0, bad.log.read_text()[-3000:]
    diffs = run_differences(reference, bad.run_dir)
    assert any(d.startswith("weights:") for d in diffs), "a tampered resume went unnoticed"


def _step_seconds(reference: Path) -> float:
    """Mean seconds per optimizer step of the uninterrupted run, saves included (a scale for timed kills)."""
    records = [json.loads(x) for x in (reference / "logs" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    return max((steps[-1]["time"] - steps[0]["time"]) / max(len(steps) - 1, 1), 0.01)


def test_kill_anywhere_short(tmp_path, tiny_dir):
    """CI form: 8 kills on a LoRA run with dropout, shuffling, accumulation 2: the three failpoints where a
    checkpoint is most fragile (weights half-written, renamed but unmarked, old one being deleted), three
    failpoints drawn at random, two timed kills."""
    config = _setup(tmp_path, tiny_dir, "lora", epochs=12)
    reference = _reference(config, tmp_path)
    started = time.perf_counter()
    must = ["checkpoint.weights", "checkpoint.renamed", "checkpoint.retention"]
    chain = _run_chain(tmp_path, config, _kill_plan(4, must, extra=3, timed=2, step_s=_step_seconds(reference)))
    print(f"chain took {time.perf_counter() - started:.1f}s")
    _check_chain(reference, chain, min_kills=6)
    _tampered_resume_differs(reference, chain, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])
def test_kill_anywhere_long(tmp_path, tiny_dir, method):
    """Every failpoint once plus more at random hit counts, and 10 timed kills: at least 20 kills landed."""
    config = _setup(tmp_path, tiny_dir, method, epochs=36)
    reference = _reference(config, tmp_path)
    plan = _kill_plan(20 + len(method), list(POINTS), extra=4, timed=10, step_s=_step_seconds(reference))
    chain = _run_chain(tmp_path, config, plan)
    _check_chain(reference, chain, min_kills=20)
    _tampered_resume_differs(reference, chain, tmp_path)
