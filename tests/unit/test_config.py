from pathlib import Path

import pytest

from sftpipe.cli import main
from sftpipe.config import PRESETS, Config, ConfigError, dump_config, load_config

REPO = Path(__file__).resolve().parents[2]


def test_defaults_validate():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.train.method == "lora" and cfg.data.split.train == 0.8


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_loads(name):
    assert isinstance(load_config(preset=name), Config)


def test_preset_count():
    assert len(PRESETS) == 4


def test_every_shipped_config_loads():
    files = sorted((REPO / "configs").rglob("*.yaml"))
    sftpipe_configs = [f for f in files if "accelerate" not in f.parts and "deepspeed" not in f.parts]
    for path in sftpipe_configs:
        load_config(path)
    assert len(sftpipe_configs) == 8, [f.name for f in sftpipe_configs]


def test_precedence_defaults_preset_file_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_steps: 7\n")
    assert load_config(preset="fast_test").train.max_steps == 4
    assert load_config(path, preset="fast_test").train.max_steps == 7
    assert load_config(path, preset="fast_test", overrides=["train.max_steps=9"]).train.max_steps == 9
    # what the file does not set comes from the preset, the rest from defaults
    cfg = load_config(path, preset="fast_test")
    assert cfg.train.micro_batch_size == 2 and cfg.train.seed == 42


def test_preset_named_in_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("preset: full_training\n")
    assert load_config(path).train.method == "full"


def test_override_parses_yaml_values():
    cfg = load_config(overrides=["lora.target_modules=[q_proj, v_proj]", "train.lr=1e-4", "model.dtype=bfloat16"])
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.train.lr == pytest.approx(1e-4)


def test_all_problems_reported_at_once_with_file_field_and_hint(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lrr: 0.1\n  epochs: -2\ndata:\n  max_lenght: 5\nmodell: {}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    problems = info.value.problems
    assert len(problems) == 4, problems
    text = "\n".join(problems)
    assert f"{path}: train.lrr: unknown key (did you mean 'lr'?)" in text
    assert f"{path}: data.max_lenght: unknown key (did you mean 'max_length'?)" in text
    assert f"{path}: modell: unknown key (did you mean 'model'?)" in text
    assert f"{path}: train.epochs = -2:" in text


def test_override_reaches_list_items(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  sources:\n    - {path: a.jsonl, format: alpaca}\n    - {path: b.jsonl}\n")
    cfg = load_config(path, overrides=["data.sources.1.path=c.jsonl", "data.sources.0.name=first"])
    assert [(s.path, s.format, s.name) for s in cfg.data.sources] == [("a.jsonl", "alpaca", "first"), ("c.jsonl", "auto", None)]
    # a bad value in an item is named with its index and origin, like any other
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides=["data.sources.1.fromat=qa"])
    assert info.value.problems[0].startswith("--set: data.sources.1.fromat: unknown key (did you mean 'format'?)")
    with pytest.raises(ConfigError, match=r"data\.sources\.2: data\.sources has 2 item\(s\) \(0 to 1\); an override "
                                          "can change an item, not add one"):
        load_config(path, overrides=["data.sources.2.path=d.jsonl"])
    with pytest.raises(ConfigError, match=r"lora\.r\.0: lora\.r is not a list"):
        load_config(overrides=["lora.r.0=3"])


def test_error_names_set_origin():
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["train.method=qlorax"])
    assert info.value.problems[0].startswith("--set: train.method = 'qlorax'")


