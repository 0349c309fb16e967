"""Two processes (gloo, DDP through accelerate) make the same update as one process with the same global batch."""

import os
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from sftpipe.contracts.data_dir import DataDir
from sftpipe.data import prepare
from sftpipe.data.batches.collate import TokenStore, collate_packed
from sftpipe.data.batches.plan import TokenBudgetPlan
from sftpipe.data.tokenize import IGNORE_INDEX
from sftpipe.train import loop
from sftpipe.train.causal_lm import CausalLMLoss
from tests.conftest import free_port, make_config, spawn_and_wait

PAD = 0


def plan_units(store: TokenStore) -> list[list[list[int]]]:
    """Five packed rows, alternating few-label and many-label pairs: with two ranks, rank 0 gets the three
    short-answer rows and rank 1 the two long-answer rows plus a stand-in (5 rows do not split evenly)."""
    order = sorted(range(len(store)), key=lambda i: int((store.example(i)[1] != IGNORE_INDEX).sum()))
    short, long = order[:6], order[-4:]
    rows = [short[0:2], long[0:2], short[2:4], long[2:4], short[4:6]]
    return [[row] for row in rows]


def sgd_update(loss_model, model, batches, accelerator, naive: bool) -> dict[str, torch.Tensor]:
    """One SGD step (lr 1, so the update is minus the gradient); returns the parameters after it."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    if naive:
        # each rank normalises by its own tokens and DDP averages the ranks: a mean of means
        local = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
        for batch in batches:
            accelerator.backward(loss_model(**batch) / max(local, 1))
    else:
        loop.accumulate_gradients(loss_model, batches, accelerator)
    optimizer.step()
    after = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(before[n])
    return after


def worker(rank: int, world: int, port: int, data_dir: str, model_dir: str, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    store = TokenStore(DataDir(Path(data_dir)).load_split("train"))
    plan = TokenBudgetPlan(plan_units(store), 1, seed=0, world_size=world, rank=rank, shuffle=False)
    batches = []
    for g in range(plan.micro_batches_per_epoch):
        rows, real = plan.rows(g)  # rank 1's last micro-batch is a stand-in (real False, no labels)
        batches.append(collate_packed(store, rows, PAD, real).inputs)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    loss_model = accelerator.prepare(CausalLMLoss(model))
    for naive in (False, True):
        after = sgd_update(loss_model, model, batches, accelerator, naive)
        if rank == 0:
            save_file(after, f"{out_dir}/{'naive' if naive else 'tokens'}.safetensors")
    accelerator.wait_for_everyone()


def test_two_processes_make_the_same_update_as_one(tmp_path, tiny_dir, chat_sources):
    cfg = make_config(tmp_path, tiny_dir, chat_sources, train={"method": "full"})
    prepare.run(cfg)
    data_dir = tmp_path / "data"
    store = TokenStore(DataDir(data_dir).load_split("train"))
    plan = TokenBudgetPlan(plan_units(store), 1, seed=0, shuffle=False)
    assert plan.micro_batches_per_epoch == 5
    batches = [collate_packed(store, plan.rows(g)[0], PAD).inputs for g in range(5)]
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    single = sgd_update(CausalLMLoss(model), model, batches, Accelerator(cpu=True), naive=False)

    spawn_and_wait(worker, (2, free_port(), str(data_dir), str(tiny_dir), str(tmp_path)), 2)
    two = load_file(tmp_path / "tokens.safetensors")
    naive = load_file(tmp_path / "naive.safetensors")
    for name, value in single.items():
        torch.testing.assert_close(two[name], value, rtol=1e-4, atol=1e-6)
    # negative control: per-rank token means averaged over ranks is a different update
    worst = max((naive[n] - single[n]).abs().max().item() for n in single)
    assert worst > 1e-4, worst
