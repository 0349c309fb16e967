import random

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sftpipe.train.checkpoint import COMPLETE, apply_retention, capture_rng, complete_checkpoints, latest_complete


def _fake(root, step, complete=True):
    path = root / "checkpoints" / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if complete:
        (path / COMPLETE).write_text("ok\n")
    return path


def test_incomplete_and_temporary_checkpoints_are_never_picked(tmp_path):
    _fake(tmp_path, 10)
    _fake(tmp_path, 20, complete=False)
    (tmp_path / "checkpoints" / ".tmp-checkpoint-30").mkdir()
    assert latest_complete(tmp_path).name == "checkpoint-10"
    assert latest_complete(tmp_path / "nothing") is None


def test_steps_sort_numerically(tmp_path):
    for step in (9, 10, 100):
        _fake(tmp_path, step)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint-9", "checkpoint-10", "checkpoint-100"]


@settings(max_examples=60, deadline=None)
@given(losses=st.lists(st.floats(0.1, 10.0), min_size=1, max_size=12), limit=st.integers(1, 4))
def test_retention_keeps_newest_and_best(tmp_path_factory, losses, limit):
    root = tmp_path_factory.mktemp("ret")
    best_step, best = None, float("inf")
    for i, loss in enumerate(losses, start=1):
        _fake(root, i)
        if loss < best:
            best_step, best = i, loss
        apply_retention(root / "checkpoints", limit, best_step)
        kept = {int(p.name.split("-")[1]) for p in complete_checkpoints(root)}
        assert i in kept and best_step in kept
        assert len(kept) <= limit + 1
        assert set(range(max(1, i - limit + 1), i + 1)) <= kept


def test_rng_state_round_trips_through_json():
    import json

    from sftpipe.train.checkpoint import restore_rng

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    saved = json.dumps(capture_rng())
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng(json.loads(saved))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
