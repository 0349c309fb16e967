"""DATA_CARD.md and its histogram: lengths, template, tokenizer hash, and an SVG that parses."""

import json
import xml.etree.ElementTree as ET

from sftpipe.contracts.data_dir import tokenizer_sha256
from sftpipe.data import prepare
from sftpipe.data.prepare.card import HISTOGRAM_BINS
from sftpipe.data.templates import CHATML
from tests.conftest import distinct_records, make_config, write_jsonl


def test_card_has_lengths_histogram_template_and_tokenizer_hash(tmp_path, tiny_dir, tokenizer):
    path = write_jsonl(tmp_path / "in.jsonl", distinct_records(60, seed=30, words=20))
    cfg = make_config(tmp_path, tiny_dir, [{"path": str(path)}], data={"template": "chatml"})
    result = prepare.run(cfg)
    out = tmp_path / "data"
    manifest = json.loads((out / "manifest.json").read_text())
    lengths = manifest["lengths"]
    for split, stats in result.splits.items():
        figures = lengths["splits"][split]
        assert sum(figures["histogram"]) == figures["examples"] == stats.examples
        assert figures["max"] == stats.max_tokens and figures["min"] <= figures["p50"] <= figures["p99"]
    assert len(lengths["bin_edges"]) == HISTOGRAM_BINS + 1 and lengths["bin_edges"][-1] == cfg.data.max_length

    svg = ET.parse(out / "length_histogram.svg").getroot()
    rects = svg.findall("{http://www.w3.org/2000/svg}rect")
    assert len(rects) == 3 * HISTOGRAM_BINS + 3  # a bar per bin and split, plus the legend
    heights = [float(r.get("height")) for r in rects if r.find("{http://www.w3.org/2000/svg}title") is not None]
    assert max(heights) > 0

    card = (out / "DATA_CARD.md").read_text()
    train = lengths["splits"]["train"]
    assert f"| train | {train['examples']} | {train['min']} | {train['mean']} |" in card
    assert "![Token length histogram](length_histogram.svg)" in card
    assert tokenizer_sha256(tokenizer) in card and manifest["template"]["sha256"] in card
    assert CHATML in card  # the template itself
    assert "| in.jsonl | 60 | 60 | 0 |" in card
