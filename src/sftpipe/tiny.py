"""The embedded default: a tiny random Llama and a byte-level BPE tokenizer trained locally.

Nothing is downloaded: the tokenizer is trained on the sample data shipped in `examples/`, the model is
initialised from a seed. Both are saved with `save_pretrained`, so every real loading path
(`AutoTokenizer`, `AutoModelForCausalLM`, peft) is exercised on them exactly as on a hub model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from sftpipe.data.templates import CHATML
from sftpipe.errors import SftpipeError

BOS, EOS, PAD = "<s>", "<|im_end|>", "<pad>"
SPECIAL_TOKENS = [PAD, BOS, EOS, "<|im_start|>", "</s>"]

# Model shapes: "small" (~4M params) for the demo, "micro" (~0.4M) for fast tests.
SIZES = {
    "small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2),
    "micro": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2),
}


@dataclass
class TinyResult:
    out_dir: Path
    num_params: int
    vocab_size: int


def find_examples_dir() -> Path:
    """The shipped samples (the demo's Haskell problems, the tokenizer's training text): package data, so they
    are there in a wheel install as in a source checkout (where `examples/` links to them)."""
    examples = Path(str(resources.files("sftpipe") / "examples"))
    if not (examples / "haskell" / "problems.jsonl").is_file():
        raise SftpipeError(f"the shipped samples are missing from {examples}: reinstall sftpipe")
    return examples


def corpus_texts(paths: list[Path]) -> Iterator[str]:
    """Every string value of every JSON/JSONL record, and every text file, under `paths`, in sorted order."""
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    for file in files:
        if file.suffix == ".jsonl":
            for line in file.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    yield from _strings(json.loads(line))
        elif file.suffix in (".txt", ".md", ".csv", ".hs"):
            yield file.read_text(encoding="utf-8")


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def build_tokenizer(texts: Iterator[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (Llama-style: BOS added by the post-processor) with a ChatML template."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    bos_id = backend.token_to_id(BOS)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        additional_special_tokens=["<|im_start|>"], model_max_length=2048,
    )
    tokenizer.chat_template = CHATML
    return tokenizer


def build_model(tokenizer: PreTrainedTokenizerFast, size: str = "small", seed: int = 0) -> LlamaForCausalLM:
    """A randomly initialised Llama whose vocabulary and special ids match `tokenizer`."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **SIZES[size],
    )
    return LlamaForCausalLM(config)


def init_tiny(out_dir: Path, size: str = "small", seed: int = 0, corpus: list[Path] | None = None,
              vocab_size: int = 2048) -> TinyResult:
    """Build and save the tiny tokenizer and model into `out_dir`; deterministic for a given seed."""
    if size not in SIZES:
        raise SftpipeError(f"--size {size!r}: choose one of {', '.join(SIZES)}")
    tokenizer = build_tokenizer(corpus_texts(corpus or [find_examples_dir()]), vocab_size=vocab_size)
    model = build_model(tokenizer, size=size, seed=seed)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=False,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return TinyResult(out_dir, sum(p.numel() for p in model.parameters()), len(tokenizer))
