"""`sftpipe eval` end to end on the tiny model: generation, execution, reports, --compare, problem files,
and the in-training hook."""

import json
import re
import shutil
from collections import Counter

import pytest

from sftpipe.cli import main
from sftpipe.data import prepare
from tests.conftest import EXAMPLES, make_config, write_jsonl

pytestmark = pytest.mark.integration
HASKELL = [{"path": str(EXAMPLES / "haskell" / "problems.jsonl"), "format": "code", "fields": {"code": "solution"}}]
HAS_GHC = shutil.which("ghc") is not None


@pytest.fixture(scope="module")
def haskell_cfg(tmp_path_factory, tiny_dir):
    tmp = tmp_path_factory.mktemp("eval_cli")
    cfg = make_config(tmp, tiny_dir, HASKELL, data={"max_length": 512},
                      eval={"max_new_tokens": 24, "code": {"cache_dir": None}})
    prepare.run(cfg)
    return tmp, cfg


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.mark.ghc
def test_eval_generates_executes_and_reports(haskell_cfg, tiny_dir, capsys):
    tmp, _ = haskell_cfg
    out = tmp / "ev"
    assert main(["eval", str(tmp / "config.json"), "--model", str(tiny_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "execution: 8 problems, 8 samples" in printed and "pass@1" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    records = lines(out / "generations.jsonl")
    assert metrics["examples"] == 8 and len(records) == 8
    # Every figure is recomputable from the samples: the summary cannot drift from generations.jsonl.
    assert metrics["code"]["verdicts"] == {v: Counter(r["verdict"] for r in records).get(v, 0)
                                           for v in metrics["code"]["verdicts"]}
    assert metrics["code"]["pass_at_k"]["pass@1"] == sum(r["verdict"] == "pass" for r in records) / 8
    assert metrics["code"]["profile"] == "default"  # how the verdicts were reached
    assert metrics["generation"]["ended_with_eos"] == sum(r["ended_with_eos"] for r in records) / 8
    instructions = {r["id"]: r["instruction"] for r in lines(EXAMPLES / "haskell" / "problems.jsonl")}
    assert all(r["verdict"] and r["prompt"] == instructions[r["id"]] for r in records)
    assert all(r["code"] is not None and r["num_tokens"] <= 24 for r in records)
    page = (out / "report.html").read_text()
    assert "pass@1" in page and "<svg" in page and records[0]["id"] in page


def test_eval_without_ghc_says_execution_was_skipped(haskell_cfg, tiny_dir, capsys):
    tmp, _ = haskell_cfg
    out = tmp / "ev_noghc"
    argv = ["eval", str(tmp / "config.json"), "--model", str(tiny_dir), "--out", str(out),
            "--set", "eval.code.ghc=ghc-not-installed-here", "--set", "eval.generation.max_prompts=2"]
    assert main(argv) == 0
    assert "execution skipped" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert "apt-get install ghc" in metrics["code"]["skipped"] and metrics["code"]["problems"] == 0
    assert all(r["verdict"] is None for r in lines(out / "generations.jsonl"))
    assert "execution skipped" in (out / "report.html").read_text()
    # Asked for explicitly, a missing compiler is an error naming the fix.
    assert main(argv + ["--set", "eval.code.enabled=true"]) == 2
    assert "apt-get install ghc" in capsys.readouterr().err


def test_compare_same_model_is_identical_and_other_model_differs(haskell_cfg, tiny_dir, tmp_path):
    from sftpipe.models.tiny import init_tiny

    tmp, _ = haskell_cfg
    other = tmp_path / "other"
    init_tiny(other, size="micro", seed=1, corpus=[EXAMPLES])
    common = ["--set", "eval.generation.max_prompts=3", "--set", "eval.code.enabled=false"]
    assert main(["eval", str(tmp / "config.json"), "--compare", str(tiny_dir), str(tiny_dir),
                 "--out", str(tmp_path / "same"), *common]) == 0
    same = json.loads((tmp_path / "same" / "metrics.json").read_text())
    assert set(same) == {"base", "run", "delta"} and all(v == 0 for v in same["delta"].values())
    gens = [[r["generation"] for r in lines(tmp_path / "same" / side / "generations.jsonl")]
            for side in ("base", "run")]
    assert gens[0] == gens[1] and len(gens[0]) == 3
    # Negative control: a different model gives different generations and a non-zero loss delta.
    assert main(["eval", str(tmp / "config.json"), "--compare", str(tiny_dir), str(other),
                 "--out", str(tmp_path / "diff"), *common]) == 0
    diff = json.loads((tmp_path / "diff" / "metrics.json").read_text())
    assert diff["delta"]["loss"] != 0
    other_gens = [r["generation"] for r in lines(tmp_path / "diff" / "run" / "generations.jsonl")]
    assert other_gens != gens[0]
    page = re.sub(r">\s+<", "><", (tmp_path / "diff" / "report.html").read_text())
    assert "<th>base</th><th>fine-tuned</th><th>change</th>" in page


def test_sampled_multiple_e_python_problems_from_a_file(tmp_path, tiny_dir, capsys):
    prompt = "def double(x: int) -> int:\n    \"\"\"Twice x.\"\"\"\n"
    tests = ("def check(candidate):\n    assert candidate(2) == 4\n\n"
             "def test_check():\n    check(double)\n\ntest_check()\n")
    problems = write_jsonl(tmp_path / "humaneval-py.jsonl", [
        {"name": f"HumanEval_{i}_double", "language": "py", "prompt": prompt, "tests": tests,
         "stop_tokens": ["\ndef"]} for i in range(2)])
    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(json.dumps({"model": {"name_or_path": str(tiny_dir)},
                                    "eval": {"loss": False, "max_new_tokens": 12,
                                             "generation": {"source": str(problems), "num_samples": 3,
                                                            "temperature": 0.9, "top_p": 0.95},
                                             "code": {"cache_dir": None, "k": [1, 3, 5]}}}))
    assert main(["eval", str(cfg_path), "--model", str(tiny_dir), "--out", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert set(metrics["code"]["pass_at_k"]) == {"pass@1", "pass@3"}  # k=5 > n=3 is left out
    assert metrics["code"]["samples_per_problem"] == 3 and metrics["code"]["languages"] == ["python"]
    records = lines(tmp_path / "ev" / "generations.jsonl")
    assert [r["sample"] for r in records] == [0, 1, 2, 0, 1, 2] and "loss" not in metrics
    assert all(r["verdict"] in ("pass", "wrong_answer", "compile_error", "runtime_error", "timeout") for r in records)


def test_greedy_with_several_samples_is_a_config_error(haskell_cfg, capsys):
    tmp, _ = haskell_cfg
    assert main(["eval", str(tmp / "config.json"), "--set", "eval.generation.num_samples=4"]) == 2
    assert "temperature" in capsys.readouterr().err


def test_in_training_eval_is_logged_and_leaves_training_unchanged(tmp_path, tiny_dir):
    from sftpipe import stages

    def train(name, every, seed=42):
        cfg = make_config(tmp_path / name, tiny_dir, HASKELL, data={"max_length": 512}, lora={"dropout": 0.1},
                          train={"seed": seed},
                          eval={"code": {"cache_dir": None},
                                "during_training": {"every": every, "max_prompts": 2, "max_new_tokens": 12}})
        prepare.run(cfg)
        stages.train(cfg, resume="never")
        return lines(tmp_path / name / "run" / "logs" / "metrics.jsonl")

    with_hook, without = train("hook", every=2), train("plain", every=0)
    gen = [r for r in with_hook if "gen_length_mean" in r]
    assert [r["step"] for r in gen] == [2, 4]
    assert all(0 <= r["gen_ended_with_eos"] <= 1 for r in gen)
    if HAS_GHC:
        assert all("gen_pass@1" in r and "gen_compile_rate" in r for r in gen)
    losses = [r["loss"] for r in with_hook if "loss" in r]
    assert losses == [r["loss"] for r in without if "loss" in r] and len(losses) == 4
    # Negative control: the comparison does see a change in the training randomness.
    assert [r["loss"] for r in train("seed", every=0, seed=7) if "loss" in r] != losses
