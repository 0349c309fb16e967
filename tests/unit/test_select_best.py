"""train.select_best: final/ holds the best checkpoint's weights, bitwise; off, final/ holds the last step's."""

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from sftpipe import stages
from sftpipe.cli.report import print_train
from sftpipe.contracts.checkpoint import weight_files
from sftpipe.contracts.run_dir import RunDir
from sftpipe.data import prepare
from sftpipe.errors import SftpipeError
from sftpipe.train.tracking import read_metrics
from tests.conftest import make_config

STEPS = 6
# A learning rate far too high for a full fine-tune of the tiny model: validation loss falls, then climbs, so the last
# step is not the best one.
DIVERGING = {"method": "full", "max_steps": STEPS, "lr": 0.05, "scheduler": "constant", "eval_every": 1,
             "save_every": 1, "save_total_limit": 1}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_dir, chat_sources):
    tmp = tmp_path_factory.mktemp("select_best")
    cfg = make_config(tmp, tiny_dir, chat_sources)
    prepare.run(cfg)
    return tmp, cfg


def _train(prepared, tiny_dir, chat_sources, name, **train):
    tmp, cfg = prepared
    run_cfg = make_config(tmp / name, tiny_dir, chat_sources, data={"output_dir": cfg.data.output_dir},
                          train={"output_dir": str(tmp / name / "run"), **DIVERGING, **train}, lora={"dropout": 0.0})
    return stages.train(run_cfg, resume="never")


def _weights(path: Path) -> dict:
    return {k: v for f in weight_files(path) for k, v in load_file(f).items()}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def _val_losses(run_dir: Path) -> dict[int, float]:
    return {m["step"]: m["val_loss"] for m in read_metrics(RunDir(run_dir).metrics) if "val_loss" in m and m["step"]}


def test_select_best_puts_the_lowest_val_loss_checkpoint_in_final(prepared, tiny_dir, chat_sources, capsys):
    result = _train(prepared, tiny_dir, chat_sources, "best", select_best="val_loss")
    val = _val_losses(result.run_dir)
    best = min(val, key=val.get)
    assert sorted(val) == list(range(1, STEPS + 1)) and best != STEPS, f"the run must not end at its best: {val}"
    checkpoints = RunDir(result.run_dir).checkpoints
    assert _equal(_weights(result.final_dir), _weights(checkpoints / f"checkpoint-{best}"))
    assert not _equal(_weights(result.final_dir), _weights(checkpoints / f"checkpoint-{STEPS}"))
    final = RunDir(result.run_dir).manifest.final
    assert (final.step, final.selected_by, final.value) == (best, "val_loss", val[best])
    assert result.final == final
    print_train(result)
    assert f"the checkpoint with the best val_loss: step {best}" in capsys.readouterr().out
    assert f"final/ holds the weights of step {best}, the best checkpoint by val_loss ({val[best]:.4f})" in \
        RunDir(result.run_dir).report.read_text()

    # control: the same run with select_best off keeps the last step in final/; the trajectory is the same
    control = _train(prepared, tiny_dir, chat_sources, "last")
    assert _val_losses(control.run_dir) == val
    last = RunDir(control.run_dir).checkpoints / f"checkpoint-{STEPS}"
    assert _equal(_weights(control.final_dir), _weights(last))
    assert _equal(_weights(last), _weights(checkpoints / f"checkpoint-{STEPS}"))
    final = RunDir(control.run_dir).manifest.final
    assert (final.step, final.selected_by, final.value) == (STEPS, "last", None)
    print_train(control)
    assert f"the last step's weights, step {STEPS}" in capsys.readouterr().out


@pytest.mark.parametrize(("eval_every", "save_every", "refused"), [(2, 3, True), (0, 2, True), (2, 4, False),
                                                                   (0, 0, False)])
def test_select_best_needs_a_validation_at_every_checkpoint(tmp_path, tiny_dir, chat_sources, eval_every, save_every,
                                                            refused):
    def load():
        return make_config(tmp_path, tiny_dir, chat_sources, train={
            "select_best": "val_loss", "eval_every": eval_every, "save_every": save_every})

    if refused:
        with pytest.raises(SftpipeError, match="set eval_every to a divisor of save_every"):
            load()
    else:
        assert load().train.select_best == "val_loss"


def test_select_best_without_a_val_split_is_refused(tmp_path, tiny_dir, chat_sources):
    cfg = make_config(tmp_path, tiny_dir, chat_sources, data={"split": {"train": 0.9, "val": 0.0, "test": 0.1}},
                      train={"select_best": "val_loss"})
    prepare.run(cfg)
    with pytest.raises(SftpipeError, match="has no val split"):
        stages.train(cfg, resume="never")


def test_a_run_manifest_written_before_final_was_recorded_still_reads(lora_run):
    _, result = lora_run
    run = RunDir(result.run_dir)
    values = json.loads(run.manifest_path.read_text())
    assert values["final"]["selected_by"] == "last"
    del values["final"]
    run.manifest_path.write_text(json.dumps(values))
    assert run.manifest.final is None
