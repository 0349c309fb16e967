import json
from pathlib import Path

import peft
import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from sftpipe import stages
from sftpipe.config import load_config
from sftpipe.contracts.data_dir import DataDir
from sftpipe.data import prepare
from sftpipe.contracts.data_dir import DataDir
from sftpipe.data.batches.collate import TokenStore, collate_padded
from sftpipe.errors import SftpipeError
from sftpipe.models.adapters import build_trainable_model
from sftpipe.models.loss import token_loss_sum
from sftpipe.models.tiny import init_tiny
from sftpipe.train import loop
from sftpipe.train.causal_lm import CausalLMLoss
from sftpipe.train.tracking import read_metrics
from tests.conftest import EXAMPLES, make_config
from tests.run_compare import resume_after_simulated_crash


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _train_steps(cfg, model, store, steps=3):
    acc = Accelerator(cpu=True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = collate_padded(store, [[i] for i in range(len(store))], pad_id=0).inputs
    for _ in range(steps):
        loop.accumulate_gradients(CausalLMLoss(model), [batch], acc)
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("method", ["lora", "full"])
def test_trained_params_change_and_frozen_ones_do_not(tmp_path, tiny_dir, chat_sources, method):
    cfg = make_config(tmp_path, tiny_dir, chat_sources, train={"method": method})
    prepare.run(cfg)
    store = TokenStore(DataDir(tmp_path / "data").load_split("train").select(range(4)))
    model = build_trainable_model(cfg, torch.device("cpu"))
    before = _snapshot(model)
    _train_steps(cfg, model, store)
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
    ds = DataDir(tmp_path / "data").load_split("train")
    order = sorted(range(len(ds)), key=lambda i: sum(x != -100 for x in ds[i]["labels"]))
    rows = [ds[i] for i in order[:4] + order[-4:]]  # four short answers, four long ones
    store = TokenStore(ds.select(order[:4] + order[-4:]))  # example i is rows[i]
    counts = [sum(x != -100 for x in r["labels"]) for r in rows]
    assert max(counts) > 4 * min(counts)
    acc = Accelerator(cpu=True)
    model = build_trainable_model(cfg, torch.device("cpu"))
    results = {}
    for micro in (8, 4, 1):
        model.zero_grad()
        batches = [collate_padded(store, [[j] for j in range(i, i + micro)], pad_id=0).inputs
                   for i in range(0, 8, micro)]
        loop.accumulate_gradients(CausalLMLoss(model), batches, acc)
        results[micro] = _grads(model)
    for micro in (4, 1):
        for name, grad in results[8].items():
            torch.testing.assert_close(results[micro][name], grad, rtol=1e-4, atol=1e-6)
    # negative control: the mean of per-micro-batch means is a different gradient
    model.zero_grad()
    for i in range(8):
        batch = collate_padded(store, [[i]], pad_id=0).inputs
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
        stages.train(cfg, resume="never")


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
        stages.train(cfg, resume="never")
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


def _lrs_used(tc, total_steps: int) -> list[float]:
    """The learning rate of each optimizer step of a `total_steps` run, as the schedule gives them."""
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=tc.lr)
    scheduler = loop.build_scheduler(tc, optimizer, total_steps)
    used = []
    for _ in range(total_steps):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return used


@pytest.mark.parametrize("scheduler", ["linear", "cosine", "constant"])
@pytest.mark.parametrize("warmup", [0, 1, 4])
def test_lr_warms_up_over_exactly_warmup_steps(scheduler, warmup):
    tc = load_config(overrides=[f"train.scheduler={scheduler}", f"train.warmup_steps={warmup}", "train.lr=1.0"]).train
    used = _lrs_used(tc, total_steps=10)
    assert used[:warmup] == pytest.approx([i / warmup for i in range(warmup)])  # rising linearly from 0
    assert used[warmup] == pytest.approx(1.0)  # the peak at step `warmup`, never before
    assert all(lr < 1.0 for lr in used[:warmup])
    # warmup_steps wins over the ratio it replaces (the default 0.03, and 0.5 from a lower layer)
    ratio = load_config(overrides=[f"train.scheduler={scheduler}", "train.warmup_ratio=0.5", "train.lr=1.0"]).train
    assert _lrs_used(ratio, 10)[5] == pytest.approx(1.0) and _lrs_used(ratio, 10)[4] < 1.0  # control: 0.5 of 10


