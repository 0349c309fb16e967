"""Packing and micro-batch plans: every example exactly once per epoch, rows within capacity, exact resume."""

from collections import Counter

import datasets
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sftpipe.config import TrainConfig
from sftpipe.data.batches.collate import TokenStore, collate_flat, collate_packed
from sftpipe.data.batches.loader import MicroBatchSource
from sftpipe.data.batches.plan import TokenBudgetPlan, build_plan, group_by_length, pack_best_fit, rows_stats
from sftpipe.data.tokenize import IGNORE_INDEX
from sftpipe.errors import SftpipeError

PAD = 0


@given(st.lists(st.integers(1, 64), min_size=1, max_size=300), st.integers(64, 200), st.randoms())
@settings(max_examples=60, deadline=None)
def test_best_fit_uses_every_example_once_within_capacity(lengths, capacity, rnd):
    tie_order = list(range(len(lengths)))
    rnd.shuffle(tie_order)
    rows = pack_best_fit(lengths, capacity, tie_order)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    used = [sum(lengths[i] for i in row) for row in rows]
    assert max(used) <= capacity
    # any-fit property: a row was only opened when its first example fitted no earlier row, so no two rows
    # could have been one
    used.sort()
    assert len(used) < 2 or used[0] + used[1] > capacity


def test_best_fit_is_efficient_on_chat_like_lengths():
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(150), 0.7, 3000).astype(int), 20, 1000)
    rows = pack_best_fit(lengths, 1024, rng.permutation(len(lengths)))
    assert rows_stats(rows, lengths, padded_to=1024).efficiency >= 0.99
    # negative control: one example per row (the unpacked layout) wastes most slots
    assert rows_stats([[i] for i in range(len(lengths))], lengths, padded_to=1024).efficiency < 0.3


def test_best_fit_refuses_an_example_longer_than_a_row():
    with pytest.raises(ValueError, match="more than the row capacity"):
        pack_best_fit([10, 300, 20], 256)


@given(st.lists(st.integers(1, 100), min_size=1, max_size=200), st.integers(100, 400))
@settings(max_examples=40, deadline=None)
def test_length_groups_fit_the_token_budget(lengths, budget):
    groups = group_by_length(lengths, budget)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(len(g) * max(lengths[i] for i in g) <= budget for g in groups)


def synthetic_split(n: int = 57, seed: int = 0, longest: int = 60) -> datasets.Dataset:
    """Examples of distinct contents (ids >= 1, pad is 0) with a random prompt/answer split."""
    rng = np.random.default_rng(seed)
    ids, labels = [], []
    for k in range(n):
        length = int(rng.integers(3, longest))
        tokens = [1 + (k * 7 + j) % 997 for j in range(length)]
        prompt = int(rng.integers(1, length))
        ids.append(tokens)
        labels.append([IGNORE_INDEX] * prompt + tokens[prompt:])
    column = datasets.Sequence(datasets.Value("int32"))
    return datasets.Dataset.from_dict({"input_ids": ids, "labels": labels},
                                      features=datasets.Features({"input_ids": column, "labels": column}))


def epoch_examples(sources: list[MicroBatchSource], epoch: int) -> Counter:
    """(input ids, trained labels) of every example found in one epoch's micro-batches over all ranks.

    Packed rows are split where position ids restart; padding (a segment of pad ids, no labels) is skipped.
    """
    found = Counter()
    per_epoch = sources[0].plan.micro_batches_per_epoch
    for source in sources:
        for g in range(epoch * per_epoch, (epoch + 1) * per_epoch):
            mb = source[g]
            inputs = {k: v for k, v in mb.inputs.items()}
            if not mb.real:
                assert (inputs["labels"] == IGNORE_INDEX).all(), "a stand-in micro-batch must train nothing"
                continue
            for r in range(inputs["input_ids"].shape[0]):
                ids, lab = inputs["input_ids"][r].tolist(), inputs["labels"][r].tolist()
                if "position_ids" in inputs:
                    pos = inputs["position_ids"][r].tolist()
                    starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
                    segments = [(a, b) for a, b in zip(starts, starts[1:])]
                else:
                    segments = [(0, int(inputs["attention_mask"][r].sum()))]
                for a, b in segments:
                    if all(t == PAD for t in ids[a:b]):
                        assert all(t == IGNORE_INDEX for t in lab[a:b])
                        continue
                    found[(tuple(ids[a:b]), tuple(lab[a + 1 : b]))] += 1
    return found


