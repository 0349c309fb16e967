"""Quality filters and syntax checks: each reason fires on the record it targets, never on a clean one,
and every filtered record is counted by reason."""

import json
import shutil

import pytest

from sftpipe.config.data_sections import FilterConfig
from sftpipe.data import prepare
from sftpipe.data.filters import check_quality, check_token_lengths, repeated_line_fraction
from sftpipe.data.records import Conversation, RecordError
from sftpipe.data.syntax import check_syntax, code_of, haskell_error, python_error
from sftpipe.data.tokenize import IGNORE_INDEX, TokenizedExample
from sftpipe.errors import SftpipeError
from tests.conftest import make_config, write_jsonl


def conv(prompt: str, response: str) -> Conversation:
    return Conversation([{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], "s", "l")


CLEAN = conv("What does map do in Haskell?", "It applies a function to every element of a list.\n\n"
             "```haskell\nmap (+1) [1, 2, 3]\n```")
SPAM = "\n".join(["Buy cheap watches online today!!!"] * 6)

CASES = [  # (filter settings, prompt, response, expected reason)
    ({"min_prompt_chars": 10}, "Hi?", "A fine answer.", "prompt_chars_too_few"),
    ({"max_prompt_chars": 10}, "A prompt that is long.", "A fine answer.", "prompt_chars_too_many"),
    ({"min_response_chars": 20}, "Question?", "Short.", "response_chars_too_few"),
    ({"max_response_chars": 20}, "Question?", "An answer longer than twenty characters.", "response_chars_too_many"),
    ({"urls": "drop_response"}, "Question?", "See https://example.com/page for more.", "url_in_response"),
    ({"urls": "drop_any"}, "Read www.example.org please", "Done.", "url_in_prompt"),
    ({"code_blocks": "require"}, "Question?", "No code here.", "no_code_block"),
    ({"code_blocks": "forbid"}, "Question?", "```python\nx = 1\n```", "code_block"),
    ({}, "Question?", "... !!! ???", "no_alphanumeric"),
    ({}, "Question?", SPAM, "repeated_lines"),
]


@pytest.mark.parametrize(("settings", "prompt", "response", "reason"), CASES, ids=[c[3] for c in CASES])
def test_each_filter_rejects_its_target(settings, prompt, response, reason):
    with pytest.raises(RecordError) as info:
        check_quality(conv(prompt, response), FilterConfig(**settings))
    assert info.value.reason == reason
    if reason not in ("no_alphanumeric", "repeated_lines"):  # the junk checks are on by default
        check_quality(conv(prompt, response), FilterConfig())  # negative control: the filter is the cause


def test_a_clean_record_passes_every_filter_at_once():
    check_quality(CLEAN, FilterConfig(min_prompt_chars=10, max_prompt_chars=100, min_response_chars=20,
                                      max_response_chars=200, urls="drop_any", code_blocks="require"))


def test_url_filter_keeps_clean_and_prompt_urls_when_only_responses_are_checked():
    check_quality(conv("Read www.example.org please", "Done."), FilterConfig(urls="drop_response"))


def test_token_length_filters_count_prompt_as_untrained_and_response_as_trained():
    ex = TokenizedExample([1, 2, 3, 4, 5, 6], [IGNORE_INDEX] * 4 + [5, 6])
    check_token_lengths(ex, FilterConfig(min_prompt_tokens=4, max_prompt_tokens=4, min_response_tokens=2,
                                         max_response_tokens=2))
    for settings, reason in [({"min_prompt_tokens": 5}, "prompt_tokens_too_few"),
                             ({"max_prompt_tokens": 3}, "prompt_tokens_too_many"),
                             ({"min_response_tokens": 3}, "response_tokens_too_few"),
                             ({"max_response_tokens": 1}, "response_tokens_too_many")]:
        with pytest.raises(RecordError, match=reason):
            check_token_lengths(ex, FilterConfig(**settings))


def test_repeated_line_fraction_ignores_short_lines_that_repeat_in_any_code():
    code = "\n".join(["if x:", "    return compute_value(x)", "else:", "    return default_value()", "}", "}", "}"])
    assert repeated_line_fraction(code) == 0.0
    assert repeated_line_fraction(SPAM) == pytest.approx(5 / 6)
    assert repeated_line_fraction("line one is long\nline two is long\nline one is long\nline four is long") == 0.25


def test_min_above_max_is_a_config_error():
    with pytest.raises(ValueError, match="min_prompt_chars"):
        FilterConfig(min_prompt_chars=10, max_prompt_chars=5)


def test_python_syntax_check_on_fenced_blocks_or_whole_response():
    assert python_error("def f(x):\n    return x\n") is None
    assert "line 1" in python_error("def f(:\n    pass\n")
    text = "Here:\n```python\ndef f(x):\n    return x\n```\nand\n```bash\nls -la (\n```"
    assert code_of(text, "python") == ["def f(x):\n    return x\n"]  # the bash block is not checked
    check_syntax(conv("Write f", text), "python")
    with pytest.raises(RecordError, match="syntax_error"):
        check_syntax(conv("Write f", "```python\ndef f(:\n```"), "python")
    with pytest.raises(RecordError, match="syntax_error"):
        check_syntax(conv("Write f", "def f(:"), "python")  # no fence: the whole response is the code


@pytest.mark.skipif(shutil.which("ghc") is None, reason="needs ghc")
def test_haskell_check_with_ghc():
    assert haskell_error("double :: Int -> Int\ndouble x = x * 2\n") is None
    error = haskell_error("double :: Int -> Int\ndouble x = x *\n")
    assert error is not None and "Snippet.hs:3" in error  # line numbers are the record's own


def test_prepare_counts_every_filtered_record_by_reason(tmp_path, tiny_dir):
    good = [{"prompt": f"Write a function number {i}",
             "completion": f"```python\ndef f{i}(x):\n    return x + {i}\n```"} for i in range(12)]
    bad_code = [{"prompt": f"Write broken code {i}", "completion": f"```python\ndef g{i}(:\n```"} for i in range(3)]
    url = [{"prompt": "Where to read?", "completion": "Read https://example.com/docs first."}]
    junk = [{"prompt": "Say something", "completion": "..."}]
    path = write_jsonl(tmp_path / "code.jsonl", good[:6] + bad_code + url + junk + good[6:])
    cfg = make_config(tmp_path, tiny_dir, [{"path": str(path), "syntax_check": "python"}],
                      data={"filters": {"urls": "drop_response"}})
    result = prepare.run(cfg)
    assert result.rejected == {"syntax_error": 3, "url_in_response": 1, "no_alphanumeric": 1}
    assert result.removed_by_stage == {"filter": {"no_alphanumeric": 1, "syntax_error": 3, "url_in_response": 1}}
    assert result.records_read == 17 == sum(s.examples for s in result.splits.values()) + 5
    rejected = [json.loads(line) for line in (tmp_path / "data" / "rejected.jsonl").read_text().splitlines()]
    assert [r["location"].rsplit(":", 1)[1] for r in rejected] == ["7", "8", "9", "10", "11"]
    assert all(r["stage"] == "filter" for r in rejected)
    card = (tmp_path / "data" / "DATA_CARD.md").read_text()
    assert "### Quality filters" in card and "| syntax_error | 3 |" in card


def test_haskell_check_without_ghc_fails_before_any_work(tmp_path, tiny_dir, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "p", "completion": "c"}])
    cfg = make_config(tmp_path, tiny_dir, [{"path": str(path), "syntax_check": "haskell"}])
    with pytest.raises(SftpipeError, match=r"data.sources\[0\].syntax_check is haskell but `ghc`"):
        prepare.run(cfg)