def test_source_list_errors_name_index(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  sources:\n    - {path: a.jsonl, fromat: alpaca}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "data.sources.0.fromat: unknown key (did you mean 'format'?)" in str(info.value)


def test_split_must_sum_to_one():
    with pytest.raises(ConfigError, match="sum to 1.0"):
        load_config(overrides=["data.split.train=0.5"])


def test_unknown_preset_suggests():
    with pytest.raises(ConfigError, match="did you mean 'fast_test'"):
        load_config(preset="fast-test")


def test_cli_config_error_is_clean(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("train: {lrr: 1}\n")
    assert main(["show-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "train.lrr" in err and str(path) in err and "Traceback" not in err


def test_cli_show_config_prints_resolved(capsys):
    assert main(["show-config", "--preset", "fast_test", "--set", "train.lr=0.5"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.5" in out and "max_steps: 4" in out


def test_warmup_steps_replace_warmup_ratio_layer_by_layer(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  warmup_steps: 10\n")
    for preset in ("default", "fast_test", "full_training"):  # presets give warmup_ratio; the file's steps win
        train = load_config(path, preset=preset).train
        assert (train.warmup_steps, train.warmup_ratio, train.num_warmup_steps(1000)) == (10, None, 10)
    train = load_config(path, overrides=["train.warmup_ratio=0.2"]).train  # a higher layer replaces it again
    assert (train.warmup_steps, train.warmup_ratio, train.num_warmup_steps(1000)) == (None, 0.2, 200)
    assert load_config().train.num_warmup_steps(1000) == 30  # the default ratio, 0.03
    resolved = tmp_path / "resolved.yaml"  # a run dir's config.yaml loads as it was saved
    resolved.write_text(dump_config(load_config(path, preset="full_training")))
    assert load_config(resolved) == load_config(path, preset="full_training")


@pytest.mark.parametrize(("text", "message"), [
    ("train: {warmup_steps: 10, warmup_ratio: 0.1}", "warmup_steps (10) and warmup_ratio (0.1) are both set"),
    ("train: {warmup_ratio: null}", "warmup_steps and warmup_ratio are both null"),
    ("train: {warmup_steps: -1}", "train.warmup_steps = -1: Input should be greater than or equal to 0"),
])
def test_warmup_set_twice_or_not_at_all_is_an_error(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and message in str(info.value), str(info.value)


FOREIGN = {  # a key from transformers / TRL / PEFT configs -> what its error must say
    "per_device_train_batch_size": "sftpipe's key for it is train.micro_batch_size",
    "gradient_accumulation_steps": "sftpipe's key for it is train.grad_accum",
    "warmup_steps": "sftpipe's key for it is train.warmup_steps",
    "save_steps": "sftpipe's key for it is train.save_every",
    "learning_rate": "sftpipe's key for it is train.lr",
    "num_train_epochs": "sftpipe's key for it is train.epochs",
    "load_in_4bit": "sftpipe's key for it is train.method: qlora with model.quantization.bits: 4",
    "bnb_4bit_quant_type": "sftpipe's key for it is model.quantization.quant_type",
    "report_to": "sftpipe's key for it is train.report_to",
}
NATIVE = {"train.warmup_steps", "train.report_to"}  # sftpipe has these under the same name
SECTIONS = ["", "model", "data", "lora", "train", "eval", "export"]  # "": the top level, as a flat HF config


@pytest.mark.parametrize("key", list(FOREIGN))
def test_keys_from_other_tools_get_sftpipes_key_in_every_section(tmp_path, key):
    checked = 0
    for section in SECTIONS:
        if f"{section}.{key}" in NATIVE:
            continue
        dotted = f"{section}.{key}" if section else key
        with pytest.raises(ConfigError) as info:
            load_config(overrides=[f"{dotted}=1"])
        message = str(info.value)
        assert f"--set: {dotted}: unknown key ({FOREIGN[key]}" in message, message
        assert "max_steps" not in message and "attn_implementation" not in message  # the misleading near misses
        checked += 1
    assert checked == len(SECTIONS) - (f"train.{key}" in NATIVE)


def test_a_key_in_the_wrong_section_is_pointed_to_its_section_and_typos_still_get_the_nearest(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {max_length: 512, lr: 0.1}\ntrain: {save_every_n: 2}\nlora: {quantize: true}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = "\n".join(info.value.problems)
    assert f"{path}: model.max_length: unknown key (sftpipe's key for it is data.max_length)" in text
    assert f"{path}: model.lr: unknown key (sftpipe's key for it is train.lr)" in text
    assert f"{path}: train.save_every_n: unknown key (did you mean 'save_every'?)" in text
    assert f"{path}: lora.quantize: unknown key (valid keys here: alpha, dropout, modules_to_save, r, target_modules, use_dora, use_rslora)" in text


def _leaf_fields(model=Config, prefix=""):
    """(dotted key, FieldInfo) of every non-section field, found independently of config/fields.py."""
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        inner = [a for a in (field.annotation, *getattr(field.annotation, "__args__", ()))
                 if isinstance(a, type) and issubclass(a, BaseModel)]
        if inner:
            yield from _leaf_fields(inner[0], key + ("[]" if "list" in str(field.annotation) else ""))
        else:
            yield key, field


def test_show_config_help_fields_documents_every_field(capsys):
    assert main(["show-config", "--help-fields"]) == 0
    out = capsys.readouterr().out
    flat = " ".join(out.split())
    fields = list(_leaf_fields())
    assert len(fields) > 100
    for key, field in fields:
        assert f"\n  {key}: " in out, key
        assert " ".join(field.description.split()) in flat, key  # the help text, as wrapped
    assert sum(line.startswith("  ") and not line.startswith("   ") for line in out.splitlines()) == len(fields)
    for line in ("  train.lr: float = 0.0002", "  train.warmup_steps: int | null = null",
                 "  train.scheduler: linear | cosine | constant = cosine", "  lora.target_modules: list[str] | "
                 "all-linear = all-linear", "  data.sources[].path: str | null = null",
                 "  data.decontam.eval_sets[].path: str = required", "  eval.code.k: list[int] = [1, 5, 10]"):
        assert f"\n{line}\n" in out, line
    sections = [line for line in out.splitlines() if line.startswith("[")]
    assert sections[:4] == ["[model]", "[model.quantization]  How train.method: qlora loads the frozen base "
                            "(bitsandbytes); unused by full and lora.", "[data]", "[data.sources[]]  Input datasets."]
    assert "[eval.code.limits]" in sections and len(sections) == 22
    assert "[hpo]  Hyperparameter search (`sftpipe hpo`): each trial is a normal training run with sampled " \
           "values." in sections


def test_show_config_help_fields_is_fast_and_takes_no_config(tmp_path, capsys):
    import subprocess
    import sys

    code = ("import sys; from sftpipe.cli import main; assert main(['show-config', '--help-fields']) == 0; "
            "print('heavy:', sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'datasets', "
            "'accelerate', 'peft'}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.endswith("heavy: []\n"), proc.stderr[-2000:]
    assert main(["show-config", str(tmp_path / "c.yaml"), "--help-fields"]) == 2
    assert "give it no CONFIG, --preset or --set" in capsys.readouterr().err
