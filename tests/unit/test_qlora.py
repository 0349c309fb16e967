"""QLoRA on the tiny model, on CPU (bitsandbytes' 4-bit layers run there): what trains and what stays frozen,
exact resume, merge into the dequantized base with its logits check, and loading with plain PEFT.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from sftpipe import stages
from sftpipe.contracts.model_dir import read_final_info
from sftpipe.data import prepare
from sftpipe.export import merge
from sftpipe.train import loop
from tests.conftest import make_config, pc_records, write_jsonl
from tests.run_compare import run_differences

bnb = pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes: pip install 'sftpipe[qlora]'")

# Measured on the tiny model (logits up to 0.66): max |merged - adapter on the 4-bit base| = 3.0e-7 in fp32, since
# the adapter is merged into the dequantized weights the 4-bit layers multiply by (only the order of the fp32 sums
# differs), so LoRA's tolerance holds. Merging into the original weights instead is off by 8.3e-2 (the 4-bit
# quantization error), and the merged model cast to bf16 by 3.1e-3, to fp16 by 3.2e-4 (weight rounding).
QLORA_MERGE_ATOL = 1e-4


def _config(tmp, tiny_dir, data_dir, name, **train):
    source = write_jsonl(tmp / "pc.jsonl", pc_records(12))
    return make_config(tmp / name, tiny_dir, [{"path": str(source)}],
                       data={"output_dir": str(data_dir), "split": {"train": 0.8, "val": 0.2, "test": 0.0}},
                       lora={"dropout": 0.1, "r": 4},
                       train={"method": "qlora", "micro_batch_size": 2, "grad_accum": 2, "max_steps": 4,
                              "lr": 1e-2, "save_every": 1, "save_total_limit": 10, "eval_every": 0,
                              "output_dir": str(tmp / name / "run"), **train})


@pytest.fixture(scope="module")
def qlora_reference(tmp_path_factory, tiny_dir):
    """A 4-step QLoRA run checkpointed at every step, with the live model captured before and after training."""
    tmp = tmp_path_factory.mktemp("qlora")
    cfg = _config(tmp, tiny_dir, tmp / "data", "reference")
    prepare.run(cfg)
    captured = {}
    real_build = loop.build_trainable_model

    def build_and_snapshot(cfg, device):
        model = real_build(cfg, device)
        captured["model"] = model
        captured["before"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        return model

    loop.build_trainable_model = build_and_snapshot
    try:
        result = stages.train(cfg, resume="never")
    finally:
        loop.build_trainable_model = real_build
    return tmp, cfg, result, captured


def test_adapters_train_and_the_4bit_base_stays_frozen(qlora_reference):
    _, _, result, captured = qlora_reference
    model, before = captured["model"], captured["before"]
    quantized = {n for n, p in model.named_parameters() if isinstance(p, bnb.nn.Params4bit)}
    assert len(quantized) == 14  # 7 linear layers x 2 blocks, the LM head stays in full precision
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert changed == {n for n in trainable if "lora_B" in n or "lora_A" in n}, "every adapter matrix trains"
    assert not changed & quantized, "a 4-bit base weight changed"
    assert all(p.dtype == torch.uint8 for n, p in model.named_parameters() if n in quantized)
    assert result.total_params > 10 * result.trainable_params  # 4-bit weights counted as the params they hold


def test_final_records_the_quantization(qlora_reference):
    _, cfg, result, _ = qlora_reference
    info = read_final_info(result.final_dir)
    assert info.method == "qlora"
    assert info.quantization == cfg.model.quantization.model_dump(mode="json")
    assert not list(result.final_dir.glob("model*.safetensors")), "the quantized base is not saved"


@pytest.mark.parametrize(("sabotage", "should_match"), [(None, True), ("skip_rng", False)])
def test_resumed_qlora_run_is_bitwise_identical(qlora_reference, tiny_dir, monkeypatch, sabotage, should_match):
    tmp, _, _, _ = qlora_reference
    ref_dir = tmp / "reference" / "run"
    name = f"resumed-{sabotage}"
    cfg = _config(tmp, tiny_dir, tmp / "data", name)
    run_dir = tmp / name / "run"
    shutil.copytree(ref_dir / "checkpoints" / "checkpoint-2", run_dir / "checkpoints" / "checkpoint-2")
    if sabotage == "skip_rng":  # LoRA dropout draws differ: the run diverges
        monkeypatch.setattr("sftpipe.train.checkpoint.restore_rng", lambda state: None)
    result = stages.train(cfg, resume="auto")
    assert result.resumed_from is not None and result.resumed_from.name == "checkpoint-2"
    diffs = [d for d in run_differences(ref_dir, run_dir) if not d.startswith("metrics")]
    if should_match:
        assert not diffs, "\n".join(diffs[:10])
    else:
        assert diffs, "sabotaged resume went unnoticed"


def test_resume_refuses_other_quantization(qlora_reference, tiny_dir):
    tmp, _, _, _ = qlora_reference
    name = "other-quant"
    cfg = _config(tmp, tiny_dir, tmp / "data", name)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={
        "quantization": cfg.model.quantization.model_copy(update={"quant_type": "fp4"})})})
    shutil.copytree(tmp / "reference" / "run" / "checkpoints" / "checkpoint-2",
                    tmp / name / "run" / "checkpoints" / "checkpoint-2")
    from sftpipe.errors import SftpipeError

    with pytest.raises(SftpipeError, match="model.quantization"):
        stages.train(cfg, resume="auto")


def test_merge_into_the_dequantized_base(qlora_reference, tmp_path, tiny_dir):
    from transformers import AutoModelForCausalLM

    from sftpipe.models.loading import load_trained

    _, cfg, result, _ = qlora_reference
    cfg = cfg.model_copy(update={"export": cfg.export.model_copy(update={"logits_atol": QLORA_MERGE_ATOL})})
    merged = merge.run(cfg, str(result.run_dir), str(tmp_path / "merged"))
    assert merged.max_abs_logit_diff <= QLORA_MERGE_ATOL
    adapter, tokenizer = load_trained(result.run_dir, torch.device("cpu"), dtype="float32")
    batch = merge.sample_batch(tokenizer)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    with torch.no_grad():
        want = adapter(**batch).logits
        got = plain(**batch).logits
    mask = batch["attention_mask"].bool()
    assert float((want - got).abs()[mask].max()) <= QLORA_MERGE_ATOL
    # negative control: the same adapter merged into the original (unquantized) weights computes something else
    naive = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    import peft

    naive = peft.PeftModel.from_pretrained(naive, str(result.final_dir)).merge_and_unload().eval()
    with torch.no_grad():
        off = float((naive(**batch).logits - want).abs()[mask].max())
    assert off > 100 * QLORA_MERGE_ATOL, f"merging into the unquantized base differs by only {off:.2e}"


def test_the_adapter_loads_with_plain_peft_on_a_4bit_base(qlora_reference, tiny_dir):
    import peft
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from sftpipe.models.loading import load_trained

    _, _, result, _ = qlora_reference
    ours, tokenizer = load_trained(result.run_dir, torch.device("cpu"), dtype="float32")
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_dir, quantization_config=quant, dtype=torch.float32,
                                                device_map={"": "cpu"})
    theirs = peft.PeftModel.from_pretrained(base, str(result.final_dir)).eval()
    batch = merge.sample_batch(tokenizer)
    with torch.no_grad():
        assert torch.equal(ours(**batch).logits, theirs(**batch).logits)
