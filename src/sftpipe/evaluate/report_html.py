"""report.html: one self-contained page (inline CSS and SVG, no scripts, no server) for one model or two
side by side: headline figures, pass@k, verdict breakdown, length histograms, example generations."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import TYPE_CHECKING

from jinja2 import Environment
from markupsafe import Markup

from sftpipe.evaluate.execution.verdicts import VERDICTS

if TYPE_CHECKING:
    from sftpipe.config.schema import Config
    from sftpipe.evaluate.result import EvalResult

COLORS = {"pass": "#2e7d32", "wrong_answer": "#ef6c00", "compile_error": "#6a1b9a", "runtime_error": "#c62828",
          "timeout": "#455a64"}
MODEL_COLORS = ("#1565c0", "#ef6c00")
FIGURES = [  # (label, key in metrics.json or generation.*, format)
    ("loss", "loss", "{:.4f}"), ("perplexity", "perplexity", "{:.2f}"), ("token accuracy", "token_accuracy", "{:.3f}"),
    ("sequence accuracy", "sequence_accuracy", "{:.3f}"),
    ("distinct-1", "generation.distinct_1", "{:.3f}"), ("distinct-2", "generation.distinct_2", "{:.3f}"),
    ("repetition rate (4-grams)", "generation.repetition_rate", "{:.3f}"),
    ("ended with end token", "generation.ended_with_eos", "{:.1%}"),
    ("hit max_new_tokens", "generation.hit_max_new_tokens", "{:.1%}"), ("empty", "generation.empty", "{:.1%}"),
    ("length mean (tokens)", "generation.length_mean", "{:.1f}"),
    ("length median / p90", None, None),
]

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>sftpipe eval report</title>
<style>
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.3em .7em;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f5f5f5}
pre{background:#f7f7f7;border:1px solid #e3e3e3;padding:.6em;white-space:pre-wrap;word-break:break-word;
max-height:28em;overflow:auto;font-size:.85em;margin:.3em 0}
.badge{display:inline-block;padding:.1em .5em;border-radius:.8em;color:#fff;font-size:.8em}
.grid{display:grid;grid-template-columns:repeat({{ results|length }},1fr);gap:1em}
.item{border:1px solid #ddd;border-radius:6px;padding:.8em;margin:1em 0}.muted{color:#777;font-size:.9em}
.note{background:#fff8e1;border:1px solid #ffe082;padding:.5em .8em;border-radius:4px}
</style></head><body>
<h1>sftpipe eval report</h1>
<p class="muted">
{% for label, r in results %}<b>{{ label }}</b>: {{ r.model }}{% if not loop.last %} &nbsp;·&nbsp; {% endif %}
{% endfor %}<br>
data dir {{ data_dir }}, split {{ split }}{% if decoding %}; {{ decoding_text }}{% endif %}
</p>
{% for note in notes %}
<p class="note">{{ note }}</p>
{% endfor %}

<h2>Figures</h2>
<table>
<tr><th>figure</th>{% for label, r in results %}<th>{{ label }}</th>{% endfor %}
{% if results|length == 2 %}<th>change</th>{% endif %}</tr>
{% for row in figures %}
<tr><td>{{ row.label }}</td>{% for v in row.cells %}<td>{{ v }}</td>{% endfor %}
{% if results|length == 2 %}<td>{{ row.delta }}</td>{% endif %}</tr>
{% endfor %}
</table>

{% if has_code %}
<h2>Execution: pass@k</h2>
<table>
<tr><th>k</th>{% for label, r in results %}<th>{{ label }}</th>{% endfor %}</tr>
{% for row in passk %}
<tr><td>{{ row.k }}</td>{% for v in row.cells %}<td>{{ v }}</td>{% endfor %}</tr>
{% endfor %}
</table>
<p class="muted">
{% for line in code_notes %}{{ line }}<br>
{% endfor %}
Unbiased pass@k = mean over problems of 1 − C(n−c, k)/C(n, k).</p>

<h2>Verdicts</h2>
<table>
<tr><th>verdict</th>{% for label, r in results %}<th>{{ label }}</th>{% endfor %}</tr>
{% for row in verdicts %}
<tr><td><span class="badge" style="background:{{ row.color }}">{{ row.verdict }}</span></td>
{% for v in row.cells %}<td>{{ v }}</td>{% endfor %}</tr>
{% endfor %}
</table>
{{ verdict_svg }}
{% endif %}

{% if length_svg %}
<h2>Generation lengths (tokens)</h2>
{{ length_svg }}
{% endif %}

{% if examples %}
<h2>Examples</h2>
{% for ex in examples %}
<div class="item"><b>{{ ex.id }}</b>
<pre>{{ ex.prompt }}</pre>
{% if ex.reference %}
<details><summary class="muted">reference answer</summary><pre>{{ ex.reference }}</pre></details>
{% endif %}
<div class="grid">
{% for col in ex.columns %}
<div><b>{{ col.label }}</b>
{% if col.verdict %}
 <span class="badge" style="background:{{ col.color }}">{{ col.verdict }}</span>
 <span class="muted">{{ col.detail }}</span>
{% elif col.not_run %}
 <span class="badge" style="background:#999">not run</span>
 <span class="muted">{{ col.not_run }}</span>
{% endif %}
<pre>{{ col.generation }}</pre>
<span class="muted">{{ col.num_tokens }} tokens,
{{ 'ended with the end token' if col.ended else 'hit max_new_tokens' }}</span>
{% if col.excerpt %}
<details><summary class="muted">error excerpt</summary><pre>{{ col.excerpt }}</pre></details>
{% endif %}
</div>
{% endfor %}
</div></div>
{% endfor %}
{% endif %}

{% if problems %}
<h2>Per problem (passing samples / samples)</h2>
<table>
<tr><th>problem</th>{% for label, r in results %}<th>{{ label }}</th>{% endfor %}</tr>
{% for row in problems %}
<tr><td>{{ row.id }}</td>{% for v in row.cells %}<td>{{ v }}</td>{% endfor %}</tr>
{% endfor %}
</table>
{% endif %}
<p class="muted">Written by sftpipe eval. metrics.json and generations.jsonl next to this file hold every figure
and sample.</p>
</body></html>
"""


