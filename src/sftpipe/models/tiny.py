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


CORPUS_SUFFIXES = (".jsonl", ".json", ".txt", ".md", ".csv", ".hs")


def corpus_texts(paths: list[Path]) -> Iterator[str]:
    """Every string in every JSON document and JSONL record, and every text file, under `paths`, in sorted order.

    Raises:
        SftpipeError: naming the path: missing, an unsupported file type, a directory without corpus files,
            a file that is not UTF-8 or not valid JSON, or a file without any text (a tokenizer trained
            without them would silently lack what they were meant to teach).
    """
    for file in corpus_files(paths):
        has_text = False
        for text in _file_texts(file):
            has_text = has_text or bool(text.strip())
            yield text
        if not has_text:
            raise SftpipeError(f"{file}: the corpus file holds no text; remove it from --corpus or fill it")


def corpus_files(paths: list[Path]) -> list[Path]:
    """The files named in `paths`, and the files of a corpus type (CORPUS_SUFFIXES) under directories."""
    kinds = ", ".join(CORPUS_SUFFIXES)
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in CORPUS_SUFFIXES)
            if not found:
                raise SftpipeError(f"{path}: no corpus file ({kinds}) in this directory")
            files.extend(found)
        elif not path.is_file():
            raise SftpipeError(f"{path}: corpus file or directory not found")
        elif path.suffix.lower() not in CORPUS_SUFFIXES:
            raise SftpipeError(f"{path}: unsupported corpus file type {path.suffix!r}; use one of {kinds}")
        else:
            files.append(path)
    return files


def _file_texts(file: Path) -> Iterator[str]:
    """A .json file's strings, a .jsonl file's strings record by record, any other file's whole text."""
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SftpipeError(f"{file}: not UTF-8 (byte {exc.start}); re-encode the corpus file as UTF-8") from None
    suffix = file.suffix.lower()
    if suffix == ".json":
        yield from _strings(_parse_json(text, file, 1))
    elif suffix == ".jsonl":
        for lineno, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                yield from _strings(_parse_json(line, file, lineno))
    else:
        yield text


def _parse_json(text: str, file: Path, first_line: int) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SftpipeError(f"{file}:{first_line + exc.lineno - 1}: invalid JSON ({exc})") from None
    except (RecursionError, ValueError) as exc:  # nesting too deep; integers over 4300 digits
        raise SftpipeError(f"{file}:{first_line}: cannot parse JSON ({exc})") from None


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
