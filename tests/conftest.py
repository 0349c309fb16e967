"""Shared fixtures: a micro Llama + tokenizer built locally once per session (no download), and helpers."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import torch

from sftpipe.cli import quiet_libraries
from sftpipe.config import Config, load_config
from sftpipe.models.tiny import init_tiny

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


quiet_libraries()
# Tiny models gain nothing from intra-op threads, and OpenMP threads spinning on a shared 2-core machine made
# the tests an order of magnitude slower. Results stay bitwise deterministic either way.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    skips = {}
    if not torch.cuda.is_available():
        skips["gpu"] = pytest.mark.skip(reason="needs a CUDA GPU")
    if shutil.which("ghc") is None:
        skips["ghc"] = pytest.mark.skip(reason="needs GHC on PATH: apt-get install ghc (CI installs it)")
    for item in items:
        for marker, skip in skips.items():
            if marker in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "model"
    init_tiny(out, size="micro", seed=0, corpus=[EXAMPLES])
    return out


@pytest.fixture(scope="session")
def tokenizer(tiny_dir):
    from sftpipe.config import ModelConfig
    from sftpipe.models.loading import load_tokenizer

    return load_tokenizer(ModelConfig(name_or_path=str(tiny_dir)))


def pc_records(n: int = 15) -> list[dict]:
    """The first `n` records of the shipped prompt-completion sample (small, fixed-size resume data)."""
    lines = (EXAMPLES / "prompt_completion" / "pc_sample.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines[:n]]


@pytest.fixture(scope="session")
def dropout_model(tmp_path_factory, tiny_dir):
    """The tiny model with attention dropout on, so a full fine-tune also draws random numbers."""
    out = tmp_path_factory.mktemp("dropout_model") / "model"
    shutil.copytree(tiny_dir, out)
    config = json.loads((out / "config.json").read_text())
    config["attention_dropout"] = 0.1
    (out / "config.json").write_text(json.dumps(config))
    return out


def spawn_and_wait(fn, args: tuple, nprocs: int, timeout: float = 300) -> None:
    """torch.multiprocessing.spawn, but a hang (a collective or a teardown that never returns) fails the test
    after `timeout` seconds instead of stalling the whole suite."""
    import time

    import torch.multiprocessing as mp

    context = mp.spawn(fn, args=args, nprocs=nprocs, join=False)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=2):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"{nprocs} processes did not finish within {timeout:.0f} s")


def train_process(rank: int, port: int, world: int, config_path: str, output_dir: str | None = None,
                  resume: str = "never") -> None:
    """One process of a `world`-process gloo run started by `spawn_and_wait`: train `config_path` with the
    fast_test preset (into `output_dir` when given)."""
    import os

    from sftpipe import stages
    from sftpipe.config import load_config

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    overrides = [f"train.output_dir={output_dir}"] if output_dir else []
    stages.train(load_config(config_path, preset="fast_test", overrides=overrides), resume=resume)


def free_port() -> int:
    """A TCP port free on localhost now, for a test's process group (gloo) rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def make_config(tmp: Path, tiny_dir: Path, sources: list[dict], **sections) -> Config:
    """A fast_test config writing under `tmp`; `sections` are merged as --set-like overrides."""
    values = {
        "model": {"name_or_path": str(tiny_dir)},
        "data": {"sources": sources, "output_dir": str(tmp / "data"), "max_length": 256},
        "train": {"output_dir": str(tmp / "run")},
        "export": {"output_dir": str(tmp / "merged")},
    }
    for section, fields in sections.items():
        values.setdefault(section, {}).update(fields)
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "config.json"
    path.write_text(json.dumps(values), encoding="utf-8")
    return load_config(path, preset="fast_test")


@pytest.fixture(scope="session")
def chat_sources() -> list[dict]:
    return [
        {"path": str(EXAMPLES / "chat" / "messages_sample.jsonl")},
        {"path": str(EXAMPLES / "alpaca" / "alpaca_sample.jsonl")},
    ]


@pytest.fixture(scope="session")
def lora_run(tmp_path_factory, tiny_dir, chat_sources):
    """A prepared data dir and a 4-step LoRA run, shared by the tests that only read them."""
    from sftpipe import stages
    from sftpipe.data import prepare

    tmp = tmp_path_factory.mktemp("lora_run")
    cfg = make_config(tmp, tiny_dir, chat_sources, lora={"dropout": 0.0})
    prepare.run(cfg)
    result = stages.train(cfg, resume="never")
    return cfg, result


def distinct_records(n: int, seed: int = 0, words: int = 30) -> list[dict]:
    """`n` prompt/completion records of random words: no two are near-duplicates of each other."""
    import random

    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "an", "el", "in", "or", "us", "be", "da", "fe"]
    vocab = sorted({a + b + c for a in syllables for b in syllables for c in syllables})
    return [{"prompt": " ".join(rng.choices(vocab, k=12)) + "?", "completion": " ".join(rng.choices(vocab, k=words)) + "."}
            for _ in range(n)]
