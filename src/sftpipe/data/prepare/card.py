"""DATA_CARD.md and its token-length histogram (a small hand-written SVG: no plotting dependency)."""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from sftpipe.contracts.data_dir import DataManifest, LengthFigures, SplitLengths, Verification

HISTOGRAM_BINS = 20
COLORS = {"train": "#4c72b0", "val": "#dd8452", "test": "#55a868"}
STAGE_TITLES = {
    "read": "Unreadable or malformed records",
    "filter": "Quality filters",
    "tokenize": "Tokenization (masks, length)",
    "dedup": "Duplicates",
    "decontam": "Decontamination (overlap with val/test or eval sets)",
    "verify": "Execution verification (each solution against its own tests)",
    "quality": "Code-quality thresholds",
}


def length_figures(lengths: dict[str, np.ndarray], max_length: int) -> LengthFigures:
    """Token-length statistics and a shared-bin histogram of each split's examples."""
    edges = np.linspace(0, max_length, HISTOGRAM_BINS + 1).round().astype(int)
    splits = {}
    for name, values in lengths.items():
        histogram = np.histogram(values, bins=edges)[0].tolist()
        if len(values):
            p50, p90, p99 = np.percentile(values, [50, 90, 99])
            splits[name] = SplitLengths(examples=len(values), min=int(values.min()),
                                        mean=round(float(values.mean()), 1), p50=float(p50), p90=float(p90),
                                        p99=float(p99), max=int(values.max()), histogram=histogram)
        else:
            splits[name] = SplitLengths(examples=0, histogram=histogram)
    return LengthFigures(bin_edges=edges.tolist(), splits=splits)


