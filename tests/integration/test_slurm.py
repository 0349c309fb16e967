"""The shipped configs/slurm/sftpipe.sbatch submitted to a real Slurm: 2 training processes on CPU (gloo).

Needs a Slurm controller with a node to run on: `sudo bash scripts/slurm-local.sh` starts a two-node cluster
on this machine (CI does, in .ci/run); without one these tests skip and say so. The job runs the script exactly
as a user submits it; the test only chooses the interpreter and the processes per node through the script's
documented variables, since the nodes have no GPU.

- A job trains LoRA (with dropout, so every process draws random numbers) to the end, and `final/` loads with
  plain transformers + peft.
- The same job on 2 nodes with 1 process each ends bitwise equal to it.
- The same job, signalled as Slurm signals it before its time limit, requeues itself; in its second attempt it
  is requeued with `scontrol requeue`; each time Slurm kills it, it starts again, resumes from its newest
  checkpoint, and the third attempt ends bitwise equal to the uninterrupted job, weights and every logged
  record. The log must show each requeue and a resume from a checkpoint before the last step: a job that
  finished before a requeue, or restarted from scratch, would also end equal, and fails here instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sftpipe.contracts.checkpoint import COMPLETE
from sftpipe.data import prepare
from sftpipe.train.tracking import read_metrics
from tests.conftest import make_config, pc_records, write_jsonl
from tests.run_compare import final_weights, run_differences

pytestmark = [pytest.mark.slurm, pytest.mark.heavy, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "configs" / "slurm" / "sftpipe.sbatch"
STEPS = 36  # 24 train examples, 2 per micro-batch, 2 processes: 6 steps per epoch, 6 epochs
# A requeue must land before the job ends: requeueing after early checkpoints leaves 28 or more steps to go
# (steps of this tiny model are short next to the processes' start, so the margin costs little time).
REQUEUE_AFTER = 2  # the first checkpoint
SECOND_REQUEUE_AFTER = 8
JOB_TIMEOUT_S = 600
FINISHED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "DEADLINE")


def slurm_missing() -> str | None:
    """Why no job can run here, or None when a controller answers and a node is up."""
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        return "needs Slurm (sbatch, scontrol): run `sudo bash scripts/slurm-local.sh` for a one-node cluster"
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    if "UP" not in ping.stdout:
        return f"no Slurm controller answers `scontrol ping` ({ping.stdout.strip() or ping.stderr.strip()}): " \
               "run `sudo bash scripts/slurm-local.sh`"
    states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30).stdout.split()
    if not any(s.rstrip("*~#").startswith(("idle", "mixed", "allocated")) for s in states):
        return f"Slurm has no node up (sinfo says {states}): see scripts/slurm-local.sh"
    return None


@pytest.fixture(scope="module", autouse=True)
def slurm():
    reason = slurm_missing()
    if reason:
        pytest.skip(reason)


def job_env(nproc_per_node: int) -> dict[str, str]:
    """What the submitting shell exports: this interpreter, the processes per node (no GPUs to count)."""
    return {**os.environ, "SFTPIPE_PYTHON": sys.executable, "SFTPIPE_NPROC_PER_NODE": str(nproc_per_node),
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}


def submit(tmp: Path, output_dir: Path, nodes: int = 1) -> str:
    """sbatch the shipped script: `nodes` nodes, 2 training processes in all."""
    proc = subprocess.run(
        ["sbatch", "--parsable", "--nodes", str(nodes), "--chdir", str(tmp), str(SCRIPT), str(tmp / "config.json"),
         "--preset", "fast_test", "--set", f"train.output_dir={output_dir}"],
        capture_output=True, text=True, timeout=60, env=job_env(2 // nodes))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def job_info(job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True, timeout=30).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def job_log(tmp: Path, job: str) -> str:
    path = tmp / f"sftpipe-{job}.out"
    return path.read_text() if path.exists() else "(no log)"


def wait_for(tmp: Path, job: str, condition, what: str) -> None:
    """Poll until `condition()`; a requeued job held for Slurm's requeue delay (~2 min) is released at once."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not condition():
        info = job_info(job)
        if info.get("JobState") == "PENDING" and info.get("Reason") == "BeginTime":
            subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], check=True, timeout=30)
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job], timeout=30)
            pytest.fail(f"job {job}: {what} did not happen within {JOB_TIMEOUT_S} s ({info.get('JobState')});"
                        f" log:\n{job_log(tmp, job)[-3000:]}")
        time.sleep(0.1)


def wait_finished(tmp: Path, job: str) -> dict[str, str]:
    wait_for(tmp, job, lambda: job_info(job).get("JobState") in FINISHED, "the end of the job")
    info = job_info(job)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), job_log(tmp, job)[-3000:]
    return info


