"""Secrets canary: credentials in the environment or on the command line never reach stdout, logs or files.

One real interpreter runs the CLI commands a user would (show-config, validate, doctor, prepare, train,
eval, and a config error) with canary values in the credential variables that the hub, W&B and friends
read; then every byte printed and every file written under the work dir is searched for the canaries,
the files of the three trackers included (W&B offline run files, MLflow's SQLite store, TensorBoard events).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES

pytestmark = pytest.mark.integration

CANARIES = {
    "HF_TOKEN": "hf_CANARYtokenHF0000000000000000",
    "HUGGING_FACE_HUB_TOKEN": "hf_CANARYhubToken111111111111",
    "WANDB_API_KEY": "CANARYwandb2222222222222222222222",
    "OPENAI_API_KEY": "sk-CANARYopenai333333333333333",
    "AWS_SECRET_ACCESS_KEY": "CANARYaws44444444444444444444",
    "MY_DB_PASSWORD": "CANARYpassword5555",
}
CLI_CANARY = "CANARYcommandLine6666"

DRIVER = """
import sys
from sftpipe.cli import main
commands = [
    ["show-config", "config.yaml"],
    ["doctor"],
    ["validate", "config.yaml"],
    ["prepare", "config.yaml"],
    ["train", "config.yaml"],
    ["eval", "config.yaml"],
    ["show-config", "config.yaml", "--set", "model.hf_token=%s"],
]
for argv in commands:
    print(f"$ sftpipe {argv[0]}", flush=True)
    print(f"exit {main(argv)}", flush=True)
""" % CLI_CANARY


def find_canaries(root: Path, texts: list[str], canaries: list[str]) -> list[str]:
    """Where any canary occurs: in the given texts or in any file under `root` (bytes, UTF-8)."""
    found = [f"output {i}: {c}" for i, text in enumerate(texts) for c in canaries if c in text]
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path}: {c}" for c in canaries if c.encode() in data]
    return found


def test_credentials_never_appear_in_output_or_files(tmp_path, tiny_dir):
    (tmp_path / "config.yaml").write_text(f"""
preset: fast_test
model: {{name_or_path: {tiny_dir}}}
data:
  sources: [{{path: {EXAMPLES / 'prompt_completion' / 'pc_sample.jsonl'}}}]
  output_dir: data
train: {{output_dir: run, max_steps: 2, save_every: 1, report_to: [tensorboard, wandb, mlflow]}}
""")
    # every tracker writes under the work dir: W&B offline (run/logs/wandb), MLflow's SQLite store and artifacts
    env = {**os.environ, **CANARIES, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    proc = subprocess.run([sys.executable, "-c", DRIVER], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("exit 0") == 6 and proc.stdout.count("exit 2") == 1, proc.stdout + proc.stderr
    assert "model.hf_token: unknown key" in proc.stderr
    assert "HF_TOKEN set" in proc.stdout  # the doctor says whether it is set...
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "run" / "final").is_dir() and (tmp_path / "run" / "checkpoints").is_dir()
    assert list((tmp_path / "run" / "logs" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert (tmp_path / "mlflow.db").is_file() and list((tmp_path / "mlruns").rglob("config.json"))
    assert list((tmp_path / "run" / "logs" / "tensorboard").glob("events.out.tfevents.*"))

    canaries = [*CANARIES.values(), CLI_CANARY]
    assert not find_canaries(tmp_path, [proc.stdout, proc.stderr], canaries)
    # negative control: the search finds a canary that did get written
    (tmp_path / "run" / "logs" / "leak.txt").write_text(f"token={CANARIES['HF_TOKEN']}")
    assert find_canaries(tmp_path, [], canaries) == [f"{tmp_path / 'run' / 'logs' / 'leak.txt'}: "
                                                     f"{CANARIES['HF_TOKEN']}"]
