"""FSDP2 on two processes (gloo, CPU) makes the same updates as one process with the same global batch.

The fast sibling of tests/integration/test_fsdp_cli.py: the loop's own pieces (sharding, token-weighted gradient
accumulation, clipping, AdamW) without the CLI, table-driven in one launch of two processes: full fine-tune and
LoRA, padded and packed micro-batches, gradient accumulation 1 and 2. Two optimizer steps; one process runs all
2 x GA micro-batches of a step, each of two FSDP ranks every other one (the split a data plan makes), with
gradient clipping on (the norm is above the limit, so it must be the global norm). Then the gathered weights are
written by `save_final` and loaded with plain transformers / peft: same logits as the sharded model's.
The negative control normalises the loss by each rank's own tokens: a different update.
"""

from __future__ import annotations

import os
from pathlib import Path

import peft
import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from sftpipe.config import load_config
from sftpipe.config.schema import FsdpConfig
from sftpipe.contracts.data_dir import DataDir
from sftpipe.data import prepare
from sftpipe.data.batches.collate import TokenStore, collate_packed, collate_padded
from sftpipe.data.tokenize import IGNORE_INDEX
from sftpipe.models.loading import load_tokenizer
from sftpipe.train import loop
from sftpipe.train.causal_lm import CausalLMLoss, decoder_layers
from sftpipe.train.saving import save_final
from sftpipe.train.sharded_checkpoint import gathered_weights
from sftpipe.train.sharding import RootForward, full_norm, gradient_sync, shard_model
from tests.conftest import free_port, make_config, spawn_and_wait

STEPS = 2
MICRO = 2  # examples per micro-batch
CASES = [(method, layout, ga) for method in ("full", "lora") for layout in ("padded", "packed") for ga in (1, 2)]
CONTROL = ("lora", "padded", 2)
FINAL = "packed", 2  # the cases whose final/ is written and loaded plainly
# The default run keeps the cases the other tests need plus one padded GA-1 case; the rest of the table is heavy.
DEFAULT = {CONTROL, ("full", *FINAL), ("lora", *FINAL), ("full", "padded", 1)}
# Activation checkpointing, parameters kept gathered between forward and backward, CPU offload: same weights.
OPTIONS_CASE = ("full", "packed", 2)
OPTIONS = FsdpConfig(reshard_after_forward=False, cpu_offload=True)
TABLE = [case if case in DEFAULT else pytest.param(*case, marks=pytest.mark.heavy) for case in CASES]
CLIP = 0.05  # below the gradient norms: clipping is active
PAD = 0


def micro_batches(data_dir: Path, layout: str, ga: int, world: int, rank: int) -> list[dict[str, torch.Tensor]]:
    """This rank's micro-batches of STEPS steps of `ga` micro-batches per rank: rank r takes every world-th
    micro-batch of the whole run's (2 x ga per step), as the data plans split them. Padded: MICRO examples
    per micro-batch; packed: the same MICRO examples in one row, position ids restarting at each."""
    store = TokenStore(DataDir(data_dir).load_split("train"))
    count = STEPS * 2 * ga
    examples = [list(range(i * MICRO, (i + 1) * MICRO)) for i in range(count)]
    if layout == "padded":
        batches = [collate_padded(store, [[e] for e in ex], PAD).inputs for ex in examples]
    else:
        batches = [collate_packed(store, [ex], PAD).inputs for ex in examples]
    return batches[rank::world]


def build(model_dir: str, method: str, checkpointing: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)  # LoRA's A matrices: the same on every process
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if checkpointing:  # as build_trainable_model does for model.gradient_checkpointing
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if method == "lora":
        model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                           target_modules="all-linear", task_type="CAUSAL_LM"))
    return model


def naive_accumulate(model, batches, accelerator):
    """Each rank normalises by its own supervised tokens (a mean of rank means): what the control trains with."""
    local = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
    for i, batch in enumerate(batches):
        with gradient_sync(model, accelerator, i == len(batches) - 1):
            accelerator.backward(model(**batch) / max(local, 1))
    return 0.0, local


