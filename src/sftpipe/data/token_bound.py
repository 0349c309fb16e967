"""How many characters of a text one token can cover at most, read from the tokenizer's own definition.

With it, a record certain to exceed `data.max_length` is dropped as `too_long` by its length in characters,
without tokenizing it: a 5 MB record took 16 s and 1.3 GB to tokenize, only to be dropped.

No fixed characters-per-token factor is safe. WordPiece turns a word of any length that it cannot split into
one [UNK]; a BPE with `fuse_unk` makes one token of any run of characters it does not know, and a BPE without
an unk token drops them; a `Whitespace` pre-tokenizer or a `Strip` normalizer deletes characters. So the
bound is derived where it is provable and is None (tokenize as before) everywhere else:

- model BPE: a token is the characters it merged (plus any subword prefix or suffix), so it covers at most
  len(token) characters, and an added token its content. Every character must become part of some token:
  true when the pre-tokenizer ends in ByteLevel and the vocabulary holds all 256 byte characters, with byte
  fallback and all 256 byte tokens, or with an unk token that is not fused;
- normalizers that never shorten the text (NFD, NFKD, Lowercase, Prepend, ByteLevel, Replace of a string by
  one at least as long), and NFC/NFKC, which compose at most 4 code points into one (the longest canonical
  decomposition, e.g. U+1F82; no new composition is added since Unicode 3.1);
- pre-tokenizers that keep every character (ByteLevel, Metaspace, Digits, UnicodeScripts, and Split and
  Punctuation unless they remove what they split on);
- no added token that takes the whitespace around it (lstrip/rstrip).

Then tokens(text) >= len(text) / max_chars_per_token.
"""

from __future__ import annotations

import json
from typing import Any

from tokenizers import Tokenizer, pre_tokenizers

LONGEST_CANONICAL_DECOMPOSITION = 4  # NFC/NFKC turn at most this many code points into one
_NEVER_SHORTEN = ("NFD", "NFKD", "Lowercase", "Prepend", "ByteLevel")
_KEEP_EVERY_CHARACTER = ("ByteLevel", "Metaspace", "Digits", "UnicodeScripts")


def max_chars_per_token(backend: Tokenizer) -> int | None:
    """The most characters of an input text that one token covers, or None where no bound is provable."""
    spec = json.loads(backend.to_str())
    model, added = spec["model"], spec["added_tokens"]
    if model["type"] != "BPE" or any(t["lstrip"] or t["rstrip"] for t in added):
        return None
    shrink = _shrink(spec["normalizer"])
    if shrink is None or not _keeps_every_character(spec["pre_tokenizer"]) or not _no_character_lost(spec):
        return None
    longest = max(len(text) for text in [*model["vocab"], *(t["content"] for t in added)])
    return longest * shrink


def _shrink(normalizer: dict[str, Any] | None) -> int | None:
    """At most how many characters of the text the normalizer makes into one; None: no bound."""
    if normalizer is None:
        return 1
    kind = normalizer["type"]
    if kind == "Sequence":
        factor = 1
        for part in normalizer["normalizers"]:
            step = _shrink(part)
            if step is None:
                return None
            factor *= step
        return factor
    if kind in _NEVER_SHORTEN:
        return 1
    if kind in ("NFC", "NFKC"):
        return LONGEST_CANONICAL_DECOMPOSITION
    pattern = normalizer["pattern"] if kind == "Replace" else {}
    if "String" in pattern and len(normalizer["content"]) >= len(pattern["String"]):
        return 1
    return None  # Strip, StripAccents, Nmt, Precompiled, BertNormalizer, Replace of a regex: can delete


def _keeps_every_character(pre_tokenizer: dict[str, Any] | None) -> bool:
    if pre_tokenizer is None:
        return True
    kind = pre_tokenizer["type"]
    if kind == "Sequence":
        return all(_keeps_every_character(part) for part in pre_tokenizer["pretokenizers"])
    if kind in ("Split", "Punctuation"):
        return pre_tokenizer["behavior"] != "Removed"
    return kind in _KEEP_EVERY_CHARACTER  # Whitespace, WhitespaceSplit, BertPreTokenizer, ...: drop characters


def _no_character_lost(spec: dict[str, Any]) -> bool:
    """Whether every character reaching the BPE model becomes (part of) a token, none dropped or fused."""
    model = spec["model"]
    vocab = model["vocab"]
    pre = spec["pre_tokenizer"]
    last = pre["pretokenizers"][-1] if pre is not None and pre["type"] == "Sequence" and pre["pretokenizers"] else pre
    if last is not None and last["type"] == "ByteLevel" and all(c in vocab for c in pre_tokenizers.ByteLevel.alphabet()):
        return True  # the model only sees the 256 byte characters, all in the vocabulary
    if model["byte_fallback"] and all(f"<0x{b:02X}>" in vocab for b in range(256)):
        return True  # an unknown character becomes its byte tokens
    return model["unk_token"] is not None and not model["fuse_unk"]
