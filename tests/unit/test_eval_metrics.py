"""pass@k against its combinatorial definition, and the reference-free generation figures."""

import math

import pytest

from sftpipe.evaluate.genmetrics import distinct_n, generation_stats, repetition_rate, words
from sftpipe.evaluate.passk import mean_pass_at_k, pass_at_k


def binomial_pass_at_k(n, c, k):
    return 1 - math.comb(n - c, k) / math.comb(n, k)


def test_pass_at_k_equals_the_binomial_definition_everywhere():
    for n in range(1, 16):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(binomial_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_is_not_the_naive_estimate():
    # Negative control: the biased "1 - (1 - c/n)^k" differs, so the comparison above can fail.
    assert pass_at_k(10, 3, 5) != pytest.approx(1 - (1 - 3 / 10) ** 5, abs=1e-3)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)


@pytest.mark.parametrize("n,c,k,expected", [(5, 0, 1, 0.0), (5, 5, 3, 1.0), (1, 1, 1, 1.0), (4, 1, 1, 0.25),
                                            (4, 3, 2, 1.0)])
def test_pass_at_k_edges(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


@pytest.mark.parametrize("n,c,k", [(3, 1, 4), (3, 4, 1), (3, 1, 0)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_mean_pass_at_k_over_problems_drops_k_above_the_smallest_n():
    counts = [(4, 1), (4, 0), (5, 5)]
    result = mean_pass_at_k(counts, [1, 2, 5, 10])
    assert set(result) == {"pass@1", "pass@2"}
    assert result["pass@1"] == pytest.approx((0.25 + 0 + 1) / 3)
    assert result["pass@2"] == pytest.approx((binomial_pass_at_k(4, 1, 2) + 0 + 1) / 3)


def test_distinct_n_counts_unique_ngrams_over_all_texts():
    assert words("f x = x+1") == ["f", "x", "=", "x", "+", "1"]
    assert distinct_n(["a b a b"], 1) == pytest.approx(2 / 4)
    assert distinct_n(["a b", "a b"], 2) == pytest.approx(1 / 2)
    assert distinct_n(["a b", "c d"], 2) == 1.0
    assert distinct_n([""], 2) == 0.0


def test_repetition_rate_is_zero_without_loops_and_high_with_them():
    assert repetition_rate("one two three four five six") == 0.0
    looping = " ".join(["go to the shop"] * 10)
    assert repetition_rate(looping) > 0.8
    assert repetition_rate("too short") == 0.0


def test_generation_stats_lengths_and_end_fractions():
    stats = generation_stats(["a", "b b", "", "c"], [3, 10, 96, 5], [True, True, False, True])
    assert stats.count == 4
    assert stats.ended_with_eos == 0.75 and stats.hit_max_new_tokens == 0.25 and stats.empty == 0.25
    assert stats.length_mean == pytest.approx(28.5) and stats.length_min == 3 and stats.length_max == 96
    assert stats.length_median == pytest.approx(7.5) and stats.length_p90 == 96