@pytest.fixture(scope="module")
def reference(tmp_path_factory, dropout_model):
    """A prepared data dir and the uninterrupted job's run dir."""
    tmp = tmp_path_factory.mktemp("slurm")
    source = write_jsonl(tmp / "pc30.jsonl", pc_records(30))
    cfg = make_config(
        tmp, dropout_model, [{"path": str(source)}],
        data={"split": {"train": 0.8, "val": 0.2, "test": 0.0}},
        lora={"dropout": 0.1},
        train={"method": "lora", "packing": False, "tokens_per_batch": 0, "micro_batch_size": 2, "grad_accum": 1,
               "max_steps": 0, "epochs": 6, "lr": 1e-2, "warmup_ratio": 0.1, "scheduler": "cosine",
               "save_every": REQUEUE_AFTER, "save_total_limit": 2, "eval_every": 4},
    )
    prepare.run(cfg)
    job = submit(tmp, tmp / "reference")
    info = wait_finished(tmp, job)
    return tmp, job, info


def test_sbatch_job_trains_on_two_processes_and_final_loads_with_plain_peft(reference, dropout_model):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    tmp, job, info = reference
    log = job_log(tmp, job)
    assert info["Restarts"] == "0"
    assert f"job {job}, attempt 1, 1 node(s) x 2 process(es)" in log, log
    assert log.count(f"trained {STEPS} steps") == 1, log  # one summary, from rank 0
    run = tmp / "reference"
    assert '"world_size": 2' in (run / "run_manifest.json").read_text()

    base = AutoModelForCausalLM.from_pretrained(dropout_model).eval()
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(dropout_model), run / "final").eval()
    saved = load_file(run / "final" / "adapter_model.safetensors")
    loaded = {k: v for k, v in tuned.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(saved) > 0
    assert all(torch.equal(loaded[k.replace(".weight", ".default.weight")], v) for k, v in saved.items())
    ids = torch.arange(1, 33).unsqueeze(0)
    with torch.no_grad():
        tuned_logits, base_logits = tuned(input_ids=ids).logits, base(input_ids=ids).logits
    assert torch.isfinite(tuned_logits).all()
    assert not torch.allclose(tuned_logits, base_logits), "the trained adapter does not change the model"


def newest_complete(run: Path) -> int:
    steps = [int(p.parent.name.rsplit("-", 1)[1]) for p in (run / "checkpoints").glob(f"checkpoint-*/{COMPLETE}")]
    return max(steps, default=0)


def test_job_requeued_twice_resumes_and_ends_bitwise_equal(reference):
    """Attempt 1 gets the time-limit warning (what `--signal=B:USR1@300` sends, here by scancel) and requeues
    itself; attempt 2 is requeued by `scontrol requeue`; attempt 3 finishes."""
    tmp, _, _ = reference
    run = tmp / "requeued"
    job = submit(tmp, run)
    wait_for(tmp, job, lambda: newest_complete(run) >= REQUEUE_AFTER, f"checkpoint-{REQUEUE_AFTER}")
    first_requeue = time.time()
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True, timeout=30)
    wait_for(tmp, job, lambda: job_info(job).get("Restarts") == "1" and newest_complete(run) >= SECOND_REQUEUE_AFTER,
             f"attempt 2 and checkpoint-{SECOND_REQUEUE_AFTER}")
    second_requeue = time.time()
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)
    info = wait_finished(tmp, job)

    log = job_log(tmp, job)
    assert info["Restarts"] == "2", log
    assert f"time limit near: requeueing job {job}" in log, log
    assert log.count("DUE TO JOB REQUEUE") >= 2, log
    assert f"job {job}, attempt 3," in log, log
    # the summary, printed by the attempt that finished: it resumed from attempt 2's checkpoint
    resumed = re.findall(r"resumed from .*checkpoint-(\d+)", log)
    assert len(resumed) == 1 and SECOND_REQUEUE_AFTER <= int(resumed[0]) < STEPS, log
    assert log.count(f"trained {STEPS} steps") == 1, log  # no attempt before it finished
    # A resumed run keeps the metrics records up to its checkpoint and a fresh start drops them all, so the
    # times at which the kept records were logged show that no attempt started from scratch.
    when = {r["step"]: r["time"] for r in read_metrics(run / "logs" / "metrics.jsonl") if "loss" in r}
    assert when[1] < first_requeue, "attempt 2 or 3 started from scratch"
    assert any(first_requeue < t < second_requeue for t in when.values()), "attempt 3 did not go on from attempt 2"
    assert when[STEPS] > second_requeue
    diffs = run_differences(tmp / "reference", run)
    assert not diffs, "\n".join(diffs[:10])
    assert final_weights(run), "no weights compared"


def test_two_node_job_computes_what_the_one_node_job_does(reference):
    """2 nodes x 1 process (two slurmd on this machine, scripts/slurm-local.sh): srun starts torchrun on both
    nodes, they meet at the first node's rendezvous, and the run equals the 1 node x 2 processes one bitwise."""
    nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True, timeout=30).stdout
    if len(set(nodes.split())) < 2:
        pytest.skip(f"needs a Slurm with 2 nodes (this one has {nodes.split()}); scripts/slurm-local.sh starts 2")
    tmp, _, _ = reference
    job = submit(tmp, tmp / "two_nodes", nodes=2)
    info = wait_finished(tmp, job)
    log = job_log(tmp, job)
    assert info["NumNodes"] == "2", info
    assert f"job {job}, attempt 1, 2 node(s) x 1 process(es)" in log, log
    assert log.count(f"trained {STEPS} steps") == 1, log
    diffs = run_differences(tmp / "reference", tmp / "two_nodes")
    assert not diffs, "\n".join(diffs[:10])
