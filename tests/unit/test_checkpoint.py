import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sftpipe.contracts.checkpoint import COMPLETE, apply_retention, complete_checkpoints, latest_complete
from sftpipe.train.checkpoint import capture_rng


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


@settings(max_examples=60, deadline=None)
@given(losses=st.lists(st.floats(0.1, 10.0), min_size=1, max_size=10), limit=st.integers(1, 3),
       future=st.lists(st.integers(11, 30), max_size=3, unique=True))
def test_retention_leaves_checkpoints_past_the_current_step_alone(tmp_path_factory, losses, limit, future):
    """After resuming from an older checkpoint, newer ones (a branch the run went back from) are not counted."""
    root = tmp_path_factory.mktemp("ret")
    for step in future:
        _fake(root, step)
    best_step, best = None, float("inf")
    for i, loss in enumerate(losses, start=1):
        _fake(root, i)
        if loss < best:
            best_step, best = i, loss
        apply_retention(root / "checkpoints", limit, best_step, current_step=i)
        kept = {int(p.name.split("-")[1]) for p in complete_checkpoints(root)}
        assert set(future) <= kept
        current = kept - set(future)
        assert i in current and best_step in current and len(current) <= limit + 1


def test_deleting_a_checkpoint_unmarks_it_first(tmp_path, monkeypatch):
    from sftpipe.contracts import checkpoint

    path = _fake(tmp_path, 5)
    (path / "adapter_model.safetensors").write_bytes(b"x")

    def killed(target, *args, **kwargs):  # the process dies before the files are gone
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.remove_checkpoint(path)
    assert (path / "adapter_model.safetensors").exists() and latest_complete(tmp_path) is None


def test_leftovers_of_interrupted_saves_are_cleared(tmp_path):
    from sftpipe.contracts.checkpoint import remove_incomplete

    keep = _fake(tmp_path, 2)
    unmarked = _fake(tmp_path, 4, complete=False)
    tmp_dir = tmp_path / "checkpoints" / ".tmp-checkpoint-6"
    tmp_dir.mkdir()
    assert sorted(remove_incomplete(tmp_path / "checkpoints")) == sorted([unmarked, tmp_dir])
    assert keep.exists() and not unmarked.exists() and not tmp_dir.exists()


def _adam_after_steps():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    groups = [{"params": [model[0].weight], "weight_decay": 0.1}, {"params": [model[0].bias, *model[1].parameters()],
                                                                    "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=1e-2, betas=(0.8, 0.95))
    for _ in range(3):
        model(torch.randn(2, 4)).pow(2).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def test_optimizer_state_round_trips_through_safetensors_and_json(tmp_path):
    from sftpipe.train.optim_state import read_optimizer, save_optimizer

    torch.manual_seed(0)
    _, optimizer = _adam_after_steps()
    save_optimizer(optimizer, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optimizer.json", "optimizer.safetensors"]
    torch.manual_seed(1)
    _, other = _adam_after_steps()  # same shapes, other values
    other.load_state_dict(read_optimizer(tmp_path, other))
    saved, restored = optimizer.state_dict(), other.state_dict()
    assert saved["param_groups"] == restored["param_groups"]
    assert isinstance(restored["param_groups"][0]["betas"], tuple)
    for index, state in saved["state"].items():
        for name, value in state.items():
            assert torch.equal(value, restored["state"][index][name]), (index, name)
    # negative control: the comparison sees a difference when there is one
    _, third = _adam_after_steps()
    assert not torch.equal(third.state_dict()["state"][0]["exp_avg"], saved["state"][0]["exp_avg"])


def test_optimizer_state_that_json_cannot_hold_is_refused(tmp_path):
    from sftpipe.errors import SftpipeError
    from sftpipe.train.optim_state import save_optimizer

    _, optimizer = _adam_after_steps()
    optimizer.param_groups[0]["hook"] = object()
    with pytest.raises(SftpipeError, match="no pickles"):
        save_optimizer(optimizer, tmp_path)
