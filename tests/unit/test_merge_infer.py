import peft
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sftpipe.errors import SftpipeError
from sftpipe.export import merge
from sftpipe.export.merge import sample_batch
from sftpipe.infer.generate import GenerationSettings, generate
from sftpipe.models.loading import load_trained


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
    settings = GenerationSettings(max_new_tokens=8, batch_size=2)
    batched = generate(model, tokenizer, prompts, settings)
    single = [generate(model, tokenizer, [p], GenerationSettings(max_new_tokens=8, batch_size=1))[0] for p in prompts]
    assert batched == single
