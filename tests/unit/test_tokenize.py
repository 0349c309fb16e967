"""Invariants of the loss mask: what is trained is exactly the assistant text plus its end token."""

import copy
import json

import datasets
import pytest

from sftpipe.config import DataConfig
from sftpipe.data.batches.collate import TokenStore, collate_padded
from sftpipe.data.records import Conversation, RecordError
from sftpipe.data.templates import BUILTIN, check_template, resolve_template
from sftpipe.data.tokenize import IGNORE_INDEX, ConversationTokenizer
from sftpipe.errors import SftpipeError
from tests.conftest import EXAMPLES


def _conversations():
    convs = []
    for line in (EXAMPLES / "chat" / "messages_sample.jsonl").read_text().splitlines():
        convs.append(Conversation(json.loads(line)["messages"], "chat", "l"))
    return convs


def _trained_runs(ex):
    """Contiguous runs of trained label ids."""
    runs, current = [], []
    for label in ex.labels:
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(label)
    return runs + ([current] if current else [])


@pytest.mark.parametrize("template", sorted(BUILTIN))
def test_every_trained_label_decodes_to_assistant_text_plus_end_token(tokenizer, template):
    encode = ConversationTokenizer(tokenizer, BUILTIN[template], max_length=4096, overlong="drop")
    checked = 0
    for conv in _conversations():
        ex = encode(conv)
        assert all(label in (IGNORE_INDEX, tok) for label, tok in zip(ex.labels, ex.input_ids))
        answers = [m["content"] for m in conv.messages if m["role"] == "assistant"]
        runs = _trained_runs(ex)
        assert [tokenizer.decode(r) for r in runs] == [a + tokenizer.eos_token for a in answers]
        checked += len(answers)
    assert checked >= 30


@pytest.mark.parametrize("template", sorted(BUILTIN))
def test_exactly_one_bos(tokenizer, template):
    encode = ConversationTokenizer(tokenizer, BUILTIN[template], max_length=4096, overlong="drop")
    for conv in _conversations()[:10]:
        ids = encode(conv).input_ids
        assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1


def test_end_token_trained_when_pad_equals_eos(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.pad_token = tok.eos_token
    assert tok.pad_token_id == tok.eos_token_id
    encode = ConversationTokenizer(tok, BUILTIN["chatml"], max_length=4096, overlong="drop")
    short = encode(Conversation([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}], "s", "l"))
    long = encode(_conversations()[0])
    store = TokenStore(datasets.Dataset.from_list([{"input_ids": short.input_ids, "labels": short.labels},
                                                   {"input_ids": long.input_ids, "labels": long.labels}]))
    batch = collate_padded(store, [[0], [1]], pad_id=tok.pad_token_id).inputs
    row = batch["labels"][0].tolist()
    trained = [t for t in row if t != IGNORE_INDEX]
    assert trained[-1] == tok.eos_token_id  # the answer's end token is trained...
    n = len(short.input_ids)
    assert batch["input_ids"][0, n:].eq(tok.eos_token_id).all()  # ...though padding uses the same id
    assert all(t == IGNORE_INDEX for t in row[n:])  # and padding is not trained


def test_text_records_train_everything_but_bos(tokenizer):
    encode = ConversationTokenizer(tokenizer, BUILTIN["chatml"], max_length=4096, overlong="drop")
    ex = encode(Conversation([{"role": "assistant", "content": "plain prose"}], "t", "l", kind="text"))
    assert ex.labels[0] == IGNORE_INDEX and ex.labels[1:] == ex.input_ids[1:]
    assert ex.input_ids[-1] == tokenizer.eos_token_id


def test_overlong_drop_and_truncate(tokenizer):
    conv = _conversations()[0]
    n = len(ConversationTokenizer(tokenizer, BUILTIN["chatml"], 4096, "drop")(conv).input_ids)
    with pytest.raises(RecordError) as info:
        ConversationTokenizer(tokenizer, BUILTIN["chatml"], n - 1, "drop")(conv)
    assert info.value.reason == "too_long"
    cut = ConversationTokenizer(tokenizer, BUILTIN["chatml"], n - 1, "truncate")(conv)
    assert cut.truncated and len(cut.input_ids) == n - 1
    with pytest.raises(RecordError) as info:
        ConversationTokenizer(tokenizer, BUILTIN["chatml"], 10, "truncate")(conv)
    assert info.value.reason == "empty_mask_after_truncation"


