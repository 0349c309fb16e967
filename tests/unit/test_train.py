import json

import peft
import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from sftpipe.data import prepare
from sftpipe.data.writer import load_split
from sftpipe.errors import SftpipeError
from sftpipe.models.adapters import build_trainable_model
from sftpipe.models.tiny import init_tiny
from sftpipe.train import loop
from sftpipe.train.batching import collate
from sftpipe.train.causal_lm import CausalLMLoss
from sftpipe.train.loss import token_loss_sum
from sftpipe.train.tracking import read_metrics
from tests.conftest import EXAMPLES, make_config
from tests.run_compare import resume_after_simulated_crash


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _train_steps(cfg, model, rows, steps=3):
    acc = Accelerator(cpu=True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = collate(rows, pad_id=0)
    for _ in range(steps):
        loop.accumulate_gradients(CausalLMLoss(model), [batch], acc)
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("method", ["lora", "full"])
def test_trained_params_change_and_frozen_ones_do_not(tmp_path, tiny_dir, chat_sources, method):
    cfg = make_config(tmp_path, tiny_dir, chat_sources, train={"method": method})
    prepare.run(cfg)
    rows = list(load_split(tmp_path / "data", "train").select(range(4)))
    model = build_trainable_model(cfg, torch.device("cpu"))
    before = _snapshot(model)
    _train_steps(cfg, model, rows)
    after = _snapshot(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen = set(before) - trainable
    if method == "lora":
        assert trainable and all("lora_" in n for n in trainable)
        assert any("embed_tokens" in n for n in frozen) and any("base_layer" in n for n in frozen)
    else:
        assert not frozen
    # embedding rows of unseen tokens get no gradient, so compare whole tensors, not every element
    assert all(not torch.equal(before[n], after[n]) for n in trainable)
    assert all(torch.equal(before[n], after[n]) for n in frozen)


def test_lora_run_writes_loadable_adapter_that_differs_from_init(lora_run, tiny_dir):
    cfg, result = lora_run
    saved = load_file(result.final_dir / "adapter_model.safetensors")
    assert saved and all("lora_" in k for k in saved)
    set_seed(cfg.train.seed)
    init = build_trainable_model(cfg, torch.device("cpu"))
    init_lora = {k: v for k, v in peft.get_peft_model_state_dict(init).items()}
    assert set(init_lora) == set(saved)
    assert all(not torch.equal(init_lora[k], saved[k]) for k in saved)
    # plain peft loading works and leaves the base weights as they were
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    reference = AutoModelForCausalLM.from_pretrained(tiny_dir)
    model = peft.PeftModel.from_pretrained(base, str(result.final_dir))
    for name, param in reference.named_parameters():
        assert torch.equal(param, model.get_base_model().get_parameter(name))


def test_run_dir_is_self_describing(lora_run):
    cfg, result = lora_run
    run_dir = result.run_dir
    assert (run_dir / "config.yaml").is_file()
    manifest = json.loads((run_dir / "run_manifest.json").read_text())
    assert manifest["seed"] == cfg.train.seed and len(manifest["tokenizer_sha256"]) == 64
    metrics = read_metrics(run_dir / "logs" / "metrics.jsonl")
    steps = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2, 3, 4]
    assert any("val_loss" in m for m in metrics)
    assert list((run_dir / "logs").rglob("events.out.tfevents*")), "TensorBoard events missing"
    info = json.loads((result.final_dir / "sftpipe.json").read_text())
    assert info["method"] == "lora" and info["template"] == "chatml"
    assert result.val is not None and result.val_before is not None


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_is_token_weighted_over_the_whole_step(tmp_path, tiny_dir, chat_sources):
    """8x1, 4x2 and 1x8 give the same gradient although micro-batches hold very different label counts."""
    cfg = make_config(tmp_path, tiny_dir, chat_sources, train={"method": "full"})
    prepare.run(cfg)
    ds = load_split(tmp_path / "data", "train")
    order = sorted(range(len(ds)), key=lambda i: sum(x != -100 for x in ds[i]["labels"]))
    rows = [ds[i] for i in order[:4] + order[-4:]]  # four short answers, four long ones
    counts = [sum(x != -100 for x in r["labels"]) for r in rows]
    assert max(counts) > 4 * min(counts)
    acc = Accelerator(cpu=True)
    model = build_trainable_model(cfg, torch.device("cpu"))
    results = {}
    for micro in (8, 4, 1):
        model.zero_grad()
        batches = [collate(rows[i : i + micro], pad_id=0) for i in range(0, 8, micro)]
        loop.accumulate_gradients(CausalLMLoss(model), batches, acc)
        results[micro] = _grads(model)
    for micro in (4, 1):
        for name, grad in results[8].items():
            torch.testing.assert_close(results[micro][name], grad, rtol=1e-4, atol=1e-6)
    # negative control: the mean of per-micro-batch means is a different gradient
    model.zero_grad()
    for i in range(8):
        batch = collate(rows[i : i + 1], pad_id=0)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss_sum, n, _ = token_loss_sum(out.logits, batch["labels"])
        (loss_sum / n / 8).backward()
    naive = _grads(model)
    diff = max((naive[k] - results[8][k]).abs().max().item() for k in naive)
    assert diff > 1e-4


def test_refuses_data_from_another_tokenizer(tmp_path, tiny_dir, chat_sources):
    cfg = make_config(tmp_path, tiny_dir, chat_sources)
    prepare.run(cfg)
    other = tmp_path / "other_model"
    init_tiny(other, size="micro", seed=0, corpus=[EXAMPLES / "qa"], vocab_size=700)
    cfg = make_config(tmp_path, other, chat_sources)
    with pytest.raises(SftpipeError, match=r"SHA-256.*Re-run `sftpipe prepare`"):
        loop.run(cfg, resume="never")


def test_resume_after_crash_matches_uninterrupted_run(tmp_path, tiny_dir, chat_sources):
    # a crash after step 2: the later checkpoint is half-written (no COMPLETE marker), final/ missing
    resume_after_simulated_crash(tmp_path, tiny_dir, chat_sources,
                                 {"max_steps": 4, "save_every": 2, "save_total_limit": 3})


def test_cpu_threads_are_set_for_training_and_recorded(tmp_path, tiny_dir, chat_sources):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cfg = make_config(tmp_path, tiny_dir, chat_sources, train={"cpu_threads": 1, "max_steps": 1, "device": "cpu"})
        prepare.run(cfg)
        loop.run(cfg, resume="never")
        assert torch.get_num_threads() == 1
        speed = next(m["speed"] for m in read_metrics(tmp_path / "run" / "logs" / "metrics.jsonl") if "speed" in m)
        assert speed["cpu_threads"] == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(("requested", "load", "warned"), [(0, 1.2, True), (0, 0.3, False), (1, 3.0, False)])
def test_a_busy_machine_gets_a_cpu_threads_hint(monkeypatch, caplog, requested, load, warned):
    before = torch.get_num_threads()
    monkeypatch.setattr(loop.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(loop.os, "getloadavg", lambda: (load, load, load))
    torch.set_num_threads(2)
    try:
        with caplog.at_level("WARNING", logger="sftpipe.train.loop"):
            threads = loop.set_cpu_threads(requested)
    finally:
        torch.set_num_threads(before)
    assert threads == (requested or 2)
    hints = [r.getMessage() for r in caplog.records if "train.cpu_threads=" in r.getMessage()]
    assert bool(hints) == warned, hints
    if warned:
        assert "train.cpu_threads=1" in hints[0] and "load average is 1.2 on 2 cores" in hints[0]
