"""DoRA, rsLoRA and modules_to_save through PEFT: each trains what it should, saves, loads back to the same
logits, and merges within export.logits_atol (LoRA's 1e-4)."""

from __future__ import annotations

import json
import math

import peft
import pytest
import torch

from sftpipe import stages
from sftpipe.data import prepare
from sftpipe.export import merge
from sftpipe.models.loading import load_trained
from sftpipe.train import loop
from tests.conftest import make_config, pc_records, write_jsonl

VARIANTS = {
    "dora": ({"use_dora": True}, "lora_magnitude_vector"),
    "rslora": ({"use_rslora": True}, "lora_B"),
    "modules_to_save": ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, tiny_dir):
    tmp = tmp_path_factory.mktemp("variants")
    source = write_jsonl(tmp / "pc.jsonl", pc_records(10))
    cfg = make_config(tmp, tiny_dir, [{"path": str(source)}], data={"split": {"train": 0.8, "val": 0.2, "test": 0.0}})
    prepare.run(cfg)
    return tmp, source


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_trains_saves_loads_and_merges(variant, data_dir, tiny_dir, tmp_path, monkeypatch):
    data_tmp, source = data_dir
    settings, trained_marker = VARIANTS[variant]
    cfg = make_config(tmp_path, tiny_dir, [{"path": str(source)}],
                      data={"output_dir": str(data_tmp / "data"), "split": {"train": 0.8, "val": 0.2, "test": 0.0}},
                      lora={"dropout": 0.0, "r": 4, "alpha": 8, **settings},
                      train={"max_steps": 3, "lr": 1e-2, "micro_batch_size": 2})
    captured = {}
    real_build = loop.build_trainable_model

    def build_and_snapshot(cfg, device):
        model = real_build(cfg, device)
        captured["model"], captured["before"] = model, {n: p.detach().clone() for n, p in model.named_parameters()}
        return model

    monkeypatch.setattr(loop, "build_trainable_model", build_and_snapshot)
    result = stages.train(cfg, resume="never")

    model, before = captured["model"], captured["before"]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed <= trainable, "a frozen parameter changed"
    assert any(trained_marker in n for n in changed), f"no {trained_marker} parameter trained"
    saved = json.loads((result.final_dir / "adapter_config.json").read_text())
    assert saved["use_dora"] == (variant == "dora") and saved["use_rslora"] == (variant == "rslora")
    if variant == "rslora":
        layer = next(m for m in model.modules() if isinstance(m, peft.tuners.lora.LoraLayer))
        assert layer.scaling["default"] == pytest.approx(8 / math.sqrt(4))  # alpha / sqrt(r), not alpha / r = 2
    if variant == "modules_to_save":
        assert saved["modules_to_save"] == ["lm_head"]

    loaded, tokenizer = load_trained(result.run_dir, torch.device("cpu"), dtype="float32")
    batch = merge.sample_batch(tokenizer)
    model.eval()
    with torch.no_grad():
        live = model(**batch).logits
        assert torch.equal(loaded(**batch).logits, live), "the saved adapter does not load back to the same model"

    merged = merge.run(cfg, str(result.run_dir), str(tmp_path / "merged"))
    assert merged.max_abs_logit_diff <= cfg.export.logits_atol
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    with torch.no_grad():
        mask = batch["attention_mask"].bool()
        assert float((plain(**batch).logits - live).abs()[mask].max()) <= cfg.export.logits_atol
