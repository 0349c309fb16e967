"""The `eval` stage: metrics of a model (run dir, adapter, or full model) on a prepared split."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sftpipe.config.schema import Config
from sftpipe.data.writer import load_split, read_manifest
from sftpipe.errors import SftpipeError
from sftpipe.evaluate.metrics import LossMetrics, evaluate_loss
from sftpipe.models.loading import load_trained, pick_device, resolve_model_dir, tokenizer_sha256


@dataclass
class EvalResult:
    model: str
    split: str
    metrics: LossMetrics
    output_dir: Path


def run(cfg: Config, model_path: str, output_dir: str | None = None) -> EvalResult:
    """Evaluate `model_path` on `cfg.eval.split` of `cfg.data.output_dir`; write metrics.json."""
    data_dir = Path(cfg.data.output_dir)
    manifest = read_manifest(data_dir)
    device = pick_device(cfg.train.device)
    model, tokenizer = load_trained(model_path, device, trust_remote_code=cfg.model.trust_remote_code)
    if tokenizer_sha256(tokenizer) != manifest["tokenizer"]["sha256"]:
        raise SftpipeError(f"{model_path}: its tokenizer differs from the one {data_dir} was prepared with; "
                           "evaluate on data prepared for this model")
    dataset = load_split(data_dir, cfg.eval.split)
    if len(dataset) == 0:
        raise SftpipeError(f"{data_dir}/{cfg.eval.split} is empty; set eval.split or prepare with a non-zero ratio")
    metrics = evaluate_loss(model, dataset, cfg.eval.batch_size, tokenizer.pad_token_id, device)
    source = resolve_model_dir(model_path)
    default_out = (Path(source).parent / "eval") if isinstance(source, Path) and source.name == "final" else None
    out = Path(output_dir) if output_dir else default_out or Path(cfg.train.output_dir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    payload = {"model": str(model_path), "data_dir": str(data_dir), "split": cfg.eval.split, **metrics.as_dict()}
    (out / "metrics.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return EvalResult(str(model_path), cfg.eval.split, metrics, out)