class _EncodeSpy:
    """The Rust backend, recording the length of every text it is asked to tokenize."""

    def __init__(self, backend):
        self.backend, self.lengths = backend, []

    def encode_batch(self, texts, **kwargs):
        self.lengths += [len(t) for t in texts]
        return self.backend.encode_batch(texts, **kwargs)


@pytest.mark.parametrize("kind", ["chat", "text"])
def test_huge_record_is_too_long_without_being_tokenized(tokenizer, kind):
    encode = ConversationTokenizer(tokenizer, BUILTIN["chatml"], 256, "drop")
    spy = encode.backend = _EncodeSpy(encode.backend)
    huge = "again " * 850_000  # 5.1 MB in one record
    if kind == "text":
        convs = [Conversation([{"role": "assistant", "content": c}], "t", "l", kind="text") for c in (huge, "Short.")]
    else:
        convs = [Conversation([{"role": "user", "content": "Say it."}, {"role": "assistant", "content": c}], "c", "l")
                 for c in (huge, "Short.")]
    dropped, kept = encode.encode_batch(convs)
    assert isinstance(dropped, RecordError) and dropped.reason == "too_long"
    assert "tokens" in dropped.detail and "> data.max_length 256 (data.overlong: drop)" in dropped.detail
    assert not isinstance(kept, RecordError) and len(kept.input_ids) < 256
    assert spy.lengths and max(spy.lengths) < 1000  # the short record only


def test_record_just_over_the_character_bound_is_dropped_and_one_under_it_tokenized(tokenizer):
    encode = ConversationTokenizer(tokenizer, BUILTIN["chatml"], 256, "drop")
    spy = encode.backend = _EncodeSpy(encode.backend)
    bound = 256 * encode.chars_per_token
    for chars, tokenized in ((bound, True), (bound + 1, False)):
        spy.lengths.clear()
        result = encode.encode_batch([Conversation([{"role": "assistant", "content": "x" * chars}], "t", "l",
                                                   kind="text")])[0]
        assert isinstance(result, RecordError) and result.reason == "too_long"
        assert bool(spy.lengths) == tokenized
    assert ConversationTokenizer(tokenizer, BUILTIN["chatml"], 256, "truncate").chars_per_token is None


def test_token_straddling_the_answer_boundary_is_rejected(tokenizer):
    # The prompt ends mid-word, so BPE merges prompt and answer characters into one token.
    template = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}"
                "{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}")
    encode = ConversationTokenizer(tokenizer, template, 4096, "drop")
    conv = Conversation([{"role": "user", "content": "func"}, {"role": "assistant", "content": "tion"}], "s", "l")
    with pytest.raises(RecordError) as info:
        encode(conv)
    assert info.value.reason == "boundary_straddle"
    # control: the same words with a newline boundary are fine
    ok = Conversation([{"role": "user", "content": "func\n"}, {"role": "assistant", "content": "tion"}], "s", "l")
    assert tokenizer.decode([t for t in encode(ok).labels if t != IGNORE_INDEX]) == "tion" + tokenizer.eos_token


def test_template_that_rewrites_history_is_rejected(tokenizer):
    # Renders earlier assistant turns differently once a later turn exists (like think-stripping templates).
    template = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ 'U: ' + m['content'] + '\n' }}"
                "{% elif loop.last %}{{ m['content'] + eos_token + '\n' }}"
                "{% else %}{{ '[old] ' + m['content'] + eos_token + '\n' }}{% endif %}{% endfor %}")
    encode = ConversationTokenizer(tokenizer, template, 4096, "drop")
    conv = _conversations()
    multi = next(c for c in conv if sum(m["role"] == "assistant" for m in c.messages) > 1)
    with pytest.raises(RecordError) as info:
        encode(multi)
    assert info.value.reason == "template_not_prefix"


def test_template_without_end_token_is_refused(tokenizer):
    template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
    with pytest.raises(SftpipeError, match="eos_token"):
        check_template(tokenizer, template, "custom")


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_templates_pass_the_check(tokenizer, name):
    check_template(tokenizer, BUILTIN[name], name)


def test_tokenizer_template_used_when_asked(tokenizer):
    cfg = DataConfig(template="tokenizer")
    assert resolve_template(cfg, tokenizer) == tokenizer.chat_template
