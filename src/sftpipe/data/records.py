"""The canonical record every input format becomes, and the rejection type that counts bad input."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant")
EXCERPT_CHARS = 500  # of a rejected record, as shown in rejected.jsonl
# The label of a position that is not trained (prompt, padding): cross-entropy's default ignore index.
IGNORE_INDEX = -100


@dataclass
class Conversation:
    """A list of messages (`role`, `content`) plus metadata.

    `kind` is "chat" for instruction/chat data (only assistant turns are trained) and "text" for plain
    text (every token is trained, no template).
    """

    messages: list[dict[str, str]]
    source: str
    location: str  # "file:line" or "dataset[index]", shown in every report about this record
    meta: dict[str, Any] = field(default_factory=dict)
    kind: str = "chat"


class RecordError(Exception):
    """A record that cannot be used. `reason` is a short stable code counted in reports.

    `excerpt` is the raw text of a record a reader could not parse, when it has it: there is no parsed
    record to show in `rejected.jsonl` then.
    """

    def __init__(self, reason: str, detail: str, excerpt: str = ""):
        self.reason = reason
        self.detail = detail
        self.excerpt = excerpt
        super().__init__(f"{reason}: {detail}")

    def __reduce__(self):  # pickled to and from prepare's worker processes with every field
        return (RecordError, (self.reason, self.detail, self.excerpt))


def validate_messages(messages: list[dict[str, str]]) -> None:
    """Check role order: optional system first, then user/assistant alternating, ending with assistant.

    Raises:
        RecordError: with reason unknown_role, empty_content, bad_role_order or no_assistant_turn.
    """
    if not messages:
        raise RecordError("no_messages", "the conversation has no messages")
    for i, msg in enumerate(messages):
        if msg["role"] not in ROLES:
            raise RecordError("unknown_role", f"message {i} has role {msg['role']!r}; expected one of {ROLES}")
        if not msg["content"].strip():
            reason = "empty_response" if msg["role"] == "assistant" else "empty_content"
            raise RecordError(reason, f"message {i} ({msg['role']}) is empty")
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    if not any(m["role"] == "assistant" for m in turns):
        raise RecordError("no_assistant_turn", "the conversation has no assistant message to train on")
    for i, msg in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if msg["role"] != expected:
            raise RecordError(
                "bad_role_order",
                f"turn {i} is {msg['role']!r} but {expected!r} was expected "
                "(after an optional system message, roles alternate user/assistant)",
            )
    if turns[-1]["role"] != "assistant":
        raise RecordError("bad_role_order", "the conversation ends with a user turn; it must end with assistant")
