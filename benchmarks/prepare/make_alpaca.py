"""Write a deterministic Alpaca-shaped JSONL file (instruction / input / output), e.g. 52k records.

The real Alpaca data cannot be downloaded here, so this builds records of the same shape and similar
length statistics (instruction ~10 words, input present in ~40% of records, output ~45 words with a long
tail), with ~1% exact duplicates and ~1% near-duplicates, as real instruction sets have. Same seed, same
bytes.

    python benchmarks/prepare/make_alpaca.py --out /tmp/alpaca52k.jsonl --records 52002
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
from pathlib import Path

SYLLABLES = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "an", "el", "in", "or", "us", "be", "da", "fe",
             "go", "hu", "ji", "ve", "wo", "xi", "ze", "qu", "th", "sh", "ch", "st", "pr", "gr"]
STARTS = ["Explain", "Describe", "Write", "List", "Summarize", "Give", "Translate", "Classify", "Generate",
          "Compare", "Identify", "Rewrite", "Suggest", "Create", "Find"]


def _vocabulary(rng: random.Random, size: int = 4000) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.choice((1, 2, 2, 3, 3, 4)))))
    ordered = sorted(words)
    rng.shuffle(ordered)  # Zipf rank independent of spelling
    return ordered


def _sentence(rng: random.Random, vocab: list[str], cum_weights: list[float], n: int) -> str:
    words = rng.choices(vocab, cum_weights=cum_weights, k=n)
    return " ".join(words).capitalize() + rng.choice((".", ".", ".", "!", "?"))


def _text(rng: random.Random, vocab: list[str], weights: list[float], n_words: int) -> str:
    parts, left = [], n_words
    while left > 0:
        n = min(left, rng.randint(6, 18))
        parts.append(_sentence(rng, vocab, weights, n))
        left -= n
    return " ".join(parts)


def make_records(n: int, seed: int = 0) -> list[dict[str, str]]:
    """`n` Alpaca-shaped records, deterministic in (`n`, `seed`)."""
    rng = random.Random(seed)
    vocab = _vocabulary(rng)
    weights = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(vocab))))  # Zipf-like
    records: list[dict[str, str]] = []
    for _ in range(n):
        roll = rng.random()
        if records and roll < 0.01:  # exact duplicate of an earlier record
            records.append(dict(rng.choice(records)))
            continue
        if records and roll < 0.02:  # near-duplicate: one word of the output changed
            base = dict(rng.choice(records))
            words = base["output"].split(" ")
            words[rng.randrange(len(words))] = rng.choice(vocab)
            base["output"] = " ".join(words)
            records.append(base)
            continue
        instruction = rng.choice(STARTS) + " " + _text(rng, vocab, weights, rng.randint(4, 18))
        extra = _text(rng, vocab, weights, rng.randint(5, 40)) if rng.random() < 0.4 else ""
        n_out = max(3, min(400, int(rng.lognormvariate(3.6, 0.7))))
        output = _text(rng, vocab, weights, n_out)
        if rng.random() < 0.05:
            output += "\n\n```python\ndef f(x):\n    return x * 2\n```"
        records.append({"instruction": instruction, "input": extra, "output": output})
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--records", type=int, default=52002)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="write the records this many times (for 1x/10x runs)")
    args = parser.parse_args()
    records = make_records(args.records, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as fh:
        for copy in range(args.repeat):
            for r in records:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(records) * args.repeat} records to {args.out}")


if __name__ == "__main__":
    main()
