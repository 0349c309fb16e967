"""Security: no shell, no unpickling, no remote code unless asked, secrets redacted.

Static rules are checked over the AST of every module under src/ (each rule with a negative control on a
snippet that breaks it). Behaviour is checked with canaries: pickles whose loading would create a file,
planted in checkpoints and model dirs, and a model dir shipping custom code that would do the same.
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import torch

from sftpipe import stages
from sftpipe.config import Config, ModelConfig
from sftpipe.config.loader import _describe, dump_config
from sftpipe.contracts.checkpoint import COMPLETE, file_digests
from sftpipe.errors import SftpipeError
from sftpipe.models.loading import load_model, load_trained
from sftpipe.redact import REDACTED, is_secret_key, redact
from sftpipe.contracts.checkpoint import COMPLETE, file_digests
from tests.conftest import REPO

SRC = REPO / "src" / "sftpipe"
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "_UniqueKeyLoader"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_const(node: ast.expr | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def violations(source: str) -> list[str]:
    """Every call in `source` that breaks a rule: shell, unsafe deserialization, remote code, eval/exec."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        shell = _keyword(node, "shell")
        if shell is not None and not _is_const(shell, False):
            found.append(f"line {node.lineno}: {name}(shell=...)")
        if name in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput", "eval", "exec"):
            found.append(f"line {node.lineno}: {name}()")
        if name == "torch.load" and not _is_const(_keyword(node, "weights_only"), True):
            found.append(f"line {node.lineno}: torch.load without weights_only=True")
        if name.split(".")[0] in ("pickle", "dill", "cloudpickle", "marshal", "shelve") and not name.endswith(
                "Error") or name in (
                "joblib.load", "pd.read_pickle", "pandas.read_pickle"):
            found.append(f"line {node.lineno}: {name}() deserializes pickles")
        if name.endswith("np.load") or name == "numpy.load":
            if not _is_const(_keyword(node, "allow_pickle"), False) and _keyword(node, "allow_pickle") is not None:
                found.append(f"line {node.lineno}: np.load(allow_pickle=...)")
        if name in ("yaml.load", "yaml.load_all"):
            loader = _keyword(node, "Loader")
            if _dotted(loader).split(".")[-1] not in SAFE_YAML_LOADERS if loader is not None else True:
                found.append(f"line {node.lineno}: {name} without a safe Loader")
        if name in ("yaml.unsafe_load", "yaml.full_load"):
            found.append(f"line {node.lineno}: {name}")
        if _is_const(_keyword(node, "trust_remote_code"), True):
            found.append(f"line {node.lineno}: trust_remote_code=True")
    return found


def test_source_tree_breaks_no_rule():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 30
    found = {str(f.relative_to(REPO)): v for f in files if (v := violations(f.read_text(encoding="utf-8")))}
    assert not found, found


BREAKING = [
    "subprocess.run('ls', shell=True)",
    "subprocess.Popen(cmd, shell=flag)",
    "os.system('ls')",
    "torch.load(path)",
    "torch.load(path, weights_only=False)",
    "pickle.loads(blob)",
    "pickle.Unpickler(fh).load()",
    "yaml.load(text)",
    "yaml.load(text, Loader=yaml.Loader)",
    "yaml.unsafe_load(text)",
    "np.load(path, allow_pickle=True)",
    "AutoModelForCausalLM.from_pretrained(name, trust_remote_code=True)",
    "eval(user_text)",
]


@pytest.mark.parametrize("snippet", BREAKING)
def test_each_rule_catches_what_it_forbids(snippet):
    assert violations(snippet), f"{snippet!r} went unnoticed"


def test_allowed_forms_pass():
    assert not violations("subprocess.run(['git', 'rev-parse'], shell=False)\n"
                          "torch.load(p, weights_only=True)\nyaml.load(t, Loader=_UniqueKeyLoader)\n"
                          "raise pickle.UnpicklingError('refused')\n"
                          "AutoTokenizer.from_pretrained(n, trust_remote_code=cfg.trust_remote_code)")


def test_unique_key_loader_is_a_safe_loader():
    import yaml

    from sftpipe.config.loader import _UniqueKeyLoader

    assert issubclass(_UniqueKeyLoader, yaml.SafeLoader)


