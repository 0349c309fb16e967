"""The character bound per token holds on adversarial texts wherever one is given, and is refused (None) for
tokenizers where one token can cover any number of characters: each refusal has its counterexample here."""

import sys
import unicodedata

import pytest
from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers

from sftpipe.data.token_bound import LONGEST_CANONICAL_DECOMPOSITION, max_chars_per_token
from sftpipe.data.tokenize import plain_backend
from tests.conftest import EXAMPLES

VOCAB = {"a": 0, "b": 1, "ab": 2, "abab": 3, " ": 4, "e": 5, "é": 6, "\u0301": 7, "x": 8, "<unk>": 9}
MERGES = [("a", "b"), ("ab", "ab")]
ADVERSARIAL = ["", "a" * 1000, "ab" * 1000, " " * 1000, "z" * 1000, "e\u0301" * 500, "ab zz ab" * 100,
               "\u1f82" * 200, "\u0391\u0313\u0342\u0345" * 200, "<x>" * 100, "日本語" * 300]


def _bpe(**kw) -> Tokenizer:
    return Tokenizer(models.BPE(dict(VOCAB), list(MERGES), **kw))


def _with(tok: Tokenizer, normalizer=None, pre_tokenizer=None, added=None) -> Tokenizer:
    if normalizer is not None:
        tok.normalizer = normalizer
    if pre_tokenizer is not None:
        tok.pre_tokenizer = pre_tokenizer
    if added is not None:
        tok.add_tokens([added])
    return tok


def _unk(**kw) -> Tokenizer:
    return _bpe(unk_token="<unk>", fuse_unk=False, **kw)


def _byte_fallback() -> Tokenizer:
    vocab = {**VOCAB, **{f"<0x{b:02X}>": 10 + b for b in range(256)}}
    return Tokenizer(models.BPE(vocab, list(MERGES), unk_token="<unk>", fuse_unk=True, byte_fallback=True))


def _byte_level() -> Tokenizer:
    vocab = {c: i for i, c in enumerate(pre_tokenizers.ByteLevel.alphabet())}
    vocab["ab"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab, [("a", "b")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return tok


# name -> (tokenizer, the bound it must get)
BOUNDED = {
    "unk not fused": (_unk, 5),  # "<unk>" is the longest token string
    "byte fallback, fused unk (Llama 2 style)": (
        lambda: _with(_byte_fallback(), normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])),
        6),
    "byte level": (_byte_level, 2),
    "NFC": (lambda: _with(_unk(), normalizers.NFC()), 5 * LONGEST_CANONICAL_DECOMPOSITION),
    "NFKC, lowercase, splits that keep": (lambda: _with(
        _unk(), normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()]),
        pre_tokenizers.Sequence([pre_tokenizers.Split(" ", "isolated"), pre_tokenizers.Punctuation(),
                                 pre_tokenizers.Digits()])), 5 * LONGEST_CANONICAL_DECOMPOSITION),
    "added token": (lambda: _with(_unk(), added=AddedToken("<longer-than-any-token>")), 23),
}

# name -> (tokenizer, a text it covers with far fewer tokens than a tenth of its characters)
UNBOUNDED = {
    "BPE without unk drops unknown characters": (_bpe, "z" * 1000),
    "fused unk": (lambda: _bpe(unk_token="<unk>", fuse_unk=True), "z" * 1000),
    "Whitespace pre-tokenizer": (lambda: _with(_unk(), pre_tokenizer=pre_tokenizers.Whitespace()), " " * 1000),
    "Split that removes": (lambda: _with(_unk(), pre_tokenizer=pre_tokenizers.Split(" ", "removed")), " " * 1000),
    "Strip normalizer": (lambda: _with(_unk(), normalizers.Strip()), " " * 1000 + "a"),
    "regex Replace": (lambda: _with(_unk(), normalizers.Replace(Regex(" +"), " ")), " " * 1000),
    "StripAccents": (lambda: _with(_unk(), normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents()])),
                     "e" + "\u0301" * 1000),
    "added token taking whitespace": (lambda: _with(_unk(), added=AddedToken("<m>", lstrip=True)), " " * 1000 + "<m>"),
    "WordPiece": (lambda: Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]",
                                                     max_input_chars_per_word=100)), "b" * 1000),
    "Unigram": (lambda: Tokenizer(models.Unigram([("<unk>", 0.0), ("a", -1.0)], unk_id=0)), "z" * 1000),
}


@pytest.mark.parametrize("name", list(BOUNDED))
def test_no_text_has_fewer_tokens_than_its_characters_over_the_bound(name):
    build, expected = BOUNDED[name]
    tok = build()
    bound = max_chars_per_token(tok)
    assert bound == expected
    for text in ADVERSARIAL:
        assert len(text) <= bound * len(tok.encode(text, add_special_tokens=False).ids), (name, text[:20])


@pytest.mark.parametrize("name", list(UNBOUNDED))
def test_no_bound_where_a_token_can_cover_any_number_of_characters(name):
    build, text = UNBOUNDED[name]
    tok = build()
    assert max_chars_per_token(tok) is None
    assert 10 * len(tok.encode(text, add_special_tokens=False).ids) < len(text)  # why: the counterexample


def test_tiny_tokenizer_bound_is_its_longest_token_and_holds_on_the_samples(tokenizer):
    backend = plain_backend(tokenizer)
    bound = max_chars_per_token(backend)
    assert bound == max(len(t) for t in backend.get_vocab(with_added_tokens=True))
    texts = [p.read_text() for p in sorted(EXAMPLES.rglob("*.jsonl"))] + ADVERSARIAL
    longest = max(backend.get_vocab(), key=len)
    texts.append(backend.decode([backend.token_to_id(longest)]) * 300)  # the tightest case: bound chars a token
    for text in texts:
        assert len(text) <= bound * len(backend.encode(text, add_special_tokens=False).ids)


def test_nfc_composes_at_most_the_longest_canonical_decomposition():
    longest = max(len(unicodedata.normalize("NFD", chr(c))) for c in range(sys.maxunicode + 1)
                  if not 0xD800 <= c < 0xE000)
    assert longest == LONGEST_CANONICAL_DECOMPOSITION