def _get(payload: dict, key: str):
    value = payload
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _fmt(value, pattern: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return pattern.format(value)


def figure_rows(payloads: list[dict]) -> list[dict]:
    rows = []
    for label, key, pattern in FIGURES:
        if key is None:
            values = [f"{_fmt(_get(p, 'generation.length_median'), '{:.0f}')} / "
                      f"{_fmt(_get(p, 'generation.length_p90'), '{:.0f}')}" for p in payloads]
            if all(v.startswith("–") for v in values):
                continue
            rows.append({"label": label, "cells": values, "delta": ""})
            continue
        raw = [_get(p, key) for p in payloads]
        if all(v is None for v in raw):
            continue
        delta = ""
        if len(raw) == 2 and all(isinstance(v, (int, float)) for v in raw):
            diff = raw[1] - raw[0]
            delta = ("+" if diff >= 0 else "−") + pattern.format(abs(diff)).lstrip("-")
        rows.append({"label": label, "cells": [_fmt(v, pattern) for v in raw], "delta": delta})
    return rows


def histogram_svg(series: list[tuple[str, list[int]]], max_value: int, bins: int = 16) -> Markup:
    """Side-by-side bars of token-length counts per model, on shared bins from 0 to max_value."""
    if not any(values for _, values in series):
        return Markup("")
    width, height, pad = 760, 220, 36
    edges = [round(i * max(max_value, 1) / bins) for i in range(bins + 1)]
    counts = []
    for _, values in series:
        row = [0] * bins
        for v in values:
            row[min(bins - 1, int(v * bins / max(max_value, 1)))] += 1
        counts.append(row)
    top = max(max(row) for row in counts) or 1
    slot = (width - 2 * pad) / bins
    bar = slot / (len(series) + 0.5)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 40}" role="img" '
             f'aria-label="generation length histogram">',
             f'<line x1="{pad}" y1="{height}" x2="{width - pad}" y2="{height}" stroke="#888"/>']
    for m, row in enumerate(counts):
        for b, count in enumerate(row):
            h = (height - 20) * count / top
            x = pad + b * slot + m * bar
            parts.append(f'<rect x="{x:.1f}" y="{height - h:.1f}" width="{bar - 1:.1f}" height="{h:.1f}" '
                         f'fill="{MODEL_COLORS[m % 2]}"><title>{html.escape(series[m][0])}: {count} samples of '
                         f'{edges[b]}–{edges[b + 1]} tokens</title></rect>')
    for b in range(0, bins + 1, 4):
        parts.append(f'<text x="{pad + b * slot:.1f}" y="{height + 14}" font-size="11" text-anchor="middle">'
                     f'{edges[b]}</text>')
    parts.append(f'<text x="{pad}" y="12" font-size="11">max {top} samples per bin</text>')
    for m, (label, _) in enumerate(series):
        parts.append(f'<rect x="{pad + 160 * m}" y="{height + 24}" width="10" height="10" '
                     f'fill="{MODEL_COLORS[m % 2]}"/><text x="{pad + 160 * m + 14}" y="{height + 33}" '
                     f'font-size="11">{html.escape(label)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def verdict_svg(series: list[tuple[str, dict[str, int]]]) -> Markup:
    """One stacked horizontal bar of verdict shares per model."""
    width, row_h, label_w = 760, 26, 110
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{row_h * len(series) + 30}" '
             'role="img" aria-label="verdict shares">']
    for m, (label, counts) in enumerate(series):
        total = sum(counts.values()) or 1
        x = label_w
        parts.append(f'<text x="0" y="{m * row_h + 17}" font-size="12">{html.escape(label)}</text>')
        for verdict in VERDICTS:
            w = (width - label_w - 10) * counts.get(verdict, 0) / total
            if w > 0:
                parts.append(f'<rect x="{x:.1f}" y="{m * row_h + 4}" width="{w:.1f}" height="{row_h - 8}" '
                             f'fill="{COLORS[verdict]}"><title>{verdict}: {counts.get(verdict, 0)}</title></rect>')
            x += w
    x = label_w
    for verdict in VERDICTS:
        parts.append(f'<rect x="{x}" y="{row_h * len(series) + 12}" width="10" height="10" fill="{COLORS[verdict]}"/>'
                     f'<text x="{x + 14}" y="{row_h * len(series) + 21}" font-size="11">{verdict}</text>')
        x += 125
    parts.append("</svg>")
    return Markup("".join(parts))