class _Canary:
    """Unpickling this creates `path`: proof that a pickle ran."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _plant(path: Path, canary: Path) -> Path:
    torch.save({"state": _Canary(canary)}, path)
    return path


def test_canary_pickle_is_live(tmp_path):
    """Negative control: the planted file does run code when unpickled the unsafe way."""
    canary = tmp_path / "RAN"
    planted = _plant(tmp_path / "optimizer.pt", canary)
    with pytest.raises(Exception):  # noqa: B017 (weights_only refuses, whatever its exception type)
        torch.load(planted, weights_only=True)
    assert not canary.exists()
    torch.load(planted, weights_only=False)  # what a careless resume would do
    assert canary.exists()


@pytest.fixture
def finished_run(tmp_path, lora_run):
    """A copy of the shared 4-step LoRA run (its checkpoint-4 and config), final/ removed."""
    cfg, result = lora_run
    run_dir = tmp_path / "run"
    shutil.copytree(result.run_dir, run_dir)
    shutil.rmtree(run_dir / "final")
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"output_dir": str(run_dir)})}), run_dir


def test_pickles_planted_in_a_checkpoint_never_run(finished_run, tmp_path):
    cfg, run_dir = finished_run
    canary = tmp_path / "RAN"
    ckpt = run_dir / "checkpoints" / "checkpoint-4"
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin", "pytorch_model.bin",
                 "adapter_model.bin"):
        _plant(ckpt / name, canary)
    result = stages.train(cfg, resume="auto")
    assert result.resumed_from == ckpt and (run_dir / "final").is_dir()
    assert not canary.exists()


def test_pickle_in_place_of_weights_is_refused_without_running(finished_run, tmp_path):
    cfg, run_dir = finished_run
    canary = tmp_path / "RAN"
    ckpt = run_dir / "checkpoints" / "checkpoint-4"
    for name in ("adapter_model.safetensors", "optimizer.safetensors"):
        _plant(ckpt / name, canary)
    marker = json.loads((ckpt / COMPLETE).read_text())
    (ckpt / COMPLETE).write_text(json.dumps({**marker, "files": file_digests(ckpt)}))  # passes the checksums
    with pytest.raises(SftpipeError, match=r"adapter_model.safetensors: corrupt or truncated safetensors file"):
        stages.train(cfg, resume=str(ckpt))
    assert not canary.exists()


def test_model_and_adapter_dirs_load_only_safetensors(tmp_path, tiny_dir, lora_run):
    canary = tmp_path / "RAN"
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_dir, model_dir)
    (model_dir / "model.safetensors").unlink()
    _plant(model_dir / "pytorch_model.bin", canary)
    with pytest.raises(SftpipeError, match="cannot load the model"):
        load_model(ModelConfig(name_or_path=str(model_dir)), torch.device("cpu"))

    _, result = lora_run
    adapter_dir = tmp_path / "adapter"
    shutil.copytree(result.final_dir, adapter_dir)
    (adapter_dir / "adapter_model.safetensors").unlink()
    _plant(adapter_dir / "adapter_model.bin", canary)
    with pytest.raises(SftpipeError, match="no adapter_model.safetensors"):
        load_trained(adapter_dir, torch.device("cpu"))
    assert not canary.exists()


@pytest.fixture
def remote_code_model(tmp_path, tiny_dir):
    """A model dir whose config asks for custom code; importing that code creates a canary file."""
    model_dir = tmp_path / "remote"
    shutil.copytree(tiny_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config.update(model_type="canary_llama", auto_map={"AutoConfig": "canary.CanaryConfig",
                                                       "AutoModelForCausalLM": "canary.CanaryModel"})
    (model_dir / "config.json").write_text(json.dumps(config))
    (model_dir / "canary.py").write_text(
        f"from pathlib import Path\nPath({str(tmp_path / 'RAN')!r}).write_text('ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class CanaryConfig(LlamaConfig):\n    model_type = 'canary_llama'\n"
        "class CanaryModel(LlamaForCausalLM):\n    config_class = CanaryConfig\n")
    return model_dir


def test_remote_code_runs_only_when_the_config_says_so(tmp_path, remote_code_model, monkeypatch):
    assert Config().model.trust_remote_code is False
    with pytest.raises(SftpipeError, match="contains custom code"):
        load_model(ModelConfig(name_or_path=str(remote_code_model)), torch.device("cpu"))
    assert not (tmp_path / "RAN").exists()
    # negative control: set explicitly, the shipped code does run (its module cache kept under tmp_path)
    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    load_model(ModelConfig(name_or_path=str(remote_code_model), trust_remote_code=True), torch.device("cpu"))
    assert (tmp_path / "RAN").exists()


@pytest.mark.parametrize(("key", "secret"), [
    ("hf_token", True), ("HF_TOKEN", True), ("WANDB_API_KEY", True), ("api_key", True), ("password", True),
    ("db_password", True), ("client_secret", True), ("token", True), ("aws_secret_access_key", True),
    ("GOOGLE_APPLICATION_CREDENTIALS", True), ("eos_token", False), ("pad_token", False),
    ("max_new_tokens", False), ("target_modules", False), ("tokenizer", False), ("monkey", False),
])
def test_secret_names(key, secret):
    assert is_secret_key(key) is secret


def test_redact_reaches_nested_values_and_leaves_others():
    value = {"wandb": {"api_key": "CANARY1", "project": "p"}, "sources": [{"hf_token": "CANARY2", "path": "a"}],
             "token": None, "lr": 1e-3}
    out = redact(value)
    assert out == {"wandb": {"api_key": REDACTED, "project": "p"}, "sources": [{"hf_token": REDACTED, "path": "a"}],
                   "token": None, "lr": 1e-3}
    assert value["wandb"]["api_key"] == "CANARY1"  # a copy: the live config keeps its value


def test_saved_config_and_config_errors_never_show_secrets(tmp_path):
    from pydantic import BaseModel, ConfigDict

    class Tracking(BaseModel):
        model_config = ConfigDict(extra="forbid")
        api_key: str = "CANARY-KEY"
        hub_token: str = "CANARY-TOKEN"
        project: str = "visible"

    class WithTracking(Config):
        tracking: Tracking = Tracking()

    text = dump_config(WithTracking())
    assert "CANARY" not in text and "visible" in text and text.count(REDACTED) == 2
    error = _describe({"loc": ("tracking", "api_key"), "type": "string_type", "msg": "Input should be a valid "
                       "string", "input": "CANARY-BAD"}, [])
    assert "CANARY" not in error and "tracking.api_key" in error
    # negative control: a field not named like a secret is shown, so the check above can fail
    assert "CANARY-BAD" in _describe({"loc": ("tracking", "project"), "type": "string_type", "msg": "m",
                                      "input": "CANARY-BAD"}, [])


def test_a_planted_dcp_metadata_never_runs(tmp_path):
    """FSDP checkpoints hold DCP's `.metadata`, a pickle: sftpipe reads it with an allow-list, so a planted one
    is refused without running, while a real one loads its shards."""
    import pickle as pickle_module

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    from sftpipe.train.dcp_reader import METADATA_FILE, SafeFileSystemReader

    real = tmp_path / "real"
    saved = {"model": {"w": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3)}, "step": {"n": 3}}
    dcp.save(saved, checkpoint_id=real)
    loaded = {"model": {"w": torch.zeros(2, 3, dtype=torch.bfloat16)}, "step": {"n": 0}}
    dcp.load(loaded, storage_reader=SafeFileSystemReader(real))
    assert torch.equal(loaded["model"]["w"], saved["model"]["w"]) and loaded["step"]["n"] == 3

    canary = tmp_path / "RAN"
    planted = tmp_path / "planted"
    shutil.copytree(real, planted)
    (planted / METADATA_FILE).write_bytes(pickle_module.dumps(_Canary(canary)))
    with pytest.raises(CheckpointException, match=r"(builtins|io)\.open is not allowed in a checkpoint's \.metadata"):
        dcp.load(loaded, storage_reader=SafeFileSystemReader(planted))
    assert not canary.exists()
    with pytest.raises(CheckpointException):  # control: DCP's own reader runs it (then finds no metadata)
        dcp.load(loaded, checkpoint_id=planted)
    assert canary.exists()
