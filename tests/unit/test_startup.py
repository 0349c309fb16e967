"""Commands start without the libraries they do not use: torch, transformers and datasets take seconds to
import. `--help` and `show-config` need none of them; `prepare` of the tiny model's data needs no torch.
(benchmarks/startup.py measures the times.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

import sftpipe
from sftpipe.config import ModelConfig
from sftpipe.contracts.data_dir import tokenizer_sha256
from sftpipe.models.loading import declares_generic_tokenizer, load_tokenizer
from tests.conftest import EXAMPLES

HEAVY = {"torch", "transformers", "datasets"}
# Runs the CLI, then reports the top-level packages it imported (on stderr: the command prints on stdout).
PROBE = """
import json, sys
from sftpipe.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print("MODULES " + json.dumps(sorted({name.split(".")[0] for name in sys.modules})), file=sys.stderr)
sys.exit(code)
"""


def imported_by(*args: str, cwd: Path) -> set[str]:
    src = Path(sftpipe.__file__).resolve().parents[1]  # the sftpipe under test, installed or not
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(src)})
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stderr.rsplit("MODULES ", 1)[1]))


def test_help_and_show_config_import_no_heavy_library(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("train: {lr: 1.0e-4}\n")
    assert "argparse" in imported_by("--help", cwd=tmp_path)  # control: the probe sees what is imported
    assert imported_by("--help", cwd=tmp_path) & HEAVY == set()
    assert imported_by("prepare", "--help", cwd=tmp_path) & HEAVY == set()
    assert imported_by("show-config", str(config), "--set", "eval.max_new_tokens=8", cwd=tmp_path) & HEAVY == set()
    assert imported_by("show-config", "--help-fields", cwd=tmp_path) & HEAVY == set()


def test_prepare_of_the_tiny_model_imports_no_torch(tmp_path, tiny_dir):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "model": {"name_or_path": str(tiny_dir)},
        "data": {"sources": [{"path": str(EXAMPLES / "alpaca" / "alpaca_sample.jsonl")}],
                 "output_dir": str(tmp_path / "data")},
    }))
    modules = imported_by("prepare", str(config), cwd=tmp_path)
    assert {"transformers", "datasets"} <= modules and "torch" not in modules
    assert (tmp_path / "data" / "manifest.json").is_file()


def copy_tokenizer(tiny_dir: Path, out: Path, change: dict[str, dict], model: bool = True) -> Path:
    """The tiny model's tokenizer files (and config.json when `model`), with `change` merged into the JSON ones."""
    out.mkdir()
    names = ("tokenizer.json", "tokenizer_config.json", "config.json") if model else ("tokenizer.json",
                                                                                      "tokenizer_config.json")
    for name in names:
        if name == "tokenizer.json":
            (out / name).write_bytes((tiny_dir / name).read_bytes())
        else:
            (out / name).write_text(json.dumps({**json.loads((tiny_dir / name).read_text()), **change.get(name, {})}))
    return out


@pytest.mark.parametrize("declared,model", [("TokenizersBackend", True), ("PreTrainedTokenizerFast", True),
                                            ("TokenizersBackend", False)])
def test_tokenizer_loaded_without_auto_tokenizer_is_the_one_auto_tokenizer_loads(tmp_path, tiny_dir, declared, model):
    """A generic tokenizer (the tiny model's) is loaded as the class it declares, skipping AutoTokenizer (whose
    model-config lookup imports torch): AutoTokenizer gives the same tokenizer, so data prepared either way
    matches."""
    path = copy_tokenizer(tiny_dir, tmp_path / "tok", {"tokenizer_config.json": {"tokenizer_class": declared}}, model)
    assert declares_generic_tokenizer(str(path))
    ours = load_tokenizer(ModelConfig(name_or_path=str(path)))
    auto = AutoTokenizer.from_pretrained(path)
    assert type(ours) is type(auto) and tokenizer_sha256(ours) == tokenizer_sha256(auto)
    assert ours.chat_template == auto.chat_template and ours.init_kwargs == auto.init_kwargs
    text = "<|im_start|>user\nWrite `foldr` in Haskell.<|im_end|>\n"
    assert ours(text).input_ids == auto(text).input_ids


@pytest.mark.parametrize("change", [
    {"tokenizer_config.json": {"tokenizer_class": "Qwen2Tokenizer"}},
    {"tokenizer_config.json": {"auto_map": {"AutoTokenizer": ["x.Tok", None]}}},
    {"config.json": {"model_type": "qwen2"}},  # AutoTokenizer overrides the declared class for some model types
])
def test_other_tokenizers_go_through_auto_tokenizer(tmp_path, tiny_dir, change):
    assert not declares_generic_tokenizer(str(copy_tokenizer(tiny_dir, tmp_path / "tok", change)))
    assert not declares_generic_tokenizer("org/hub-model-id")