def render_report(results: list[tuple[str, EvalResult]], cfg: Config) -> str:
    """The report page for one or two evaluated models (same items, same order)."""
    payloads = [r.as_dict() for _, r in results]
    suites = [r.suite for _, r in results]
    has_code = any(s is not None and s.code is not None and s.code.problems for s in suites)
    notes = [f"{label}: execution skipped: {r.suite.code.skipped} ({r.suite.code.not_run} samples without a "
             "verdict)" for label, r in results if r.suite and r.suite.code and r.suite.code.skipped]
    notes += [_completions_note(p["completions"]) for p in payloads if "completions" in p]
    passk = []
    if has_code:
        ks = sorted({k for s in suites if s and s.code for k in s.code.pass_at_k}, key=lambda k: int(k.split("@")[1]))
        passk = [{"k": k, "cells": [_fmt(s.code.pass_at_k.get(k) if s and s.code else None, "{:.3f}") for s in suites]}
                 for k in ks]
    verdict_rows = [{"verdict": v, "color": COLORS[v], "cells": [
        _verdict_cell(s.code.verdicts.get(v, 0), s.code.samples) if s and s.code and s.code.samples else "–"
        for s in suites]} for v in VERDICTS]
    lengths = [(label, [rec.num_tokens for rec in r.suite.records]) for label, r in results if r.suite]
    examples = _examples(results, cfg.eval.report_examples)
    env = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
    decoding = payloads[0].get("decoding")
    return env.from_string(TEMPLATE).render(
        decoding_text=_decoding_text(decoding) if decoding else "", code_notes=_code_notes(results),
        results=results, data_dir=payloads[0].get("data_dir"), split=payloads[0].get("split"), decoding=decoding,
        notes=notes, figures=figure_rows(payloads), has_code=has_code, passk=passk, verdicts=verdict_rows,
        verdict_svg=verdict_svg([(label, r.suite.code.verdicts) for label, r in results
                                 if r.suite and r.suite.code and r.suite.code.samples]),
        length_svg=histogram_svg(lengths, cfg.eval.max_new_tokens) if lengths else "",
        examples=examples, problems=_problem_rows(results),
    )


