"""`eval` of a run's final model adds its figures to the model card (final/README.md) and to the run's report.html;
an eval written elsewhere leaves them alone."""

from __future__ import annotations

import shutil

import huggingface_hub
import pytest

from sftpipe import stages
from sftpipe.contracts.run_dir import EvalFigures, RunDir
from sftpipe.export.model_card import CARD, add_eval_section, read_card
from tests.conftest import make_config


def test_eval_section_is_added_once_and_the_card_still_loads(lora_run, tmp_path):
    _, result = lora_run
    card = tmp_path / CARD
    shutil.copy(result.final_dir / CARD, card)
    metadata_before, body_before = read_card(card)
    figures = EvalFigures(model="run", split="test", loss=1.23456, perplexity=3.437, token_accuracy=0.4,
                          pass_at_k={"pass@1": 0.25, "pass@5": 0.5}, problems=8, samples=40)
    add_eval_section(card, figures)
    add_eval_section(card, figures.model_copy(update={"loss": 1.0}))  # a second eval replaces the first's figures
    metadata, body = read_card(card)
    assert metadata == metadata_before and body.startswith(body_before.rstrip("\n"))
    assert body.count("## Evaluation") == 1
    for row in ("| loss | 1.0000 |", "| perplexity | 3.44 |", "| pass@1 | 0.250 |", "| pass@5 | 0.500 |"):
        assert row in body
    assert "1.2346" not in body and "8 problems with tests, 40 samples" in body
    loaded = huggingface_hub.ModelCard.load(card)
    assert loaded.data.base_model == metadata["base_model"] and "| pass@1 | 0.250 |" in loaded.text


def test_eval_of_a_run_fills_its_card_and_report(lora_run, tmp_path):
    _, result = lora_run
    run = RunDir(tmp_path / "run")
    shutil.copytree(result.run_dir, run.path)
    cfg = make_config(tmp_path / "cfg", lora_run[0].model.name_or_path, [], data={"output_dir": lora_run[0].data.output_dir},
                      train={"output_dir": str(run.path)}, eval={"generation": {"enabled": False}})

    elsewhere = stages.evaluate(cfg, str(run.path), str(tmp_path / "elsewhere"))  # control: not the run's eval/
    card_before = (run.final / CARD).read_text()
    assert elsewhere.metrics is not None and "## Evaluation" not in card_before
    assert "No eval of this run yet" in run.report.read_text()

    evaluated = stages.evaluate(cfg, str(run.path))
    assert evaluated.output_dir.resolve() == run.eval.resolve()
    _, body = read_card(run.final / CARD)
    assert f"| loss | {evaluated.metrics.loss:.4f} |" in body and "## Evaluation" in body
    report = run.report.read_text()
    assert 'id="eval"' in report and f"{evaluated.metrics.loss:.4f}" in report
    assert 'href="eval/report.html"' in report
    assert huggingface_hub.ModelCard.load(run.final / CARD).data.library_name == "peft"


@pytest.mark.parametrize("figures,needle", [
    (EvalFigures(model="m", split="val", loss=2.0), "Loss and accuracy are teacher-forced"),
    (EvalFigures(model="m", split="val", loss=2.0, code_skipped="ghc not found"), "Answers were not executed: ghc"),
])
def test_eval_section_says_how_figures_were_made(lora_run, tmp_path, figures, needle):
    _, result = lora_run
    card = tmp_path / CARD
    shutil.copy(result.final_dir / CARD, card)
    add_eval_section(card, figures)
    assert needle in read_card(card)[1]
