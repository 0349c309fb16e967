"""Weighted mixing: targets met within 1% in samples and tokens, up- and down-sampling, deterministic,
and the report in manifest.json / DATA_CARD.md matches the data actually written."""

import json
from collections import Counter

import datasets
import numpy as np
import pytest

from sftpipe.config.data_sections import MixConfig
from sftpipe.contracts.data_dir import DataDir
from sftpipe.data import prepare
from sftpipe.data.mixing import plan_mix
from sftpipe.errors import SftpipeError
from tests.conftest import distinct_records, make_config, write_jsonl


def test_samples_are_exact_with_up_and_down_sampling():
    source = np.array([0] * 100 + [1] * 20)
    counts, mixes = plan_mix(["a", "b"], [1.0, 1.0], source, np.ones(120, dtype=np.int64), MixConfig())
    assert [m.examples for m in mixes] == [60, 60] and [m.achieved_share for m in mixes] == [0.5, 0.5]
    assert sorted(Counter(counts[:100].tolist()).items()) == [(0, 40), (1, 60)]  # a: 60 of 100, once each
    assert counts[100:].tolist() == [3] * 20  # b: every example three times


def test_fractional_upsampling_repeats_a_seeded_subset_once_more():
    source = np.array([0] * 50 + [1] * 20)
    counts, mixes = plan_mix(["a", "b"], [1.0, 2.5], source, np.ones(70, dtype=np.int64), MixConfig(total=70))
    assert mixes[1].examples == 50 and sorted(Counter(counts[50:].tolist()).items()) == [(2, 10), (3, 10)]
    again, _ = plan_mix(["a", "b"], [1.0, 2.5], source, np.ones(70, dtype=np.int64), MixConfig(total=70))
    other, _ = plan_mix(["a", "b"], [1.0, 2.5], source, np.ones(70, dtype=np.int64), MixConfig(total=70, seed=1))
    assert np.array_equal(counts, again) and not np.array_equal(counts, other)


@pytest.mark.parametrize("weights", [(3.0, 1.0), (1.0, 9.0), (0.2, 0.3)])
def test_token_targets_are_met_within_one_percent(weights):
    rng = np.random.default_rng(0)
    source = np.array([0] * 400 + [1] * 150)
    amount = rng.integers(10, 600, size=550)
    counts, mixes = plan_mix(["a", "b"], list(weights), source, amount, MixConfig(unit="tokens", total=120_000))
    shares = np.array(weights) / sum(weights)
    achieved = np.array([(amount * counts)[source == s].sum() for s in (0, 1)])
    assert np.allclose(achieved / achieved.sum(), shares, atol=0.01)
    assert [m.achieved for m in mixes] == achieved.tolist()
    assert abs(achieved.sum() - 120_000) / 120_000 < 0.01
    # negative control: the unmixed data is far from these targets
    natural = np.array([amount[source == s].sum() for s in (0, 1)])
    assert not np.allclose(natural / natural.sum(), shares, atol=0.01)


def test_a_weighted_source_with_nothing_left_is_an_error():
    with pytest.raises(SftpipeError, match="b has no train examples left"):
        plan_mix(["a", "b"], [1.0, 1.0], np.array([0, 0]), np.ones(2, dtype=np.int64), MixConfig())


def test_weights_on_some_sources_only_is_a_config_error(tmp_path, tiny_dir):
    from sftpipe.config import ConfigError

    with pytest.raises(ConfigError, match=r"sources\[1\] has none"):
        make_config(tmp_path, tiny_dir, [{"path": "a.jsonl", "weight": 1.0}, {"path": "b.jsonl"}])


@pytest.mark.parametrize("unit", ["samples", "tokens", "trained_tokens"])
def test_prepare_meets_mixing_weights_within_one_percent(tmp_path, tiny_dir, unit):
    big = write_jsonl(tmp_path / "big.jsonl", distinct_records(90, seed=11, words=15))
    small = write_jsonl(tmp_path / "small.jsonl", distinct_records(15, seed=12, words=40))
    cfg = make_config(tmp_path, tiny_dir, [{"path": str(big), "weight": 1.0}, {"path": str(small), "weight": 3.0}],
                      data={"mix": {"unit": unit, "total": {"samples": 200, "tokens": 40_000,
                                                            "trained_tokens": 20_000}[unit]}})
    result = prepare.run(cfg)
    # measured on the written train split, not taken from the report
    train = datasets.load_from_disk(f"{cfg.data.output_dir}/train")
    size = {"samples": lambda ids, labels: 1, "tokens": lambda ids, labels: len(ids),
            "trained_tokens": lambda ids, labels: sum(1 for x in labels if x != -100)}[unit]
    amount = Counter()
    for row in train:
        amount[row["source"]] += size(row["input_ids"], row["labels"])
    total = sum(amount.values())
    assert abs(amount["small.jsonl"] / total - 0.75) <= 0.01 and abs(amount["big.jsonl"] / total - 0.25) <= 0.01
    manifest = DataDir(tmp_path / "data").manifest
    report = {m.source: m for m in manifest.mixing.sources}
    assert report["small.jsonl"].achieved == amount["small.jsonl"] and report["small.jsonl"].target_share == 0.75
    assert report["small.jsonl"].examples > report["small.jsonl"].available_examples  # up-sampled
    assert result.splits["train"].examples == len(train) == sum(m.examples for m in result.mixing)
    # val and test are not mixed: each record at most once
    for split in ("val", "test"):
        locations = datasets.load_from_disk(f"{cfg.data.output_dir}/{split}")["location"]
        assert len(locations) == len(set(locations))
    card = (tmp_path / "data" / "DATA_CARD.md").read_text()
    assert "## Mixing (train split)" in card and "| small.jsonl | 3 | 75.00% |" in card


def test_mixed_prepare_is_deterministic(tmp_path, tiny_dir):
    a = write_jsonl(tmp_path / "a.jsonl", distinct_records(40, seed=13))
    b = write_jsonl(tmp_path / "b.jsonl", distinct_records(10, seed=14))
    outs = []
    for run in range(2):
        cfg = make_config(tmp_path / str(run), tiny_dir, [{"path": str(a), "weight": 1}, {"path": str(b), "weight": 1}])
        prepare.run(cfg)
        outs.append(datasets.load_from_disk(f"{cfg.data.output_dir}/train")["location"])
    assert outs[0] == outs[1] and len(outs[0]) > len(set(outs[0]))
    assert json.loads((tmp_path / "0" / "data" / "manifest.json").read_text())["mixing"]["unit"] == "samples"


def test_mixing_sources_with_the_same_name_is_an_error_before_any_work(tmp_path, tiny_dir):
    a = write_jsonl(tmp_path / "x" / "data.jsonl", distinct_records(5, seed=15))
    b = write_jsonl(tmp_path / "y" / "data.jsonl", distinct_records(5, seed=16))
    cfg = make_config(tmp_path, tiny_dir, [{"path": str(a), "weight": 1}, {"path": str(b), "weight": 1}])
    with pytest.raises(SftpipeError, match="several sources are named data.jsonl"):
        prepare.run(cfg)
