"""Progress off a terminal is whole lines (step, loss, tokens/s, ETA), never a bar redrawn with '\r'."""

import io
import re

from tqdm.auto import tqdm

from sftpipe import stages
from sftpipe.train.progress import ProgressLines, progress
from tests.conftest import make_config


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_progress_is_plain_lines_every_so_often():
    now = {"t": 0.0}
    out = io.StringIO()
    lines = ProgressLines(total=10, initial=0, every_s=30, stream=out, clock=lambda: now["t"])
    for step in range(1, 11):
        now["t"] = step * 10.0
        lines.set_postfix(loss=f"{1 / step:.4f}", tok_s="500")
        lines.update(1)
    printed = out.getvalue().splitlines()
    # the first step, then every 30 s (steps 4, 7, 10), and the last one
    assert [re.match(r"train step (\d+)/10", line).group(1) for line in printed] == ["1", "4", "7", "10"]
    assert printed[1] == "train step 4/10 (40%), loss 0.2500, 500 tokens/s, elapsed 00:40, ETA 01:00"
    assert printed[-1].endswith("ETA 00:00") and "\r" not in out.getvalue()


def test_a_terminal_gets_a_bar_and_disabled_progress_prints_nothing():
    assert isinstance(progress(total=3, initial=0, enabled=True, every_s=30, stream=Terminal()), tqdm)
    assert isinstance(progress(total=3, initial=0, enabled=True, every_s=30, stream=io.StringIO()), ProgressLines)
    out = io.StringIO()
    bar = progress(total=3, initial=0, enabled=False, every_s=30, stream=out)
    bar.update(1)
    bar.close()
    assert out.getvalue() == ""


def test_training_logs_plain_progress_lines_when_stderr_is_not_a_terminal(lora_run, tmp_path, capsys):
    cfg, _ = lora_run
    run_cfg = make_config(tmp_path, cfg.model.name_or_path, [s.model_dump() for s in cfg.data.sources],
                          data={"output_dir": cfg.data.output_dir},
                          train={"progress_bar": True, "progress_every_s": 0, "max_steps": 3})
    capsys.readouterr()
    stages.train(run_cfg, resume="never")
    err = capsys.readouterr().err  # pytest's capture is not a terminal
    assert "\r" not in err
    steps = [line for line in err.splitlines() if line.startswith("train step ")]
    assert [line.split()[2] for line in steps] == ["1/3", "2/3", "3/3"]
    assert all(re.search(r"loss \d+\.\d{4}, \d+ tokens/s, elapsed \S+, ETA \S+$", line) for line in steps)
