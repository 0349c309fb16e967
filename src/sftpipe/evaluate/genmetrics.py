"""Quality figures of a set of generations that need no reference answer.

Words are `\\w+` runs and single punctuation characters, so the figures do not depend on the tokenizer and
compare across models. Lengths are in model tokens (what max_new_tokens limits).
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass

WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    return WORD.findall(text)


def ngrams(seq: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams over all n-grams of all texts (corpus-level diversity; 0.0 when there are none)."""
    grams = [g for t in texts for g in ngrams(words(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(text: str, n: int = 4) -> float:
    """Fraction of a text's n-grams that repeat an earlier n-gram of the same text (0 = no loops)."""
    grams = ngrams(words(text), n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


@dataclass
class GenerationStats:
    count: int
    distinct_1: float
    distinct_2: float
    repetition_rate: float
    ended_with_eos: float
    hit_max_new_tokens: float
    empty: float
    length_mean: float
    length_median: float
    length_p90: float
    length_min: int
    length_max: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def generation_stats(texts: list[str], lengths: list[int], ended: list[bool]) -> GenerationStats:
    """Figures over generations: diversity, repetition, lengths, and how many ended with an end token
    rather than running into max_new_tokens."""
    if not texts:
        raise ValueError("no generations to summarise")
    ordered = sorted(lengths)
    p90 = ordered[min(len(ordered) - 1, max(0, round(0.9 * len(ordered)) - 1))]
    return GenerationStats(
        count=len(texts),
        distinct_1=distinct_n(texts, 1),
        distinct_2=distinct_n(texts, 2),
        repetition_rate=sum(repetition_rate(t) for t in texts) / len(texts),
        ended_with_eos=sum(ended) / len(texts),
        hit_max_new_tokens=sum(not e for e in ended) / len(texts),
        empty=sum(not t.strip() for t in texts) / len(texts),
        length_mean=statistics.fmean(lengths),
        length_median=float(statistics.median(lengths)),
        length_p90=float(p90),
        length_min=ordered[0],
        length_max=ordered[-1],
    )
