"""report.html of a run dir: one self-contained page (inline CSS and SVG, no scripts, no network) of the run.

Curves of train and validation loss, learning rate, gradient norm, tokens/s and peak memory from
logs/metrics.jsonl; the data dir's figures (counts, rejections by reason, length histograms); the config
fields that differ from the built-in defaults; which step final/ holds; the figures of `eval` on the run with
a link to its report. Everything is read from disk, so the page can be written for a run that was killed
(`sftpipe report RUN`) as well as at the end of `train`; what is missing is said, not left out.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment
from markupsafe import Markup

from sftpipe.config.schema import Config
from sftpipe.contracts.checkpoint import checkpoint_step, complete_checkpoints
from sftpipe.contracts.data_dir import DataDir, DataManifest
from sftpipe.contracts.run_dir import EvalFigures, eval_report, read_eval_figures
from sftpipe.contracts.run_dir import RunDir, RunManifest
from sftpipe.errors import SftpipeError

# (chart id, title, [(metrics.jsonl key, series label)]): one line chart each, in this order.
CHARTS = [
    ("loss", "Loss", [("loss", "train"), ("val_loss", "validation")]),
    ("lr", "Learning rate", [("lr", "lr")]),
    ("grad_norm", "Gradient norm (before clipping)", [("grad_norm", "grad norm")]),
    ("tokens_per_s", "Tokens per second (real tokens, in training steps)", [("tokens_per_s", "tokens/s")]),
    ("peak_memory_mb", "Peak memory (MiB)", [("peak_memory_mb", "peak")]),
]
MAX_DRAWN = 2000  # points of one drawn line; every point is in logs/metrics.jsonl
MAX_DOTS = 200  # points drawn as dots with a tooltip, when a series has no more than this
SERIES_COLORS = ("#1565c0", "#ef6c00", "#2e7d32")
SPLIT_COLORS = {"train": "#1565c0", "val": "#ef6c00", "test": "#2e7d32"}


@dataclass
class RunFiles:
    """What a run dir holds on disk, each part None or empty when it is not there."""

    run_dir: RunDir
    config: dict[str, Any] | None
    manifest: RunManifest | None
    data: list[tuple[str, DataManifest]]  # (data dir, its manifest): one, or each dir of a train.data mix
    metrics: list[dict[str, Any]]
    unreadable_lines: int  # metrics.jsonl lines that are not JSON (the last one of a killed run may be cut)
    eval: EvalFigures | None
    checkpoints: list[int] = field(default_factory=list)  # steps of the complete checkpoints
    notes: list[str] = field(default_factory=list)


def read_run(run_dir: RunDir) -> RunFiles:
    """Everything the report shows, read from `run_dir` (and the data dirs its run manifest names).

    Raises:
        SftpipeError: `run_dir` has neither config.yaml nor logs (not a run dir).
    """
    if not run_dir.config.is_file() and not run_dir.metrics.is_file():
        raise SftpipeError(f"{run_dir.path}: not a run dir (no config.yaml and no logs/metrics.jsonl); give the "
                           "train.output_dir of a run")
    notes = []
    config = yaml.safe_load(run_dir.config.read_text(encoding="utf-8")) if run_dir.config.is_file() else None
    if config is None:
        notes.append(f"{run_dir.config} is missing: no config changes to show")
    manifest = run_dir.manifest if run_dir.manifest_path.is_file() else None
    if manifest is None:
        notes.append(f"{run_dir.manifest_path} is missing (the run stopped before it began training): no data "
                     "summary to show")
        data_paths = []
    elif manifest.data_mix is not None:
        data_paths = [d.dir for d in manifest.data_mix.dirs]
    else:
        data_paths = [manifest.data_dir]
    data = []
    for data_path in data_paths:
        try:
            data.append((str(data_path), DataDir(Path(data_path)).manifest))
        except SftpipeError as exc:
            notes.append(f"data summary left out: {exc}")
    metrics, unreadable = _read_metrics(run_dir.metrics)
    eval_figures = None
    try:
        eval_figures = read_eval_figures(run_dir.eval)
    except SftpipeError as exc:
        notes.append(f"eval figures left out: {exc}")
    steps = [checkpoint_step(c) for c in complete_checkpoints(run_dir.path)] if run_dir.checkpoints.is_dir() else []
    return RunFiles(run_dir=run_dir, config=config, manifest=manifest, data=data, metrics=metrics,
                    unreadable_lines=unreadable, eval=eval_figures, checkpoints=sorted(steps), notes=notes)


def _read_metrics(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The records of metrics.jsonl, and how many lines could not be parsed (they are left out and counted)."""
    if not path.is_file():
        return [], 0
    records, bad = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            bad += 1
    return records, bad