def train(loss_model, model, batches, accelerator, accumulate, optimizer=None) -> list[float]:
    """STEPS AdamW steps of len(batches) // STEPS micro-batches each, clipped at norm CLIP; returns the norms."""
    optimizer = optimizer or torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    per_step = len(batches) // STEPS
    norms = []
    for step in range(STEPS):
        accumulate(loss_model, batches[step * per_step:(step + 1) * per_step], accelerator)
        norms.append(full_norm(torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return norms


def probe(data_dir: Path) -> torch.Tensor:
    return micro_batches(data_dir, "padded", 1, 1, 0)[0]["input_ids"]


def reload_from_a_sharded_checkpoint(tmp: Path, loss_model, model, optimizer, accelerator) -> None:
    """Save a sharded checkpoint, overwrite the live weights, load the checkpoint's weights back (what
    train.select_best does at the end of a sharded run): the weights must be those saved, on every rank."""
    from sftpipe.contracts.checkpoint import TrainerState
    from sftpipe.train.checkpoint import capture_rng
    from sftpipe.train.sharded_checkpoint import ShardedState, load_shards, save_sharded_checkpoint

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    live = ShardedState(loss_model=loss_model, model=model, optimizer=optimizer, scheduler=scheduler)
    ckpt = save_sharded_checkpoint(tmp / "run", TrainerState(step=STEPS), live, accelerator, save_limit=2,
                                   fingerprint={}, config_text="", rng_states=[capture_rng()] * 2, digests=True,
                                   inference_files=lambda out: None)
    saved = {k: v.clone() for k, v in gathered_weights(model).items()}
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.mul_(0.5)
    changed = gathered_weights(model)
    load_shards(ckpt, live, optimizer=False)
    again = gathered_weights(model)
    if accelerator.is_main_process:
        assert saved and all(not torch.equal(changed[k], saved[k]) for k in saved if saved[k].abs().sum() > 0)
        assert all(torch.equal(again[k], saved[k]) for k in saved), [k for k in saved
                                                                     if not torch.equal(again[k], saved[k])]


def validation(model, data_dir: Path, accelerator: Accelerator) -> torch.Tensor:
    """evaluate_loss over 7 examples in batches of 3: on 2 ranks one has a batch less and runs a stand-in."""
    from sftpipe.evaluate.metrics import evaluate_loss

    dataset = DataDir(data_dir).load_split("train").select(range(7))
    m = evaluate_loss(model, dataset, 3, PAD, accelerator.device, accelerator.process_index,
                      accelerator.num_processes, reduce=lambda t: accelerator.reduce(t, "sum"))
    return torch.tensor([m.loss, m.token_accuracy, m.sequence_accuracy, m.tokens, m.examples], dtype=torch.float64)


def name(method: str, layout: str, ga: int) -> str:
    return f"{method}-{layout}-ga{ga}"


def worker(rank: int, world: int, port: int, tmp: str, model_dir: str, cases: list[tuple[str, str, int]]) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    cfg = load_config(Path(tmp) / "config.json", preset="fast_test")
    data_dir = Path(cfg.data.output_dir)
    runs = [(case, "tokens", loop.accumulate_gradients) for case in cases] + [(CONTROL, "naive", naive_accumulate),
                                                                            (OPTIONS_CASE, "options", None)]
    for (method, layout, ga), kind, accumulate in runs:
        options = kind == "options"
        model = build(model_dir, method, checkpointing=options)
        loss_model = CausalLMLoss(model)
        sharding = cfg.model_copy(update={"train": cfg.train.model_copy(update={"fsdp": OPTIONS})}) if options else cfg
        shard_model(loss_model, decoder_layers(loss_model.causal_lm()), sharding, accelerator.device, world)
        accumulate = accumulate or loop.accumulate_gradients
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        norms = train(loss_model, model, micro_batches(data_dir, layout, ga, world, rank), accelerator, accumulate,
                      optimizer)
        if (method, layout, ga) == CONTROL and kind == "tokens":
            reload_from_a_sharded_checkpoint(Path(tmp), loss_model, model, optimizer, accelerator)
        weights = gathered_weights(model)
        view = RootForward(loss_model).eval()
        with torch.no_grad():
            logits = view(input_ids=probe(data_dir)).logits  # every rank takes part
        val = validation(view, data_dir, accelerator) if (method, layout, ga) == CONTROL else torch.zeros(5)
        if rank == 0:
            save_file({**weights, "logits": logits, "norms": torch.tensor(norms), "val": val},
                      f"{tmp}/{name(method, layout, ga)}-{kind}.safetensors")
            if kind == "tokens" and (layout, ga) == FINAL:
                cfg_m = cfg.model_copy(update={"train": cfg.train.model_copy(update={"method": method})})
                save_final(Path(tmp) / f"final-{method}", model, load_tokenizer(cfg.model),
                           DataDir(data_dir).manifest, cfg_m, state_dict=weights)
    accelerator.wait_for_everyone()


@pytest.fixture(scope="module")
def two_rank_run(request, tmp_path_factory, tiny_dir, chat_sources):
    """One launch of two processes training every case this session runs (heavy ones only with -m heavy)."""
    wanted = set(DEFAULT)
    for item in request.session.items:
        params = item.callspec.params if isinstance(item, pytest.Function) and hasattr(item, "callspec") else {}
        if item.module is request.module and "ga" in params:
            wanted.add((params["method"], params["layout"], params["ga"]))
    cases = [case for case in CASES if case in wanted]
    tmp = tmp_path_factory.mktemp("fsdp")
    cfg = make_config(tmp, tiny_dir, chat_sources)
    prepare.run(cfg)
    assert len(DataDir(Path(cfg.data.output_dir)).load_split("train")) >= STEPS * 4 * MICRO
    spawn_and_wait(worker, (2, free_port(), str(tmp), str(tiny_dir), cases), 2)
    return tmp, Path(cfg.data.output_dir)


def one_process(tiny_dir: Path, data_dir: Path, method: str, layout: str, ga: int):
    model = build(str(tiny_dir), method)
    norms = train(CausalLMLoss(model), model, micro_batches(data_dir, layout, ga, 1, 0), Accelerator(cpu=True),
                  loop.accumulate_gradients)
    return model, {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}, norms


@pytest.mark.parametrize(("method", "layout", "ga"), TABLE)
def test_fsdp_two_ranks_make_the_weights_of_one_process(two_rank_run, tiny_dir, method, layout, ga):
    tmp, data_dir = two_rank_run
    _, single, norms = one_process(tiny_dir, data_dir, method, layout, ga)
    two = load_file(tmp / f"{name(method, layout, ga)}-tokens.safetensors")
    assert set(single) <= set(two), sorted(set(single) - set(two))[:3]
    assert min(norms) > CLIP  # clipping was active: a rank-local norm would have clipped differently
    torch.testing.assert_close(two["norms"], torch.tensor(norms), rtol=1e-5, atol=0)
    for key, value in single.items():
        torch.testing.assert_close(two[key], value, rtol=1e-5, atol=1e-5)


def test_validation_of_a_sharded_model_equals_one_process(two_rank_run, tiny_dir):
    """Every rank runs as many forward passes (a sharded forward is a collective); the figures are those of one
    process on the same weights."""
    tmp, data_dir = two_rank_run
    model, _, _ = one_process(tiny_dir, data_dir, *CONTROL)
    two = load_file(tmp / f"{name(*CONTROL)}-tokens.safetensors")["val"]
    assert two[4] == 7
    torch.testing.assert_close(two, validation(model, data_dir, Accelerator(cpu=True)), rtol=1e-6, atol=1e-6)


def test_fsdp_with_a_rank_local_loss_normalisation_differs(two_rank_run, tiny_dir):
    """Negative control: each rank dividing by its own tokens (then averaged) is a different update."""
    tmp, data_dir = two_rank_run
    _, single, _ = one_process(tiny_dir, data_dir, *CONTROL)
    naive = load_file(tmp / f"{name(*CONTROL)}-naive.safetensors")
    worst = max((naive[n] - single[n]).abs().max().item() for n in single)
    assert worst > 1e-4, worst


def test_fsdp_options_leave_the_weights_as_they_are(two_rank_run, tiny_dir):
    """model.gradient_checkpointing, train.fsdp.reshard_after_forward false and cpu_offload: memory, not math."""
    tmp, data_dir = two_rank_run
    _, single, _ = one_process(tiny_dir, data_dir, *OPTIONS_CASE)
    options = load_file(tmp / f"{name(*OPTIONS_CASE)}-options.safetensors")
    for key, value in single.items():
        torch.testing.assert_close(options[key], value, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_final_of_a_sharded_model_loads_plainly_with_its_logits(two_rank_run, tiny_dir, method):
    """final/ as a sharded run writes it (gathered weights) loads with no sftpipe code and gives the logits the
    sharded model computed."""
    tmp, data_dir = two_rank_run
    two = load_file(tmp / f"{name(method, 'packed', 2)}-tokens.safetensors")
    final = tmp / f"final-{method}"
    plain = AutoModelForCausalLM.from_pretrained(final if method == "full" else tiny_dir)
    if method == "lora":
        plain = peft.PeftModel.from_pretrained(plain, final)
    with torch.no_grad():
        logits = plain.eval()(input_ids=probe(data_dir)).logits
    torch.testing.assert_close(logits, two["logits"], rtol=1e-5, atol=1e-5)
