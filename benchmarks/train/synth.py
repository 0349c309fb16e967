"""Deterministic synthetic chat data with a realistic spread of lengths (~20 to ~1000 tokens, mean ~200).

Conversations are built from a fixed word list with a seeded RNG, so every run of the benchmark trains
on exactly the same data without committing a data file. Lengths are aimed at in tokens of the given
tokenizer (log-normal, clipped), with one to three user/assistant turns and sometimes a system message.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

WORDS = (
    "the of and to in is that for it as with was on be by this are or from at an which have not "
    "function list value return type string number data file error result test code module class "
    "import case where let map filter fold length head tail sum product reverse sort maybe just nothing "
    "either left right show read write print input output state monad functor applicative pure bind "
    "recursion pattern guard lambda compose pipeline train model token loss batch gradient step layer "
    "attention weight matrix vector tensor shape device memory speed time first second last next "
    "because when then else while until each every some many few more most less least very also only "
    "example answer question explain describe compare why how what which who small large fast slow "
    "simple complex correct wrong better worse good bad new old same different other another one two three"
).split()

# Chat-template overhead per message, in tokens, of the ChatML template with the tiny tokenizer (measured).
MARKUP_PER_MESSAGE = 5


def _text(rng: random.Random, words: int) -> str:
    out = []
    for i in range(max(1, words)):
        word = rng.choice(WORDS)
        out.append(word.capitalize() if i == 0 or out[-1].endswith(".") else word)
        if rng.random() < 0.08:
            out[-1] += "."
    return " ".join(out) + "."


def target_lengths(n: int, seed: int, median: float = 150.0, sigma: float = 0.75, low: int = 20,
                   high: int = 1000) -> list[int]:
    """Token lengths: log-normal (mean ~ median * exp(sigma^2 / 2) ~ 200), clipped to [low, high]."""
    rng = random.Random(seed)
    return [int(min(high, max(low, rng.lognormvariate(math.log(median), sigma)))) for _ in range(n)]


def conversations(n: int, seed: int, tokens_per_word: float) -> list[dict]:
    """`n` messages-format records whose rendered length is close to a log-normal target in tokens."""
    rng = random.Random(seed + 1)
    records = []
    for target in target_lengths(n, seed):
        turns = 1 if target < 120 else rng.choice([1, 1, 2, 3])
        system = rng.random() < 0.3
        messages = 2 * turns + system
        budget = max(4, target - MARKUP_PER_MESSAGE * messages - 1)  # -1: BOS
        words = max(2 * turns, int(budget / tokens_per_word))
        out = [{"role": "system", "content": _text(rng, 6)}] if system else []
        words -= 6 if system else 0
        per_turn = max(2, words // turns)
        for _ in range(turns):
            user = max(1, int(per_turn * rng.uniform(0.15, 0.45)))
            out.append({"role": "user", "content": _text(rng, user)})
            out.append({"role": "assistant", "content": _text(rng, per_turn - user)})
        records.append({"messages": out})
    return records


def calibrate_tokens_per_word(tokenizer, seed: int = 0) -> float:
    """Average tokens per generated word for `tokenizer` (each word is preceded by a space in the text)."""
    rng = random.Random(seed)
    text = _text(rng, 2000)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) / 2000


def write_jsonl(records: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record) + "\n")
    return path