def expected_examples(store: TokenStore) -> Counter:
    # the first label of an example is never a target (nothing precedes it), packed or not
    return Counter((tuple(store.example(i)[0].tolist()), tuple(store.example(i)[1][1:].tolist()))
                   for i in range(len(store)))


@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("mode", [{"packing": True, "pack_length": 64, "tokens_per_batch": 192},
                                  {"packing": False, "tokens_per_batch": 150},
                                  {"packing": False, "micro_batch_size": 4}])
def test_every_trained_token_appears_exactly_once_per_epoch(mode, world_size):
    store = TokenStore(synthetic_split())
    tc = TrainConfig(seed=5, **mode)
    sources = []
    for rank in range(world_size):
        plan, layout = build_plan(tc, store.lengths, 64, world_size, rank)
        sources.append(MicroBatchSource(plan, layout, store, PAD))
    expected = expected_examples(store)
    assert sum(expected.values()) == len(store)
    for epoch in (0, 1):
        assert epoch_examples(sources, epoch) == expected


def test_exactly_once_check_catches_a_dropped_or_duplicated_row():
    """Negative control: a plan that repeats one packed row in place of another is detected."""
    store = TokenStore(synthetic_split())
    plan, layout = build_plan(TrainConfig(packing=True, pack_length=64, tokens_per_batch=128, seed=5),
                              store.lengths, 64, 1, 0)
    corrupt = TokenBudgetPlan(plan.units[:-1] + [plan.units[0]], plan.units_per_batch, plan.seed)
    found = epoch_examples([MicroBatchSource(corrupt, layout, store, PAD)], 0)
    assert found != expected_examples(store)


def test_plan_is_a_function_of_seed_and_position():
    """Resume exactness: a rebuilt plan gives the same micro-batch for the same global index."""
    store = TokenStore(synthetic_split())
    tc = TrainConfig(packing=True, pack_length=64, tokens_per_batch=128, seed=5)
    a, _ = build_plan(tc, store.lengths, 64, 1, 0)
    b, _ = build_plan(tc, store.lengths, 64, 1, 0)
    per_epoch = a.micro_batches_per_epoch
    assert [a.rows(g) for g in range(3 * per_epoch)] == [b.rows(g) for g in reversed(range(3 * per_epoch))][::-1]
    assert [a.rows(g) for g in range(per_epoch)] != [a.rows(g) for g in range(per_epoch, 2 * per_epoch)]
    other, _ = build_plan(tc.model_copy(update={"seed": 6}), store.lengths, 64, 1, 0)
    assert [a.rows(g) for g in range(per_epoch)] != [other.rows(g) for g in range(per_epoch)]


def test_collate_packed_restarts_positions_and_ignores_first_labels():
    store = TokenStore(synthetic_split(n=5))
    rows = [[0, 1], [2]]
    mb = collate_packed(store, rows, PAD)
    lengths = [int(store.lengths[i]) for i in range(3)]
    width = max(lengths[0] + lengths[1], lengths[2])
    assert mb.inputs["input_ids"].shape == (2, width) and "attention_mask" not in mb.inputs
    assert mb.inputs["position_ids"][0, : lengths[0] + lengths[1]].tolist() == (
        list(range(lengths[0])) + list(range(lengths[1])))
    assert mb.inputs["labels"][0, lengths[0]] == IGNORE_INDEX  # first label of the second example
    assert mb.real_tokens == sum(lengths) and mb.slots == 2 * width
    flat = collate_flat(store, rows, PAD)
    assert flat.inputs["input_ids"].shape == (1, sum(lengths)) and flat.slots == flat.real_tokens
    assert flat.inputs["cu_seq_lens_q"].tolist() == [0, lengths[0], lengths[0] + lengths[1], sum(lengths)]


def test_budgets_smaller_than_the_longest_example_are_refused():
    store = TokenStore(synthetic_split(longest=60))
    longest = int(store.lengths.max())
    with pytest.raises(SftpipeError, match=rf"train.pack_length=40: .*{longest} tokens"):
        build_plan(TrainConfig(packing=True, pack_length=40), store.lengths, 64, 1, 0)
    with pytest.raises(SftpipeError, match=r"train.tokens_per_batch=64 is smaller than one packed row"):
        build_plan(TrainConfig(packing=True, pack_length=128, tokens_per_batch=64), store.lengths, 64, 1, 0)
    with pytest.raises(SftpipeError, match=r"train.tokens_per_batch=30: .*raise the budget"):
        build_plan(TrainConfig(tokens_per_batch=30), store.lengths, 64, 1, 0)
