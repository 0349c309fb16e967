"""Where the model is looked for: the default is what `sftpipe init-tiny` writes, and a model that is not
there gets an error naming the path looked for and a fix that would help (init-tiny only where it would)."""

import shutil

import pytest
import torch

from sftpipe.cli import build_parser, main
from sftpipe.config import ModelConfig, load_config
from sftpipe.errors import SftpipeError
from sftpipe.models.loading import load_model, load_tokenizer
from tests.conftest import EXAMPLES


def test_the_default_model_is_what_init_tiny_writes(tmp_path, monkeypatch, capsys):
    assert str(build_parser().parse_args(["init-tiny"]).out) == ModelConfig().name_or_path == "tiny"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SftpipeError) as info:  # nothing there yet: the error says so and what to run
        load_tokenizer(load_config().model)
    assert str(info.value) == (f"model.name_or_path 'tiny': no such directory ({tmp_path / 'tiny'}). Run `sftpipe "
                               f"init-tiny` in {tmp_path} to build the embedded tiny model there, or set "
                               "model.name_or_path to a Hub model id or a local model directory.")
    assert main(["init-tiny", "--size", "micro", "--corpus", str(EXAMPLES / "qa")]) == 0
    assert "tiny model: tiny" in capsys.readouterr().out
    cfg = load_config().model  # the command it suggested is all it takes
    assert len(load_tokenizer(cfg)) > 0 and load_model(cfg, torch.device("cpu")).config.model_type == "llama"


def test_a_path_inside_a_model_dir_points_to_the_model_not_to_init_tiny(tmp_path, tiny_dir, monkeypatch):
    shutil.copytree(tiny_dir, tmp_path / "tiny")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SftpipeError) as info:
        load_tokenizer(ModelConfig(name_or_path="tiny/model"))  # the old default, after `init-tiny --out tiny`
    message = str(info.value)
    assert message == (f"model.name_or_path 'tiny/model': no such directory ({tmp_path / 'tiny' / 'model'}). "
                       "tiny holds a model: set model.name_or_path: tiny.")
    assert "init-tiny" not in message


@pytest.mark.parametrize(("name", "loader", "expected"), [
    ("./my-llama", load_tokenizer, "no such directory ({dir}). Set model.name_or_path to a Hub model id or a "
                                   "local model directory."),
    ("empty", load_tokenizer, "{dir} holds no tokenizer (none of tokenizer.json, tokenizer_config.json)."),
    ("empty", load_model, "{dir} holds no model (none of config.json)."),
    ("parent", load_model, "{dir} holds no model (none of config.json). parent/model holds one: set "
                           "model.name_or_path: parent/model."),
])
def test_other_missing_models_name_the_path_and_never_suggest_init_tiny(tmp_path, tiny_dir, monkeypatch, name,
                                                                         loader, expected):
    (tmp_path / "empty").mkdir()
    shutil.copytree(tiny_dir, tmp_path / "parent" / "model")
    monkeypatch.chdir(tmp_path)
    directory = (tmp_path / name).resolve()
    with pytest.raises(SftpipeError) as info:
        if loader is load_model:
            load_model(ModelConfig(name_or_path=name), torch.device("cpu"))
        else:
            load_tokenizer(ModelConfig(name_or_path=name))
    message = str(info.value)
    assert message == f"model.name_or_path {name!r}: " + expected.format(dir=directory), message
    assert "init-tiny" not in message
