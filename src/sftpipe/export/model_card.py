"""README.md of final/, each checkpoint and a merged model: a Hugging Face model card.

YAML front matter (`base_model`, `library_name`, `tags`, `datasets`, `pipeline_tag`) that the Hub and
`huggingface_hub.ModelCard` read, then what a reader needs to reproduce or trust the model: the training
hyperparameters, the data card's figures and hashes, the template and its stop tokens, and the exact sftpipe
version and commit. The card is written from the typed config and data manifest, never read back by sftpipe
except by a merge, which rewrites the front matter for the merged weights and adds what was merged, and by
`eval` of a run's final model, which adds (or replaces) the Evaluation section.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sftpipe.config.schema import Config
from sftpipe.contracts.data_dir import DataManifest
from sftpipe.contracts.run_dir import EvalFigures
from sftpipe.errors import SftpipeError

CARD = "README.md"
LIBRARY = {"lora": "peft", "qlora": "peft", "full": "transformers"}


@dataclass
class CardSource:
    """What a model card is written from, besides the config and the data manifest."""

    sftpipe_version: str
    git_sha: str | None
    stop_tokens: list[str]  # the tokens that end an assistant turn (generation_config's eos ids)


def render_card(metadata: dict[str, Any], body: str) -> str:
    return "---\n" + yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True) + "---\n\n" + body


def read_card(path: Path) -> tuple[dict[str, Any], str]:
    """The front matter and body of a model card sftpipe wrote.

    Raises:
        SftpipeError: the file has no YAML front matter.
    """
    text = path.read_text(encoding="utf-8")
    head, sep, body = text.removeprefix("---\n").partition("\n---\n")
    if not text.startswith("---\n") or not sep:
        raise SftpipeError(f"{path}: no YAML front matter (--- ... ---); not a model card sftpipe wrote")
    return yaml.safe_load(head) or {}, body.lstrip("\n")


def write_model_card(out: Path, cfg: Config, manifest: DataManifest, source: CardSource) -> None:
    """Write README.md into the model dir `out` (final/ or a checkpoint)."""
    metadata: dict[str, Any] = {
        "base_model": cfg.model.name_or_path,
        "library_name": LIBRARY[cfg.train.method],
        "tags": ["sftpipe", "sft", cfg.train.method, f"template:{manifest.template.name}"],
        "datasets": sorted(manifest.sources),
        "pipeline_tag": "text-generation",
    }
    if not metadata["datasets"]:
        del metadata["datasets"]
    sections = [f"# {Path(cfg.train.output_dir).name}\n\n"
                f"Fine-tuned from `{cfg.model.name_or_path}` with sftpipe ({cfg.train.method}).\n",
                _hyperparameters(cfg), _data_summary(manifest), _template(manifest, source.stop_tokens),
                _provenance(source)]
    (out / CARD).write_text(render_card(metadata, "\n".join(sections)), encoding="utf-8")


def write_merged_card(adapter_dir: Path, out: Path, *, max_abs_logit_diff: float, dtype: str) -> None:
    """Write the merged model's README.md: the adapter's card with `library_name: transformers` and a section
    on the merge. Nothing is written when the adapter dir has no card (an adapter sftpipe did not train)."""
    if not (adapter_dir / CARD).is_file():
        return
    metadata, body = read_card(adapter_dir / CARD)
    metadata["library_name"] = "transformers"
    metadata["tags"] = [t for t in metadata.get("tags", []) if t not in ("lora", "qlora")] + ["merged", "lora-merged"]
    body += (f"\n## Merge\n\nLoRA adapter `{adapter_dir}` merged into the base weights, saved as {dtype}; "
             f"max |merged - adapter| logit difference on a sample batch: {max_abs_logit_diff:.2e}.\n")
    (out / CARD).write_text(render_card(metadata, body), encoding="utf-8")


EVAL_HEADING = "## Evaluation"


def add_eval_section(card: Path, figures: EvalFigures) -> None:
    """Put the figures of `sftpipe eval` into the model card `card` as its Evaluation section (replacing the one
    an earlier eval wrote), the front matter unchanged.

    Raises:
        SftpipeError: `card` is not a model card sftpipe wrote.
    """
    metadata, body = read_card(card)
    kept = body.split(f"\n{EVAL_HEADING}\n")[0].rstrip("\n") + "\n"
    rows = [("split", figures.split), ("loss", _figure(figures.loss, "{:.4f}")),
            ("perplexity", _figure(figures.perplexity, "{:.2f}")),
            ("token accuracy", _figure(figures.token_accuracy, "{:.3f}"))]
    rows += [(k, f"{v:.3f}") for k, v in figures.pass_at_k.items()]
    executed = (f"pass@k over {figures.problems} problems with tests, {figures.samples} samples, answers executed "
                "in a sandbox. " if figures.pass_at_k else
                f"Answers were not executed: {figures.code_skipped}. " if figures.code_skipped else "")
    section = (f"\n{EVAL_HEADING}\n\nFigures of `sftpipe eval` on the prepared `{figures.split}` split. {executed}"
               "Loss and accuracy are teacher-forced, on the trained (assistant) tokens.\n\n"
               + _table(("figure", "value"), rows))
    card.write_text(render_card(metadata, kept + section), encoding="utf-8")


def _figure(value: float | None, pattern: str) -> str:
    return "–" if value is None else pattern.format(value)


def _hyperparameters(cfg: Config) -> str:
    t = cfg.train
    rows = [("method", t.method), ("learning rate", f"{t.lr:g}"), ("scheduler", t.scheduler),
            ("epochs" if t.max_steps == 0 else "max steps", f"{t.epochs:g}" if t.max_steps == 0 else t.max_steps),
            ("micro batch size", t.micro_batch_size), ("gradient accumulation", t.grad_accum),
            ("weight decay", f"{t.weight_decay:g}"), ("max grad norm", f"{t.max_grad_norm:g}"),
            ("precision", t.precision), ("packing", t.packing), ("seed", t.seed)]
    if t.method != "full":
        lora = cfg.lora
        targets = lora.target_modules if isinstance(lora.target_modules, str) else ", ".join(lora.target_modules)
        rows += [("LoRA r", lora.r), ("LoRA alpha", lora.alpha), ("LoRA dropout", f"{lora.dropout:g}"),
                 ("LoRA target modules", targets)]
        rows += [(name, value) for name, value in (("DoRA", lora.use_dora), ("rsLoRA", lora.use_rslora),
                                                   ("modules saved in full", ", ".join(lora.modules_to_save)))
                 if value]
    if t.method == "qlora":
        q = cfg.model.quantization
        rows += [("quantized base", f"{q.bits}-bit" + (f" {q.quant_type}, double quant {q.double_quant}"
                                                       if q.bits == 4 else "") + f", compute {q.compute_dtype}")]
    return "## Training hyperparameters\n\n" + _table(("setting", "value"), rows)


def _data_summary(manifest: DataManifest) -> str:
    splits = [(name, s.examples, s.tokens, s.trained_tokens, s.truncated) for name, s in manifest.splits.items()]
    sources = [(name, c.read, c.kept, c.rejected) for name, c in manifest.sources.items()]
    rejected = ", ".join(f"{reason}: {n}" for reason, n in sorted(manifest.rejected.items())) or "none"
    return ("## Training data\n\n"
            f"{manifest.records_read} records read, max length {manifest.max_length} tokens "
            f"(overlong: {manifest.overlong}); rejected by reason: {rejected}.\n\n"
            + _table(("split", "examples", "tokens", "trained tokens", "truncated"), splits) + "\n"
            + _table(("source", "read", "kept", "rejected"), sources) + "\n"
            f"- tokenizer SHA-256: `{manifest.tokenizer.sha256}`\n"
            f"- template SHA-256: `{manifest.template.sha256}`\n"
            f"- data manifest SHA-256: `{manifest.sha256}`\n")


def _template(manifest: DataManifest, stop_tokens: list[str]) -> str:
    stops = ", ".join(f"`{t}`" for t in stop_tokens)
    return ("## Prompt format\n\n"
            f"Chat template `{manifest.template.name}`, saved as the tokenizer's `chat_template` (it writes the BOS "
            "token itself when the tokenizer uses one). Prompt the model as it was trained: "
            "`ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)`, or "
            "`tokenizer(text, add_special_tokens=False)` on the rendered text, so the prompt begins with exactly "
            f"one BOS token. Generation stops at {stops}; `generation_config.json` lists them as "
            "`eos_token_id`, so plain `model.generate` stops there too.\n")


def _provenance(source: CardSource) -> str:
    commit = f", commit `{source.git_sha}`" if source.git_sha else ""
    return f"## Provenance\n\nTrained with sftpipe {source.sftpipe_version}{commit}.\n"


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
