"""Quality filters on canonical records: lengths in characters and tokens, URLs, code blocks, junk.

Each check raises `RecordError` with a stable reason code, so every filtered record is counted by reason
in the manifest and listed in `rejected.jsonl`. The prompt is the text of the user turns and the
response the text of the assistant turns (for plain-text records: no prompt, the text is the response).
"""

from __future__ import annotations

import re
from collections import Counter

from sftpipe.config.data_sections import FilterConfig
from sftpipe.data.records import Conversation, RecordError
from sftpipe.data.tokenize import TokenizedExample

URL_RE = re.compile(r"\b(?:https?://|ftp://|www\.)[^\s<>\"']+", re.IGNORECASE)
FENCE_RE = re.compile(r"^[ \t]*```", re.MULTILINE)
ALNUM_RE = re.compile(r"[^\W_]")  # a letter or digit in any script
MIN_SPAM_LINE_CHARS = 10
MIN_SPAM_LINES = 4


def prompt_text(conv: Conversation) -> str:
    return "\n".join(m["content"] for m in conv.messages if m["role"] == "user")


def response_text(conv: Conversation) -> str:
    return "\n".join(m["content"] for m in conv.messages if m["role"] == "assistant")


def check_quality(conv: Conversation, cfg: FilterConfig) -> None:
    """Character-level checks, run before tokenization.

    Raises:
        RecordError: with reason prompt_chars_too_few/many, response_chars_too_few/many, url_in_response,
            url_in_prompt, no_code_block, code_block, no_alphanumeric or repeated_lines.
    """
    prompt, response = prompt_text(conv), response_text(conv)
    if conv.kind == "chat":
        _check_range("prompt_chars", len(prompt), cfg.min_prompt_chars, cfg.max_prompt_chars, "characters")
    _check_range("response_chars", len(response), cfg.min_response_chars, cfg.max_response_chars, "characters")
    if cfg.urls != "keep":
        if match := URL_RE.search(response):
            raise RecordError("url_in_response", f"the response contains a URL ({match.group()[:80]})")
        if cfg.urls == "drop_any" and (match := URL_RE.search(prompt)):
            raise RecordError("url_in_prompt", f"the prompt contains a URL ({match.group()[:80]})")
    if cfg.code_blocks != "any":
        has_block = FENCE_RE.search(response) is not None
        if cfg.code_blocks == "require" and not has_block:
            raise RecordError("no_code_block", "the response has no fenced code block (data.filters.code_blocks: "
                              "require)")
        if cfg.code_blocks == "forbid" and has_block:
            raise RecordError("code_block", "the response has a fenced code block (data.filters.code_blocks: forbid)")
    if cfg.require_alphanumeric and not ALNUM_RE.search(response):
        raise RecordError("no_alphanumeric", "the response has no letter or digit")
    share = repeated_line_fraction(response)
    if share > cfg.max_repeated_line_fraction:
        raise RecordError("repeated_lines", f"{share:.0%} of the response's lines repeat an earlier line "
                          f"(data.filters.max_repeated_line_fraction: {cfg.max_repeated_line_fraction})")


def check_token_lengths(example: TokenizedExample, cfg: FilterConfig) -> None:
    """Token-level checks: prompt tokens are the untrained ones, response tokens the trained ones.

    Raises:
        RecordError: with reason prompt_tokens_too_few/many or response_tokens_too_few/many.
    """
    trained = example.num_trained
    _check_range("prompt_tokens", len(example.input_ids) - trained, cfg.min_prompt_tokens, cfg.max_prompt_tokens,
                 "tokens")
    _check_range("response_tokens", trained, cfg.min_response_tokens, cfg.max_response_tokens, "tokens")


def repeated_line_fraction(text: str) -> float:
    """Share of the substantial lines (10+ characters) that repeat an earlier one; 0 below 4 such lines.

    Short lines (`}`, `else:`, blank) repeat in any code, so only lines long enough to be content count.
    """
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if len(line) >= MIN_SPAM_LINE_CHARS]
    if len(lines) < MIN_SPAM_LINES:
        return 0.0
    counts = Counter(lines)
    return sum(n - 1 for n in counts.values()) / len(lines)


def _check_range(what: str, value: int, low: int, high: int | None, unit: str) -> None:
    if value < low:
        raise RecordError(f"{what}_too_few", f"{value} {unit} < data.filters.min_{what} {low}")
    if high is not None and value > high:
        raise RecordError(f"{what}_too_many", f"{value} {unit} > data.filters.max_{what} {high}")