def write_run_report(run_dir: RunDir) -> Path:
    """Write `run_dir`/report.html from what is on disk; returns its path."""
    page = render_run_report(read_run(run_dir))
    run_dir.report.write_text(page, encoding="utf-8")
    return run_dir.report


def series(metrics: list[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    """(step, value) of every record that logged a finite number under `key`."""
    points = []
    for record in metrics:
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            points.append((float(record["step"]), float(value)))
    return points


def config_changes(config: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(dotted key, default, this run's value) of every config field that differs from the built-in default."""
    defaults = _flatten(Config().model_dump(mode="json"))
    values = _flatten(config)
    return [(key, _show(defaults.get(key, "(none)")), _show(value)) for key, value in values.items()
            if key not in defaults or defaults[key] != value]


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(value, dict) or not value:
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high == low:
        return [low]
    return [low + (high - low) * i / (count - 1) for i in range(count)]


def _number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.2e}"
    return f"{value:.4g}"


def line_chart_svg(chart_id: str, title: str, lines: list[tuple[str, list[tuple[float, float]]]]) -> Markup:
    """A line chart of one or more (label, points) series on shared axes; each point has a tooltip."""
    width, height, left, right, top, bottom = 560, 240, 64, 16, 28, 36
    points = [p for _, pts in lines for p in pts]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" id="chart-{chart_id}" class="chart" width="{width}" '
             f'height="{height}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="{left}" y="16" font-size="13" font-weight="600">{html.escape(title)}</text>']
    if not points:
        parts.append(f'<text x="{left}" y="{height / 2}" font-size="12" fill="#777">nothing logged</text></svg>')
        return Markup("".join(parts))
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys)
    if y1 == y0:
        y0, y1 = y0 - (abs(y0) * 0.05 or 1), y1 + (abs(y1) * 0.05 or 1)
    plot_w, plot_h = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * plot_h

    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#ccc"/>')
    for y in _ticks(y0, y1):
        parts.append(f'<line x1="{left}" y1="{sy(y):.1f}" x2="{left + plot_w}" y2="{sy(y):.1f}" stroke="#eee"/>'
                     f'<text x="{left - 4}" y="{sy(y) + 4:.1f}" font-size="10" text-anchor="end">{_number(y)}</text>')
    for x in sorted({round(x) for x in _ticks(x0, x1)}):  # steps are whole numbers
        parts.append(f'<text x="{sx(x):.1f}" y="{top + plot_h + 14}" font-size="10" text-anchor="middle">'
                     f'{x:.0f}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 4}" font-size="10" text-anchor="middle">'
                 'optimizer step</text>')
    for i, (label, pts) in enumerate(lines):
        color = SERIES_COLORS[i % len(SERIES_COLORS)]
        if len(pts) > 1:
            stride = max(1, len(pts) // MAX_DRAWN)  # a long run's line, thinned: the page stays small
            drawn = pts[::stride] + ([pts[-1]] if (len(pts) - 1) % stride else [])
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in drawn)
            parts.append(f'<polyline class="series" data-label="{html.escape(label)}" points="{path}" fill="none" '
                         f'stroke="{color}" stroke-width="1.6"/>')
        for x, y in pts if len(pts) <= MAX_DOTS else []:  # a dot per point while they stay apart
            parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.2" fill="{color}"><title>'
                         f'{html.escape(label)} at step {x:.0f}: {y:.6g}</title></circle>')
        parts.append(f'<rect x="{left + plot_w - 110}" y="{top + 6 + 14 * i}" width="10" height="10" '
                     f'fill="{color}"/><text x="{left + plot_w - 96}" y="{top + 15 + 14 * i}" font-size="11">'
                     f'{html.escape(label)} ({len(pts)})</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def length_histogram_svg(data: DataManifest, chart_id: str = "lengths") -> Markup:
    """Bars of example lengths (tokens) per split, on the data dir's shared bins."""
    lengths = data.lengths
    splits = [(name, s.histogram) for name, s in lengths.splits.items() if s.histogram and any(s.histogram)]
    edges = lengths.bin_edges
    if not splits or len(edges) < 2:
        return Markup("")
    width, height, pad = 760, 200, 40
    bins = len(edges) - 1
    top = max(max(h) for _, h in splits) or 1
    slot = (width - 2 * pad) / bins
    bar = slot / (len(splits) + 0.5)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" id="chart-{chart_id}" class="chart" width="{width}" '
             f'height="{height + 40}" role="img" aria-label="example length histogram">',
             f'<line x1="{pad}" y1="{height}" x2="{width - pad}" y2="{height}" stroke="#888"/>']
    for m, (name, counts) in enumerate(splits):
        color = SPLIT_COLORS.get(name, SERIES_COLORS[m % len(SERIES_COLORS)])
        for b, count in enumerate(counts[:bins]):
            h = (height - 20) * count / top
            parts.append(f'<rect x="{pad + b * slot + m * bar:.1f}" y="{height - h:.1f}" width="{bar - 1:.1f}" '
                         f'height="{h:.1f}" fill="{color}"><title>{html.escape(name)}: {count} examples of '
                         f'{edges[b]}–{edges[b + 1]} tokens</title></rect>')
        parts.append(f'<rect x="{pad + 120 * m}" y="{height + 24}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{pad + 120 * m + 14}" y="{height + 33}" font-size="11">{html.escape(name)}</text>')
    step = max(1, bins // 8)
    for b in range(0, bins + 1, step):
        parts.append(f'<text x="{pad + b * slot:.1f}" y="{height + 14}" font-size="10" text-anchor="middle">'
                     f'{edges[b]}</text>')
    parts.append(f'<text x="{pad}" y="12" font-size="11">examples per length bin (tokens), max {top}</text></svg>')
    return Markup("".join(parts))


def status_line(run: RunFiles) -> str:
    """Whether the run finished, and which step's weights final/ holds."""
    final = run.manifest.final if run.manifest else None
    last = max((int(r["step"]) for r in run.metrics), default=0)
    if final is not None and run.run_dir.final.is_dir():
        how = "the last step" if final.selected_by == "last" else \
            f"the best checkpoint by {final.selected_by} ({final.value:.4f})"
        return f"finished: final/ holds the weights of step {final.step}, {how}"
    newest = f"; newest complete checkpoint: step {run.checkpoints[-1]} (train again to resume from it)" \
        if run.checkpoints else "; no complete checkpoint"
    return f"not finished (killed, failed or still running): last logged step {last}{newest}"


TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>sftpipe run report: {{ name }}</title>
<style>
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.3em .7em;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f5f5f5}td.text{text-align:left;font-family:monospace}
th.text{text-align:left}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:1em}
.muted{color:#777;font-size:.9em}.note{background:#fff8e1;border:1px solid #ffe082;padding:.5em .8em;border-radius:4px}
.ok{background:#e8f5e9;border:1px solid #a5d6a7;padding:.5em .8em;border-radius:4px}
</style></head><body>
<h1>sftpipe run report: {{ name }}</h1>
<p class="muted">{{ run_path }}{% if manifest %}<br>{{ manifest.method }} fine-tune of {{ manifest.base_model }},
seed {{ manifest.seed }}, {{ manifest.world_size }} process(es) on {{ manifest.device }}, started {{ manifest.created }}
on {{ manifest.host }}<br>sftpipe {{ manifest.versions.get("sftpipe", "?") }}{% if manifest.git_sha %} (commit
{{ manifest.git_sha[:12] }}){% endif %}, torch {{ manifest.versions.get("torch", "?") }},
transformers {{ manifest.versions.get("transformers", "?") }}{% endif %}</p>
<p class="{{ 'ok' if finished else 'note' }}" id="status">{{ status }}</p>
{% for note in notes %}<p class="note">{{ note }}</p>
{% endfor %}

<h2>Curves</h2>
<div class="charts">
{% for chart in charts %}<div>{{ chart }}</div>
{% endfor %}
</div>
<p class="muted">Peak memory is the most memory torch allocated on the GPU (CUDA), or the peak resident set of
the training process on CPU; tokens/s counts real (not padding) tokens over the time of the training steps only.</p>
{% if last %}
<p class="muted">Last logged step {{ last.step }}:
{% for key, value in last.figures %}{{ key }} {{ value }}{% if not loop.last %}, {% endif %}{% endfor %}.</p>
{% endif %}

<h2>Evaluation</h2>
{% if eval %}
<table id="eval">
<tr><th>figure</th><th>value</th></tr>
{% for label, value in eval_rows %}<tr><td>{{ label }}</td><td>{{ value }}</td></tr>
{% endfor %}
</table>
{% if eval_link %}<p><a id="eval-link" href="{{ eval_link }}">{{ eval_link }}</a>: generations, verdicts and
examples.</p>{% endif %}
{% else %}
<p class="muted">No eval of this run yet: <code>sftpipe eval CONFIG --model {{ run_path }}</code> writes eval/ and
adds its figures here.</p>
{% endif %}

<h2>Data</h2>
{% if mix %}
<p class="muted">A train.data mix of {{ mix.dirs|length }} data dirs by {{ mix.unit }}, the same every epoch
(seed {{ mix.seed }}):</p>
<table id="mix">
<tr><th>dir</th><th>weight</th><th>examples per epoch</th><th>tokens per epoch</th><th>epochs of its data</th>
<th>share: target</th><th>achieved</th></tr>
{% for d in mix.dirs %}<tr><td>{{ d.name }} ({{ d.dir }})</td><td>{{ d.weight }}</td><td>{{ d.examples }}</td>
<td>{{ d.tokens }}</td><td>{{ "%.2f"|format(d.epochs) }}</td><td>{{ "%.3f"|format(d.target_share) }}</td>
<td>{{ "%.3f"|format(d.achieved_share) }}</td></tr>
{% endfor %}
</table>
{% endif %}
{% for data_path, data, lengths_svg in datasets %}
{% if datasets|length > 1 %}<h3>{{ data_path }}</h3>{% endif %}
<p class="muted">{{ data_path }}: {{ data.records_read }} records read, template {{ data.template.name }}, max length
{{ data.max_length }} tokens (overlong: {{ data.overlong }}); rejected by reason:
{% for reason, n in data.rejected|dictsort %}{{ reason }} {{ n }}{% if not loop.last %}, {% endif %}{% else %}none{% endfor %}.</p>
<table id="splits{{ '' if loop.first else loop.index0 }}">
<tr><th>split</th><th>examples</th><th>tokens</th><th>trained tokens</th><th>truncated</th><th>longest</th></tr>
{% for name, s in data.splits.items() %}<tr><td>{{ name }}</td><td>{{ s.examples }}</td><td>{{ s.tokens }}</td>
<td>{{ s.trained_tokens }}</td><td>{{ s.truncated }}</td><td>{{ s.max_tokens }}</td></tr>
{% endfor %}
</table>
<table id="sources{{ '' if loop.first else loop.index0 }}">
<tr><th>source</th><th>read</th><th>kept</th><th>rejected</th></tr>
{% for name, c in data.sources.items() %}<tr><td>{{ name }}</td><td>{{ c.read }}</td><td>{{ c.kept }}</td>
<td>{{ c.rejected }}</td></tr>
{% endfor %}
</table>
{{ lengths_svg }}
<p class="muted">data manifest SHA-256 {{ data.sha256 }}, tokenizer SHA-256 {{ data.tokenizer.sha256 }}</p>
{% else %}
<p class="muted">No data manifest found.</p>
{% endfor %}

<h2>Config: changes from the defaults</h2>
{% if changes %}
<table id="config">
<tr><th>field</th><th class="text">default</th><th class="text">this run</th></tr>
{% for key, default, value in changes %}<tr><td>{{ key }}</td><td class="text">{{ default }}</td>
<td class="text">{{ value }}</td></tr>
{% endfor %}
</table>
{% else %}<p class="muted">No config changes to show.</p>{% endif %}
<p class="muted">Written by sftpipe from the files of the run dir (config.yaml, the run manifest,
logs/metrics.jsonl, eval/); <code>sftpipe report {{ run_path }}</code> writes it again.</p>
</body></html>
"""


def _fmt(value: float | None, pattern: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else pattern.format(value)


def _eval_rows(figures: EvalFigures) -> list[tuple[str, str]]:
    rows = [("model", figures.model), ("split", figures.split), ("loss", _fmt(figures.loss, "{:.4f}")),
            ("perplexity", _fmt(figures.perplexity, "{:.2f}")),
            ("token accuracy", _fmt(figures.token_accuracy, "{:.3f}"))]
    rows += [(k, f"{v:.3f} ({figures.problems} problems, {figures.samples} samples)")
             for k, v in figures.pass_at_k.items()]
    if figures.code_skipped:
        rows.append(("execution", f"skipped: {figures.code_skipped}"))
    return rows


def _last_figures(metrics: list[dict[str, Any]]) -> dict[str, Any] | None:
    steps = [r for r in metrics if "loss" in r]
    if not steps:
        return None
    last = steps[-1]
    keys = [("loss", "{:.4f}"), ("lr", "{:.3g}"), ("grad_norm", "{:.3f}"), ("tokens_per_s", "{:.0f}"),
            ("peak_memory_mb", "{:.0f} MiB")]
    return {"step": last["step"], "figures": [(k, _fmt(last.get(k), p)) for k, p in keys if last.get(k) is not None]}


def render_run_report(run: RunFiles) -> str:
    """The report page of one run."""
    notes = list(run.notes)
    if run.unreadable_lines:
        notes.append(f"{run.unreadable_lines} line(s) of logs/metrics.jsonl are not JSON (a run killed while "
                     "writing cuts its last line) and are left out")
    if not run.metrics:
        notes.append("logs/metrics.jsonl has no records: no curves to draw")
    charts = [line_chart_svg(chart_id, title, [(label, series(run.metrics, key)) for key, label in keys])
              for chart_id, title, keys in CHARTS]
    report_link = eval_report(run.run_dir.eval)
    status = status_line(run)
    env = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
    return env.from_string(TEMPLATE).render(
        name=run.run_dir.path.resolve().name, run_path=str(run.run_dir.path), manifest=run.manifest,
        status=status, finished=status.startswith("finished"), notes=notes, charts=charts,
        last=_last_figures(run.metrics), eval=run.eval, eval_rows=_eval_rows(run.eval) if run.eval else [],
        eval_link=report_link.relative_to(run.run_dir.path).as_posix() if report_link.is_file() else None,
        mix=run.manifest.data_mix if run.manifest else None,
        datasets=[(path, data, length_histogram_svg(data, "lengths" if i == 0 else f"lengths{i}"))
                  for i, (path, data) in enumerate(run.data)],
        changes=config_changes(run.config) if run.config else [])
