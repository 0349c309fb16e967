import json
import shutil
from pathlib import Path

import peft
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from sftpipe import stages
from sftpipe.cli import main
from sftpipe.contracts.checkpoint import COMPLETE, verify_checkpoint
from sftpipe.data import prepare
from sftpipe.errors import SftpipeError
from sftpipe.evaluate.generation import DecodingSettings, generate_samples
from sftpipe.export import merge
from sftpipe.export.merge import sample_batch
from sftpipe.models.loading import load_trained
from sftpipe.contracts.checkpoint import COMPLETE, verify_checkpoint
from tests.conftest import make_config


def test_merged_logits_equal_adapter_logits(lora_run, tmp_path, tiny_dir):
    cfg, result = lora_run
    out = tmp_path / "merged"
    merged = merge.run(cfg, str(result.run_dir), str(out))
    assert merged.max_abs_logit_diff <= cfg.export.logits_atol
    # independent check with plain transformers + peft loading
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = sample_batch(tokenizer)
    merged_model = AutoModelForCausalLM.from_pretrained(out).eval()
    adapter_model = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir),
                                                   str(result.final_dir)).eval()
    base_model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    with torch.no_grad():
        m, a, b = (x(**batch).logits for x in (merged_model, adapter_model, base_model))
    mask = batch["attention_mask"].bool()
    assert (m - a).abs()[mask].max() <= 1e-4
    assert (b - a).abs()[mask].max() > 1e-3  # control: the adapter does change the logits
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(result.final_dir).chat_template


def test_merge_refuses_when_logits_differ(lora_run, tmp_path):
    cfg, result = lora_run
    strict = cfg.model_copy(update={"export": cfg.export.model_copy(update={"logits_atol": 1e-12})})
    out = tmp_path / "never"
    with pytest.raises(SftpipeError, match="merge check failed"):
        merge.run(strict, str(result.run_dir), str(out))
    assert not out.exists()


def test_merge_needs_an_adapter(lora_run, tiny_dir, tmp_path):
    cfg, _ = lora_run
    with pytest.raises(SftpipeError, match="not a LoRA adapter"):
        merge.run(cfg, str(tiny_dir), str(tmp_path / "x"))


def test_generation_is_batched_and_left_padded(lora_run):
    cfg, result = lora_run
    model, tokenizer = load_trained(result.run_dir, torch.device("cpu"))
    prompts = [[{"role": "user", "content": "Hi"}],
               [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Explain folds " * 5}]]
    settings = DecodingSettings(max_new_tokens=8, batch_size=2)
    batched = [samples[0].text for samples in generate_samples(model, tokenizer, prompts, settings)]
    single = [generate_samples(model, tokenizer, [p], DecodingSettings(max_new_tokens=8, batch_size=1))[0][0].text
              for p in prompts]
    assert batched == single


def _cli_config(cfg) -> list[str]:
    """The config file a conftest run was made from, as CLI arguments."""
    return [str(Path(cfg.train.output_dir).parent / "config.json"), "--preset", "fast_test"]


def test_a_checkpoint_serves_eval_infer_and_merge_on_its_own(lora_run, tmp_path, capsys):
    """A checkpoint copied away from its run dir (no final/ beside it) is enough for every stage."""
    cfg, result = lora_run
    ckpt = shutil.copytree(result.run_dir / "checkpoints" / f"checkpoint-{result.steps}", tmp_path / "ckpt")
    config = _cli_config(cfg)
    assert main(["eval", *config, "--model", str(ckpt), "--out", str(tmp_path / "eval"),
                 "--set", "eval.generation.max_prompts=2"]) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["loss"] > 0
    assert main(["infer", "--model", str(ckpt), "--prompt", "Hi", "--max-new-tokens", "4"]) == 0
    assert main(["merge", *config, "--adapter", str(ckpt), "--out", str(tmp_path / "merged")]) == 0
    capsys.readouterr()
    # the checkpoint of the last step is the model of final/, prompted the same way
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "sftpipe.json"):
        assert (ckpt / name).read_bytes() == (result.final_dir / name).read_bytes(), name
    assert AutoTokenizer.from_pretrained(ckpt).chat_template == AutoTokenizer.from_pretrained(
        result.final_dir).chat_template
    verify_checkpoint(ckpt)  # the inference files are listed in the COMPLETE marker too
    listed = json.loads((ckpt / COMPLETE).read_text())["files"]
    assert {"tokenizer.json", "generation_config.json"} <= set(listed)


def test_a_full_fine_tune_checkpoint_serves_infer(tmp_path, tiny_dir, chat_sources, capsys):
    cfg = make_config(tmp_path, tiny_dir, chat_sources, train={"method": "full", "max_steps": 2, "save_every": 1,
                                                                 "save_total_limit": 2})
    prepare.run(cfg)
    result = stages.train(cfg, resume="never")
    ckpt = result.run_dir / "checkpoints" / "checkpoint-1"
    assert main(["infer", "--model", str(ckpt), "--prompt", "Hi", "--max-new-tokens", "4"]) == 0, \
        capsys.readouterr().err
    assert GenerationConfig.from_pretrained(ckpt).eos_token_id == \
        GenerationConfig.from_pretrained(result.final_dir).eos_token_id
