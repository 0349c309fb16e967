"""Kill anywhere, on a `train.data` mix of two data dirs: SIGKILL a real `sftpipe train` again and again, restart
it, end bitwise equal (weights and metrics.jsonl, per-dir figures included) to an uninterrupted run.

The chain machinery is `test_kill_resume`'s; here the run trains on two dirs prepared separately with
different templates, one repeated and one subsampled by the weights, so the data position a checkpoint stores
must find the same mixed stream again.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftpipe.data import prepare
from sftpipe.train.faults import POINTS
from tests.conftest import make_config, pc_records, write_jsonl
from tests.integration.test_kill_resume import (
    _check_chain,
    _kill_plan,
    _reference,
    _run_chain,
    _step_seconds,
    _tampered_resume_differs,
)

pytestmark = pytest.mark.integration


def _setup_mix(tmp: Path, tiny_dir: Path, epochs: int) -> Path:
    """Two data dirs of 12 train examples each (ChatML, Instruct), mixed 0.7 / 0.3: the first dir's examples
    repeated, a subset of the second's; 24 examples, 12 micro-batches, 6 optimizer steps per epoch."""
    records = pc_records(30)
    dirs = []
    for name, part, template in (("a", records[:15], "chatml"), ("b", records[15:], "instruct")):
        source = write_jsonl(tmp / name / f"{name}.jsonl", part)
        cfg = make_config(tmp / name, tiny_dir, [{"path": str(source)}],
                          data={"template": template, "split": {"train": 0.8, "val": 0.2, "test": 0.0}})
        prepare.run(cfg)
        dirs.append(cfg.data.output_dir)
    make_config(
        tmp, tiny_dir, [],
        lora={"dropout": 0.1},
        train={"data": [{"dir": dirs[0], "weight": 0.7, "name": "a"}, {"dir": dirs[1], "weight": 0.3, "name": "b"}],
               "method": "lora", "micro_batch_size": 2, "grad_accum": 2, "max_steps": 0, "epochs": epochs,
               "lr": 1e-2, "warmup_ratio": 0.2, "save_every": 2, "save_total_limit": 2, "eval_every": 3},
    )
    return tmp / "config.json"


def _mixed_as_planned(reference: Path) -> None:
    """The reference run really is a mix: both dirs' per-dir figures are logged, the first dir repeated."""
    records = [json.loads(x) for x in (reference / "logs" / "metrics.jsonl").read_text().splitlines()]
    mix = next(r["data_mix"] for r in records if "data_mix" in r)
    assert mix["a"]["epochs"] > 1 > mix["b"]["epochs"]
    assert all(any(f"{key}/{name}" in r for r in records) for key in ("val_loss", "train_tokens") for name in "ab")


def test_kill_a_mixed_run_short(tmp_path, tiny_dir):
    """Default-run form: two kills (a checkpoint renamed but not yet marked complete, and a timed one) and a
    bitwise comparison with the uninterrupted run; the heavy battery below has every failpoint and the control."""
    config = _setup_mix(tmp_path, tiny_dir, epochs=2)
    reference = _reference(config, tmp_path)
    _mixed_as_planned(reference)
    plan = [("failpoint", ("checkpoint.renamed", 2)), ("timed", 1.5 * _step_seconds(reference))]
    chain = _run_chain(tmp_path, config, plan)
    _check_chain(reference, chain, min_kills=1)


@pytest.mark.heavy
def test_kill_a_mixed_run_anywhere(tmp_path, tiny_dir):
    """Every failpoint once plus more at random hit counts, and 6 timed kills (at least 16 landed), and the
    negative control: a resume one micro-batch off is caught by the same comparison."""
    config = _setup_mix(tmp_path, tiny_dir, epochs=8)
    reference = _reference(config, tmp_path)
    _mixed_as_planned(reference)
    plan = _kill_plan(29, list(POINTS), extra=3, timed=6, step_s=_step_seconds(reference))
    chain = _run_chain(tmp_path, config, plan)
    _check_chain(reference, chain, min_kills=16)
    _tampered_resume_differs(reference, chain, tmp_path)
