"""Tokenize conversations into `input_ids` and `labels` with the loss mask derived by rendering.

For each assistant turn i the template is rendered twice: the conversation up to turn i with the
generation prompt, and up to and including turn i. The characters between the two are the assistant's
(answer plus end token). The full text is tokenized once with offsets; a token is trained iff it starts
inside an assistant span. A token that straddles a span boundary means the prompt tokens are not a
prefix of the full tokens: the example is rejected, never trained on with a shifted mask.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerBase

from sftpipe.data.records import IGNORE_INDEX, Conversation, RecordError
from sftpipe.data.templates import BatchRenderer, render
from sftpipe.data.token_bound import max_chars_per_token
from sftpipe.errors import SftpipeError


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def num_trained(self) -> int:
        return len(self.labels) - self.labels.count(IGNORE_INDEX)  # list.count runs in C


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
        self.backend = plain_backend(tokenizer)
        self.render_batch = BatchRenderer(tokenizer, template)
        # Under drop, a text longer than max_length * chars_per_token characters is certain to exceed
        # max_length tokens (see token_bound.py) and is dropped untokenized. Under truncate every text is
        # tokenized whole: the first max_length tokens of a cut text are not provably those of the whole (a
        # cut inside a word changes its tokens, a pre-tokenizer's lookahead reaches across the cut), so no
        # cut is made.
        self.chars_per_token = max_chars_per_token(self.backend) if overlong == "drop" else None

    def __call__(self, conv: Conversation) -> TokenizedExample:
        """Tokenize one conversation.

        Raises:
            RecordError: the record cannot be trained on (see `encode_batch`).
        """
        result = self.encode_batch([conv])[0]
        if isinstance(result, RecordError):
            raise result
        return result

    def encode_batch(self, convs: list[Conversation]) -> list[TokenizedExample | RecordError]:
        """Tokenize many conversations with one batched render and one batched fast-tokenizer call per kind.

        Each result is the example or the `RecordError` (template_error, template_not_prefix,
        boundary_straddle, multiple_bos, empty_mask, too_long, ...) that rejects it. A text over the
        character bound is too_long even where tokenizing it would have found another of these first.
        """
        results: list[TokenizedExample | RecordError | None] = [self._special_token_in_text(c) for c in convs]
        pending = [i for i, r in enumerate(results) if r is None]
        self._encode_texts(convs, [i for i in pending if convs[i].kind == "text"], results)
        self._encode_chats(convs, [i for i in pending if convs[i].kind != "text"], results)
        return results  # type: ignore[return-value]  # every slot is filled by now

    def _encode_texts(self, convs: list[Conversation], text: list[int],
                      results: list[TokenizedExample | RecordError | None]) -> None:
        """Fill `results[i]` for the plain text records `text`: every token trained, eos appended."""
        if self.eos_id is None:
            for i in text:
                results[i] = RecordError("no_eos", "the tokenizer has no eos token to end a text record")
            return
        for i in text:
            results[i] = self._over_char_bound(convs[i].messages[0]["content"])
        text = [i for i in text if results[i] is None]
        if text:
            encoded = self.backend.encode_batch([convs[i].messages[0]["content"] for i in text],
                                                add_special_tokens=False)
            for i, enc in zip(text, encoded):
                ids = [*enc.ids, self.eos_id]
                results[i] = self._finish(ids, list(ids))

    def _encode_chats(self, convs: list[Conversation], chat: list[int],
                      results: list[TokenizedExample | RecordError | None]) -> None:
        """Fill `results[i]` for the chats `chat`: rendered, tokenized once, masked by assistant spans."""
        rendered = self._render_chats([convs[i].messages for i in chat])
        ok = []
        for i, r in zip(chat, rendered):
            results[i] = r if isinstance(r, RecordError) else self._over_char_bound(r[0])
            if results[i] is None:
                ok.append((i, r))
        if ok:
            encoded = self.backend.encode_batch([full for _, (full, _) in ok], add_special_tokens=False)
            for (i, (_, spans)), enc in zip(ok, encoded):
                ids = enc.ids
                try:
                    results[i] = self._finish(ids, _mask(ids, enc.offsets, spans))
                except RecordError as err:
                    results[i] = err

    def _over_char_bound(self, text: str) -> RecordError | None:
        """too_long, without tokenizing, for a text more characters long than max_length tokens can cover."""
        per_token = self.chars_per_token
        if per_token is None or len(text) <= self.max_length * per_token:
            return None
        return RecordError("too_long", f"at least {-(-len(text) // per_token)} tokens ({len(text)} characters, "
                           f"at most {per_token} per token) > data.max_length {self.max_length} "
                           "(data.overlong: drop)")

    def _special_token_in_text(self, conv: Conversation) -> RecordError | None:
        for i, msg in enumerate(conv.messages):
            found = next((t for t in self.special_texts if t in msg["content"]), None)
            if found is not None:
                return RecordError("special_token_in_text", f"message {i} ({msg['role']}) contains the special token "
                                   f"{found!r}, which would be read as a control token, not as text")
        return None

    def _finish(self, ids: list[int], labels: list[int]) -> TokenizedExample | RecordError:
        if self.add_bos and (not ids or ids[0] != self.bos_id):
            ids, labels = [self.bos_id, *ids], [IGNORE_INDEX, *labels]
        if self.bos_id is not None and ids.count(self.bos_id) > 1:
            return RecordError("multiple_bos", "the BOS token occurs more than once (template or text contains it)")
        try:
            return self._fit(TokenizedExample(ids, labels))
        except RecordError as err:
            return err

    def _render_chats(self, chats: list[list[dict[str, str]]]) -> list[tuple[str, list[tuple[int, int]]] | RecordError]:
        """Full text and assistant character spans of each chat, rendering all chats in a few batched calls.

        For assistant turn i the span runs from the end of the prompt (turns before i with the generation
        prompt) to the end of the text up to and including turn i; the last turn's "up to" is the full text.
        """
        if not chats:
            return []
        jobs: list[tuple[int, int, list[dict[str, str]], bool]] = []  # (chat, turn, messages, generation prompt)
        for c, messages in enumerate(chats):
            jobs.append((c, -1, messages, False))
            for i, msg in enumerate(messages):
                if msg["role"] == "assistant":
                    jobs.append((c, i, messages[:i], True))
                    if i + 1 < len(messages):
                        jobs.append((c, i, messages[: i + 1], False))
        texts = self._render_many([(messages, gen) for _, _, messages, gen in jobs])
        out: list[tuple[str, list[tuple[int, int]]] | RecordError] = []
        by_chat: dict[int, dict[tuple[int, bool], str | RecordError]] = {}
        for (c, i, _, gen), text in zip(jobs, texts):
            by_chat.setdefault(c, {})[(i, gen)] = text
        for c, messages in enumerate(chats):
            parts = by_chat[c]
            failed = next((t for t in parts.values() if isinstance(t, RecordError)), None)
            if failed is not None:
                out.append(failed)
                continue
            full = parts[(-1, False)]
            spans = []
            try:
                for i, msg in enumerate(messages):
                    if msg["role"] != "assistant":
                        continue
                    prompt = parts[(i, True)]
                    upto = parts.get((i, False), full)
                    if not (upto.startswith(prompt) and full.startswith(upto)):
                        raise RecordError(
                            "template_not_prefix",
                            f"rendering turn {i} changes earlier text, so the assistant span cannot be located",
                        )
                    spans.append((len(prompt), len(upto.rstrip())))
            except RecordError as err:
                out.append(err)
                continue
            out.append((full, spans))
        return out

    def _render_many(self, jobs: list[tuple[list[dict[str, str]], bool]]) -> list[str | RecordError]:
        """Render (messages, add_generation_prompt) pairs: one batched call per flag; if a batch fails, each
        of its conversations is rendered alone so the failure is pinned on its record."""
        out: list[str | RecordError] = [""] * len(jobs)
        for gen in (False, True):
            idx = [k for k, (_, g) in enumerate(jobs) if g == gen]
            if not idx:
                continue
            try:
                texts = self.render_batch([jobs[k][0] for k in idx], gen)
            except Exception:  # noqa: BLE001 - jinja raises many types; find the record that fails below
                texts = []
                for k in idx:
                    try:
                        texts.append(render(self.tokenizer, self.template, jobs[k][0], gen))
                    except Exception as exc:  # noqa: BLE001
                        texts.append(RecordError("template_error", f"the template cannot render it: {exc}"))
            for k, text in zip(idx, texts):
                out[k] = text
        return out

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


def _mask(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """Labels: a token is trained iff it starts inside an assistant span [a, b).

    Raises:
        RecordError: boundary_straddle, when a token crosses a span boundary (the prompt tokens are then
            not a prefix of the full tokens).
    """
    starts = [start for start, _ in offsets]
    ends = [end for _, end in offsets]
    if not (_ascending(starts) and _ascending(ends)):
        return _mask_token_by_token(ids, offsets, spans)
    labels = [IGNORE_INDEX] * len(ids)
    for a, b in spans:
        for boundary in (a, b):
            # Offsets ascend, so the only token that can contain the boundary is the last one starting before it.
            j = bisect_left(starts, boundary) - 1
            if j >= 0 and ends[j] > boundary:
                raise _straddle(j)
        first, last = bisect_left(starts, a), bisect_left(starts, b)
        labels[first:last] = ids[first:last]
    return labels


def _ascending(values: list[int]) -> bool:
    return values == sorted(values)  # in C: timsort is linear on sorted input


def _mask_token_by_token(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """The definition itself, for tokenizers whose offsets do not ascend."""
    labels = [IGNORE_INDEX] * len(ids)
    for j, (start, end) in enumerate(offsets):
        for a, b in spans:
            if start < a < end or start < b < end:
                raise _straddle(j)
            if a <= start < b:
                labels[j] = ids[j]
    return labels


def _straddle(j: int) -> RecordError:
    return RecordError(
        "boundary_straddle",
        f"token {j} spans the prompt/answer boundary, so prompt tokens are not a prefix of the full tokens; end "
        "prompts with a newline or use a template with special tokens",
    )


def plain_backend(tokenizer: PreTrainedTokenizerBase) -> Tokenizer:
    """A copy of the fast tokenizer's Rust backend with truncation and padding off.

    Calling it directly returns ids and offsets without building the Python dicts of every other output
    (attention mask, type ids, ...) that `tokenizer(...)` builds: half of the tokenization time.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise SftpipeError(f"tokenizer {tokenizer.name_or_path!r} is a slow tokenizer; sftpipe needs a fast one")
    plain = Tokenizer.from_str(backend.to_str())
    plain.no_truncation()
    plain.no_padding()
    return plain


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
