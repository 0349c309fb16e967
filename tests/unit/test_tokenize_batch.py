"""The batched tokenization path equals the definition: per-record results, the token-by-token mask,
and the tokenizer's own encoding."""

import json

import pytest

from sftpipe.data.records import Conversation, RecordError
from sftpipe.data.templates import BUILTIN
from sftpipe.data.tokenize import ConversationTokenizer, _mask, _mask_token_by_token, plain_backend
from tests.conftest import EXAMPLES


def _all_sample_conversations():
    convs = []
    for line in (EXAMPLES / "chat" / "messages_sample.jsonl").read_text().splitlines():
        convs.append(Conversation(json.loads(line)["messages"], "chat", "l"))
    for line in (EXAMPLES / "alpaca" / "alpaca_sample.jsonl").read_text().splitlines():
        r = json.loads(line)
        convs.append(Conversation([{"role": "user", "content": r["instruction"]},
                                   {"role": "assistant", "content": r["output"]}], "alpaca", "l"))
    convs.append(Conversation([{"role": "assistant", "content": "Plain text record."}], "text", "l", kind="text"))
    convs.append(Conversation([{"role": "user", "content": "long " * 300},
                               {"role": "assistant", "content": "x"}], "s", "l"))  # too long for 256
    return convs


@pytest.mark.parametrize("template", sorted(BUILTIN))
def test_batch_equals_one_record_at_a_time(tokenizer, template):
    encode = ConversationTokenizer(tokenizer, BUILTIN[template], max_length=256, overlong="drop")
    convs = _all_sample_conversations()
    batch = encode.encode_batch(convs)
    singles = []
    for conv in convs:
        try:
            singles.append(encode(conv))
        except RecordError as err:
            singles.append(err)
    assert len(batch) == len(singles) == len(convs)
    for b, s in zip(batch, singles):
        if isinstance(s, RecordError):
            assert isinstance(b, RecordError) and (b.reason, b.detail) == (s.reason, s.detail)
        else:
            assert (b.input_ids, b.labels, b.truncated) == (s.input_ids, s.labels, s.truncated)
    errors = sum(isinstance(b, RecordError) for b in batch)
    assert 0 < errors < len(batch) / 2  # both outcomes are compared


def test_backend_encoding_equals_the_tokenizer_call(tokenizer):
    backend = plain_backend(tokenizer)
    texts = [tokenizer.apply_chat_template(c.messages, chat_template=BUILTIN["chatml"], tokenize=False)
             for c in _all_sample_conversations()]
    ours = backend.encode_batch(texts, add_special_tokens=False)
    theirs = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    assert [e.ids for e in ours] == theirs["input_ids"]
    assert [e.offsets for e in ours] == [[tuple(o) for o in offs] for offs in theirs["offset_mapping"]]


def test_fast_mask_equals_the_token_by_token_definition(tokenizer):
    backend = plain_backend(tokenizer)
    checked = straddles = 0
    for conv in _all_sample_conversations():
        text = tokenizer.apply_chat_template(conv.messages, chat_template=BUILTIN["chat"], tokenize=False)
        enc = backend.encode(text, add_special_tokens=False)
        for a in range(0, len(text), 7):  # every kind of boundary: on, inside and between tokens
            spans = [(a, min(len(text), a + 40))]
            results = []
            for mask in (_mask, _mask_token_by_token):
                try:
                    results.append(mask(enc.ids, enc.offsets, spans))
                except RecordError as err:
                    results.append(err.reason)
            assert results[0] == results[1], (text, spans)
            straddles += results[0] == "boundary_straddle"
            checked += 1
    assert checked > 1000 and 0 < straddles < checked


@pytest.mark.parametrize("template", sorted(BUILTIN))
def test_fast_renderer_equals_apply_chat_template(tokenizer, template):
    from sftpipe.data.templates import BatchRenderer, render

    renderer = BatchRenderer(tokenizer, BUILTIN[template])
    chats = [c.messages for c in _all_sample_conversations() if c.kind == "chat"]
    for gen in (False, True):
        prompts = [m[:-1] if gen else m for m in chats]
        assert renderer(prompts, gen) == [render(tokenizer, BUILTIN[template], m, gen) for m in prompts]
    assert renderer.fast  # the fast path was used and agreed


def test_fast_renderer_falls_back_for_good_on_a_difference(tokenizer):
    from sftpipe.data.templates import BatchRenderer, render

    renderer = BatchRenderer(tokenizer, BUILTIN["chatml"])

    class Wrong:
        def render(self, **kwargs):
            return "not what apply_chat_template renders"

    renderer._compiled = Wrong()
    chats = [c.messages for c in _all_sample_conversations()[:5]]
    assert renderer(chats, False) == [render(tokenizer, BUILTIN["chatml"], m, False) for m in chats]
    assert not renderer.fast
