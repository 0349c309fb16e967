"""Tokenize conversations into `input_ids` and `labels` with the loss mask derived by rendering.

For each assistant turn i the template is rendered twice: the conversation up to turn i with the
generation prompt, and up to and including turn i. The characters between the two are the assistant's
(answer plus end token). The full text is tokenized once with offsets; a token is trained iff it starts
inside an assistant span. A token that straddles a span boundary means the prompt tokens are not a
prefix of the full tokens: the example is rejected, never trained on with a shifted mask.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from sftpipe.data.records import Conversation, RecordError
from sftpipe.data.templates import render

IGNORE_INDEX = -100


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def num_trained(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


class ConversationTokenizer:
    """Callable turning a `Conversation` into a `TokenizedExample` (or raising `RecordError`)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, template: str, max_length: int, overlong: str):
        self.tokenizer = tokenizer
        self.template = template
        self.max_length = max_length
        self.overlong = overlong
        self.bos_id = tokenizer.bos_token_id
        self.eos_id = tokenizer.eos_token_id
        self.add_bos = tokenizer_adds_bos(tokenizer)
        self.special_texts = special_token_texts(tokenizer)

    def __call__(self, conv: Conversation) -> TokenizedExample:
        for i, msg in enumerate(conv.messages):
            found = next((t for t in self.special_texts if t in msg["content"]), None)
            if found is not None:
                raise RecordError("special_token_in_text", f"message {i} ({msg['role']}) contains the special token "
                                  f"{found!r}, which would be read as a control token, not as text")
        if conv.kind == "text":
            ids = self.tokenizer(conv.messages[0]["content"], add_special_tokens=False).input_ids
            if self.eos_id is None:
                raise RecordError("no_eos", "the tokenizer has no eos token to end a text record")
            ids = ids + [self.eos_id]
            labels = list(ids)
        else:
            ids, labels = self._chat(conv.messages)
        if self.add_bos and (not ids or ids[0] != self.bos_id):
            ids, labels = [self.bos_id, *ids], [IGNORE_INDEX, *labels]
        if self.bos_id is not None and ids.count(self.bos_id) > 1:
            raise RecordError("multiple_bos", "the BOS token occurs more than once (template or text contains it)")
        return self._fit(TokenizedExample(ids, labels))

    def _chat(self, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
        full = render(self.tokenizer, self.template, messages, add_generation_prompt=False)
        spans = []
        for i, msg in enumerate(messages):
            if msg["role"] != "assistant":
                continue
            prompt = render(self.tokenizer, self.template, messages[:i], add_generation_prompt=True)
            upto = render(self.tokenizer, self.template, messages[: i + 1], add_generation_prompt=False)
            if not (upto.startswith(prompt) and full.startswith(upto)):
                raise RecordError(
                    "template_not_prefix",
                    f"rendering turn {i} changes earlier text, so the assistant span cannot be located",
                )
            spans.append((len(prompt), len(upto.rstrip())))
        enc = self.tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = enc["input_ids"]
        labels = [IGNORE_INDEX] * len(ids)
        for j, (start, end) in enumerate(enc["offset_mapping"]):
            for a, b in spans:
                if start < a < end or start < b < end:
                    raise RecordError(
                        "boundary_straddle",
                        f"token {j} spans the prompt/answer boundary, so prompt tokens are not a prefix of the "
                        "full tokens; end prompts with a newline or use a template with special tokens",
                    )
                if a <= start < b:
                    labels[j] = ids[j]
        return ids, labels

    def _fit(self, example: TokenizedExample) -> TokenizedExample:
        if example.num_trained == 0:
            raise RecordError("empty_mask", "no token is trained (empty assistant answer after rendering)")
        n = len(example.input_ids)
        if n <= self.max_length:
            return example
        if self.overlong == "drop":
            raise RecordError("too_long", f"{n} tokens > data.max_length {self.max_length} (data.overlong: drop)")
        cut = TokenizedExample(example.input_ids[: self.max_length], example.labels[: self.max_length], True)
        if cut.num_trained == 0:
            raise RecordError("empty_mask_after_truncation", f"{n} tokens; nothing trained in the first "
                              f"{self.max_length} (data.overlong: truncate)")
        return cut


def special_token_texts(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Strings the tokenizer turns into special tokens wherever they appear in text (longest first)."""
    texts = set(tokenizer.all_special_tokens)
    texts.update(t.content for t in tokenizer.added_tokens_decoder.values() if t.special)
    return sorted((t for t in texts if t), key=len, reverse=True)


def tokenizer_adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer itself starts sequences with BOS (Llama-style); then we prepend it, never twice."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a").input_ids[:1] == [bos]


def encode_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], template: str | None = None
                  ) -> list[int]:
    """Token ids of a generation prompt, built exactly as training built its prompts (one BOS)."""
    text = render(tokenizer, template or tokenizer.chat_template, messages, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if tokenizer_adds_bos(tokenizer) and ids[:1] != [tokenizer.bos_token_id]:
        ids = [tokenizer.bos_token_id, *ids]
    return ids