def write_report(path: Path, results: list[tuple[str, EvalResult]], cfg: Config) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(results, cfg), encoding="utf-8")


def _completions_note(c: dict) -> str:
    """What a scored completions file held, including what could not be scored."""
    parts = [f"completions from {c['file']}: {c['records']} records, {c['samples']} samples scored"]
    if c["empty"]:
        parts.append(f"{c['empty']} empty (judged, they fail)")
    if c["unknown_ids"]:
        parts.append(f"{len(c['unknown_ids'])} records name no problem of the source (e.g. {c['unknown_ids'][0]!r})")
    if c["problems_without_completions"]:
        parts.append(f"{len(c['problems_without_completions'])} problems have no completions (e.g. "
                     f"{c['problems_without_completions'][0]!r})")
    return "; ".join(parts)


def _decoding_text(d: dict) -> str:
    sampling = f"temperature {d['temperature']}, top-p {d['top_p']}" if d["temperature"] > 0 else "greedy"
    parts = [f"{d['prompts']} prompts from {d['source']}, {d['num_samples']} sample(s) each, {sampling}, "
             f"max_new_tokens {d['max_new_tokens']}, seed {d['seed']}"]
    if d.get("skipped_without_prompt"):
        parts.append(f"{d['skipped_without_prompt']} records without a user prompt (plain text) skipped")
    if d.get("left_out_by_max_prompts"):
        parts.append(f"{d['left_out_by_max_prompts']} prompts left out by max_prompts")
    return "; ".join(parts)


def _code_notes(results: list[tuple[str, EvalResult]]) -> list[str]:
    notes = []
    for label, r in results:
        c = r.suite.code if r.suite else None
        if c is not None and c.problems:
            notes.append(f"{label}: {c.problems} problems, {c.samples} samples ({c.samples_per_problem} per "
                         f"problem), {', '.join(c.languages)}, profile {c.profile}, sandbox {c.sandbox}, "
                         f"{c.executed} executed + {c.cached} from cache in {c.exec_wall_s:.1f} s.")
    return notes


def _verdict_cell(count: int, total: int) -> str:
    return f"{count} ({count / total:.0%})"


def _examples(results: list[tuple[str, EvalResult]], limit: int) -> list[dict]:
    first = results[0][1].suite
    if first is None or limit == 0:
        return []
    ids = list(dict.fromkeys(rec.id for rec in first.records))[:limit]
    examples = []
    for item_id in ids:
        columns = []
        prompt = reference = ""
        for label, r in results:
            rec = next((x for x in r.suite.records if x.id == item_id and x.sample == 0), None) if r.suite else None
            if rec is None:
                continue
            prompt, reference = rec.prompt, rec.reference
            columns.append({"label": label, "generation": rec.generation, "verdict": rec.verdict,
                            "color": COLORS.get(rec.verdict or "", "#999"), "detail": rec.detail or "",
                            "excerpt": rec.error_excerpt, "num_tokens": rec.num_tokens, "ended": rec.ended_with_eos,
                            "not_run": rec.not_run})
        examples.append({"id": item_id, "prompt": prompt, "reference": reference, "columns": columns})
    return examples


def _problem_rows(results: list[tuple[str, EvalResult]]) -> list[dict]:
    tables = []
    for _, r in results:
        table: dict[str, list[int]] = {}
        for rec in r.suite.records if r.suite else []:
            if rec.verdict is not None:
                n_c = table.setdefault(rec.id, [0, 0])
                n_c[0] += 1
                n_c[1] += rec.verdict == "pass"
        tables.append(table)
    ids = list(dict.fromkeys(i for t in tables for i in t))
    return [{"id": i, "cells": [f"{t[i][1]} / {t[i][0]}" if i in t else "–" for t in tables]} for i in ids]