def write_histogram_svg(path: Path, figures: LengthFigures, width: int = 720, height: int = 280) -> None:
    """Grouped bars: per length bin, the share of each split's examples that fall in it."""
    edges = figures.bin_edges
    splits = {k: v for k, v in figures.splits.items() if v.examples}
    left, right, top, bottom = 56, 16, 28, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    bins = len(edges) - 1
    shares = {k: np.array(v.histogram, dtype=float) / v.examples for k, v in splits.items()}
    peak = max((float(s.max()) for s in shares.values()), default=1.0) or 1.0
    slot = plot_w / bins
    bar = slot * 0.8 / max(len(shares), 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             'font-size="11">',
             f'<text x="{left}" y="16" font-size="13">Token length per example (share of each split)</text>',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#333"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#333"/>']
    for frac in (0.0, 0.5, 1.0):
        y = top + plot_h - frac * plot_h
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{frac * peak:.0%}</text>')
    for i, (name, share) in enumerate(shares.items()):
        for b in range(bins):
            h = share[b] / peak * plot_h
            x = left + b * slot + slot * 0.1 + i * bar
            parts.append(f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                         f'fill="{COLORS.get(name, "#888")}"><title>{escape(name)} {edges[b]}-{edges[b + 1]}: '
                         f'{share[b]:.1%}</title></rect>')
        parts.append(f'<rect x="{left + plot_w - 150 + i * 50}" y="8" width="10" height="10" '
                     f'fill="{COLORS.get(name, "#888")}"/><text x="{left + plot_w - 136 + i * 50}" y="17">'
                     f'{escape(name)}</text>')
    for b in range(0, bins + 1, max(1, bins // 5)):
        x = left + b * slot
        parts.append(f'<text x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle">{edges[b]}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle">tokens</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")


def data_card(manifest: DataManifest) -> str:
    """DATA_CARD.md: sources, splits, mix, lengths, every removal by stage and reason, template, tokenizer."""
    m = manifest
    lines = [
        "# Data card",
        "",
        f"Made by sftpipe {m.sftpipe_version} on {m.created}.",
        f"Tokenizer `{m.tokenizer.name_or_path}`, SHA-256 `{m.tokenizer.sha256}`.",
        f"Template `{m.template.name}` (SHA-256 `{m.template.sha256}`), "
        f"max_length {m.max_length}, over-long policy `{m.overlong}`.",
        "",
        "## Sources",
        "",
        "| source | read | kept | rejected | filtered | errors | duplicates | contaminated |"
        + (" failed verification |" if m.verification else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if m.verification else ""),
    ]
    stage_of = {reason: stage for stage, reasons in m.removed_by_stage.items() for reason in reasons}
    column = {"read": "errors", "tokenize": "errors", "quality": "filter"}
    for name, c in m.sources.items():
        by_stage = {"filter": 0, "errors": 0, "dedup": 0, "decontam": 0, "verify": 0}
        for reason, n in m.rejected_by_source.get(name, {}).items():
            stage = stage_of.get(reason, "read")
            by_stage[column.get(stage, stage)] += n
        lines.append(f"| {name} | {c.read} | {c.kept} | {c.rejected} | {by_stage['filter']} | "
                     f"{by_stage['errors']} | {by_stage['dedup']} | {by_stage['decontam']} |"
                     + (f" {by_stage['verify']} |" if m.verification else ""))
    lines += ["", "`kept` counts distinct records in any split, before mixing.", "", "## Splits", "",
              "| split | examples | tokens | trained tokens | truncated | longest | shards |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name, s in m.splits.items():
        lines.append(f"| {name} | {s.examples} | {s.tokens} | {s.trained_tokens} | {s.truncated} "
                     f"| {s.max_tokens} | {s.shards} |")
    if m.mixing:
        mix = m.mixing
        lines += ["", "## Mixing (train split)", "",
                  f"Unit: {mix.unit}; total achieved {mix.total}.", "",
                  "| source | weight | target share | achieved share | target | achieved | examples kept | "
                  "examples after mixing |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for src in mix.sources:
            lines.append(f"| {src.source} | {src.weight:g} | {src.target_share:.2%} | {src.achieved_share:.2%} "
                         f"| {src.target:.0f} | {src.achieved} | {src.available_examples} | {src.examples} |")
    lines += ["", "## Token lengths", "", "| split | examples | min | mean | p50 | p90 | p99 | max |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, figures in m.lengths.splits.items():
        if figures.examples:
            lines.append(f"| {name} | {figures.examples} | {figures.min} | {figures.mean} | {figures.p50:g} "
                         f"| {figures.p90:g} | {figures.p99:g} | {figures.max} |")
        else:
            lines.append(f"| {name} | 0 | | | | | | |")
    lines += ["", "![Token length histogram](length_histogram.svg)", ""]
    if m.verification:
        lines += verification_section(m.verification)
    lines += ["## Removed records", ""]
    if not m.rejected:
        lines.append("None.")
    for stage, title in STAGE_TITLES.items():
        reasons = m.removed_by_stage.get(stage)
        if not reasons:
            continue
        lines += [f"### {title}", "", "| reason | count |", "|---|---:|"]
        lines += [f"| {reason} | {count} |" for reason, count in reasons.items()]
        lines.append("")
    if m.overlaps:
        lines += ["Duplicates and overlaps by what they collide with:", "", "| reason | against | count |",
                  "|---|---|---:|"]
        lines += [f"| {o.reason} | {o.against} | {o.count} |" for o in m.overlaps]
        lines.append("")
    if m.rejected:
        lines.append("Each one is listed with its file, line, reason (and what it duplicates) in `rejected.jsonl`.")
    lines += ["", "## Template", "", "```jinja", m.template.text, "```"]
    return "\n".join(lines) + "\n"


def verification_section(v: Verification) -> list[str]:
    """Verdicts of the records run against their own tests, cache hits, untested records, quality figures."""
    lines = ["## Execution verification", "",
             f"Sources with `verify: tests`: {', '.join(v.sources)}. {v.verified} records with tests were judged "
             f"by running their solution against their own tests: {v.passed} passed. {v.cached} verdicts came "
             "from the verdict cache (nothing run). "
             f"{v.untested} records had no tests ({'kept' if v.untested_policy == 'keep' else 'dropped'}, "
             f"data.verify.untested: {v.untested_policy}).",
             "", "Tools: " + ", ".join(f"{name} `{version}`" for name, version in v.tools.items()) + ".",
             "", "| verdict | records |", "|---|---:|"]
    lines += [f"| {verdict} | {n} |" for verdict, n in v.verdicts.items()]
    lines.append("")
    if v.quality or v.skipped_figures:
        lines += ["### Code quality of the passing records", "",
                  "Measured on every record that passed its tests (before thresholds, dedup and decontamination).",
                  "", "| figure | records | mean | p50 | p90 | max |", "|---|---:|---:|---:|---:|---:|"]
        for name, f in v.quality.items():
            lines.append(f"| {name} | {f.records} | {f.mean:g} | {f.p50:g} | {f.p90:g} | {f.max:g} |"
                         if f.records else f"| {name} | 0 | | | | |")
        lines.append("")
        for name, why in v.skipped_figures.items():
            lines.append(f"- {name}: not measured, {why}.")
        if v.skipped_figures:
            lines.append("")
        for name, f in v.quality.items():
            if not f.records:
                continue
            lines += [f"Histogram of {name}:", "", "| range | records | |", "|---|---:|---|"]
            peak = max(f.histogram) or 1
            last = len(f.histogram) - 1
            for i, (low, high, n) in enumerate(zip(f.bin_edges, f.bin_edges[1:], f.histogram)):
                if f.integer:
                    label = f"{low:g}" if high - low == 1 else f"{low:g}–{high - 1:g}"
                else:
                    label = f"[{low:g}, {high:g}{']' if i == last else ')'}"
                lines.append(f"| {label} | {n} | {'█' * round(20 * n / peak)} |")
            lines.append("")
    return lines