def test_warmup_steps_reach_the_optimizer_and_the_fingerprint(lora_run, tmp_path):
    from sftpipe.train.resume import fingerprint_differences, run_fingerprint

    cfg, result = lora_run
    warm = make_config(tmp_path, Path(cfg.model.name_or_path), [s.model_dump() for s in cfg.data.sources],
                       data={"output_dir": cfg.data.output_dir},
                       train={"warmup_steps": 3, "max_steps": 5, "scheduler": "constant"})
    stages.train(warm, resume="never")
    lrs = [m["lr"] for m in read_metrics(tmp_path / "run" / "logs" / "metrics.jsonl") if "lr" in m]
    peak = warm.train.lr
    assert lrs == pytest.approx([peak / 3, 2 * peak / 3, peak, peak, peak])  # logged after each step
    saved = run_fingerprint(cfg, Path(cfg.data.output_dir), "tok", 1)
    now = run_fingerprint(cfg.model_copy(update={"train": warm.train.model_copy(update={
        "max_steps": cfg.train.max_steps, "scheduler": cfg.train.scheduler})}), Path(cfg.data.output_dir), "tok", 1)
    assert fingerprint_differences(saved, now) == [
        "train.warmup_ratio: 0.0 in the checkpoint, None now", "train.warmup_steps: None in the checkpoint, 3 now"]


def test_summary_throughput_counts_training_steps_only(lora_run, tmp_path, monkeypatch, capsys):
    """Validation and checkpoints that take 1000 s each (a clock jump, no real sleep) change neither the
    summary's tokens/s nor metrics.jsonl's, and the summary's is the one metrics.jsonl's steps add up to."""
    import time

    from sftpipe.cli.report import print_train

    cfg, _ = lora_run
    clock = {"offset": 0.0, "jumps": 0}
    real_clock = time.perf_counter
    monkeypatch.setattr(time, "perf_counter", lambda: real_clock() + clock["offset"])

    def slow(original):
        def run(*args, **kwargs):
            clock["offset"] += 1000.0
            clock["jumps"] += 1
            return original(*args, **kwargs)
        return run

    monkeypatch.setattr(stages, "evaluate_loss", slow(stages.evaluate_loss))
    monkeypatch.setattr(loop, "checkpoint", slow(loop.checkpoint))
    slow_cfg = make_config(tmp_path, Path(cfg.model.name_or_path), [s.model_dump() for s in cfg.data.sources],
                           data={"output_dir": cfg.data.output_dir},
                           train={"max_steps": 4, "eval_every": 1, "save_every": 2, "log_every": 1})
    result = stages.train(slow_cfg, resume="never")
    assert clock["jumps"] == 7 and result.wall_s > 7000  # validation before + 4, checkpoints at steps 2 and 4

    steps = [m for m in read_metrics(tmp_path / "run" / "logs" / "metrics.jsonl") if "tokens_per_s" in m]
    assert [m["step"] for m in steps] == [1, 2, 3, 4]
    tokens = [m["tokens"] - before for m, before in zip(steps, [0] + [m["tokens"] for m in steps[:-1]])]
    seconds = [n / m["tokens_per_s"] for n, m in zip(tokens, steps)]
    assert all(s < 1000 for s in seconds)  # no step's figure took a validation or checkpoint in
    assert result.tokens_per_s == pytest.approx(sum(tokens) / sum(seconds), rel=1e-9)
    assert result.tokens_per_s > sum(tokens) / 1000  # what including even one of them would give at most
    print_train(result)
    assert f"  {result.tokens_per_s:,.0f} tokens/s in training steps" in capsys.readouterr().out
