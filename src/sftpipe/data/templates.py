"""Chat templates (Jinja, rendered by the tokenizer's own sandboxed renderer) and their validation.

Every template here ends each assistant turn with `eos_token`, so the model learns to stop; a template
that does not (a custom one, or a tokenizer's) is refused up front instead of training a model that
never ends its answers.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from sftpipe.config.schema import DataConfig
from sftpipe.errors import SftpipeError

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Mistral-style [INST] blocks; a system message is prepended to the first user turn.
INSTRUCT = (
    "{% set ns = namespace(system='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = message['content'] + '\n\n' %}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' + ns.system + message['content'] + ' [/INST]\n' }}"
    "{% set ns.system = '' %}"
    "{% else %}{{ message['content'] + eos_token + '\n' }}{% endif %}"
    "{% endfor %}"
)

CHAT = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ 'System: ' + message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n\nAssistant:\n' }}"
    "{% else %}{{ message['content'] + eos_token + '\n\n' }}{% endif %}"
    "{% endfor %}"
)

ALPACA = (
    "{% set ns = namespace(system='Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.') %}"
    "{% if messages[0]['role'] == 'system' %}{% set ns.system = messages[0]['content'] %}{% endif %}"
    "{{ ns.system + '\n\n' }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n### Response:\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + '\n\n' }}{% endif %}"
    "{% endfor %}"
)

BUILTIN = {"chatml": CHATML, "instruct": INSTRUCT, "chat": CHAT, "alpaca": ALPACA}

# ChatML ends assistant turns with <|im_end|>; that token is the end token when eos is something else.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


def resolve_template(cfg: DataConfig, tokenizer: PreTrainedTokenizerBase) -> str:
    """The Jinja template text the config asks for.

    Raises:
        SftpipeError: `tokenizer` was asked for and the tokenizer has none.
    """
    if cfg.template == "custom":
        return cfg.custom_template or ""
    if cfg.template == "tokenizer":
        template = tokenizer.chat_template
        if not isinstance(template, str) or not template:
            raise SftpipeError(
                "data.template is 'tokenizer' but the tokenizer has no chat template; "
                "choose data.template: chatml (or instruct, chat, alpaca, custom)"
            )
        return template
    return BUILTIN[cfg.template]


def render(
    tokenizer: PreTrainedTokenizerBase, template: str, messages: list[dict[str, str]], add_generation_prompt: bool
) -> str:
    """Render messages to text with the tokenizer's sandboxed Jinja renderer."""
    text = tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert isinstance(text, str)
    return text


def template_with_bos(tokenizer: PreTrainedTokenizerBase, template: str) -> str:
    """`template` as it is saved with a trained model: writing the BOS token itself when training prompts start
    with one (the tokenizer adds it) and the template does not render it.

    Training prepends BOS to the rendered tokens; tools that call `apply_chat_template(..., tokenize=True)`
    (transformers' pipelines, vLLM's chat) tokenize without special tokens, so without this they would prompt
    the model without the BOS it was trained with.
    """
    bos = tokenizer.bos_token
    if bos is None or tokenizer("a").input_ids[:1] != [tokenizer.bos_token_id]:
        return template
    probe = render(tokenizer, template, [{"role": "user", "content": "a"}], add_generation_prompt=True)
    return template if probe.startswith(bos) else "{{ bos_token }}" + template


def render_batch(
    tokenizer: PreTrainedTokenizerBase, template: str, chats: list[list[dict[str, str]]], add_generation_prompt: bool
) -> list[str]:
    """`render` for many conversations in one call (the same renderer, without the per-call overhead)."""
    texts = tokenizer.apply_chat_template(
        chats, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert isinstance(texts, list) and len(texts) == len(chats)
    return texts


class BatchRenderer:
    """Renders many conversations with the template transformers compiled (its sandboxed Jinja).

    `apply_chat_template` re-validates and copies its inputs on every call; rendering the compiled template
    directly is about twice as fast. Every batch is checked: its first conversation is also rendered by
    `apply_chat_template`, and on any difference (or if transformers no longer exposes the compiled
    template) every later batch goes through `apply_chat_template`, so the output never differs from it.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, template: str):
        self.tokenizer = tokenizer
        self.template = template
        self._kwargs = dict(tokenizer.special_tokens_map)
        try:
            from transformers.utils.chat_template_utils import _compile_jinja_template

            self._compiled = _compile_jinja_template(template)
        except Exception:  # noqa: BLE001 - a private helper: any failure means use the public path
            self._compiled = None

    def __call__(self, chats: list[list[dict[str, str]]], add_generation_prompt: bool) -> list[str]:
        if self._compiled is not None and chats:
            try:
                texts = [self._compiled.render(messages=chat, tools=None, documents=None,
                                               add_generation_prompt=add_generation_prompt, **self._kwargs)
                         for chat in chats]
            except Exception:  # noqa: BLE001 - let the reference path raise (or pin) the record's error
                texts = None
            if texts is not None:
                if texts[0] == render_batch(self.tokenizer, self.template, chats[:1], add_generation_prompt)[0]:
                    return texts
                self._compiled = None  # differs from apply_chat_template: never use it again
        return render_batch(self.tokenizer, self.template, chats, add_generation_prompt)

    @property
    def fast(self) -> bool:
        return self._compiled is not None


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that end an assistant turn: eos plus known end-of-turn tokens the vocabulary has."""
    ids = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    vocab = tokenizer.get_vocab()
    for token in END_OF_TURN_TOKENS:
        if token in vocab and vocab[token] not in ids:
            ids.append(vocab[token])
    return ids


def check_template(tokenizer: PreTrainedTokenizerBase, template: str, name: str) -> None:
    """Render a probe conversation and refuse templates that cannot be trained on correctly.

    Raises:
        SftpipeError: the template fails to render, does not render earlier turns as a prefix of later
            ones, or does not end the assistant turn with an end token.
    """
    probe = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "A"},
    ]
    try:
        prompt = render(tokenizer, template, probe[:2], add_generation_prompt=True)
        full = render(tokenizer, template, probe, add_generation_prompt=False)
    except Exception as exc:  # jinja raises many types; all mean the template is broken
        raise SftpipeError(f"data.template {name!r}: cannot render a conversation: {exc}") from None
    if not full.startswith(prompt):
        raise SftpipeError(
            f"data.template {name!r}: the rendered prompt is not a prefix of the rendered conversation, so the "
            "trained part cannot be located; use a template whose generation prompt matches its assistant turns"
        )
    answer = full[len(prompt):].rstrip()
    enders = [t for t in (tokenizer.eos_token, *END_OF_TURN_TOKENS) if t]
    if not answer.startswith("A") or not any(answer.endswith(t) for t in enders):
        raise SftpipeError(
            f"data.template {name!r}: an assistant turn renders as {answer!r}, which does not end with the eos "
            f"token {tokenizer.eos_token!r} or an end-of-turn token; add {{{{ eos_token }}}} after the assistant "
            "content, or the model never learns to stop"
        )
