"""infer generates as eval does (one generate loop, the template's stop tokens) and takes its settings from a
config, --set and its own flags; its prompts file is read with prepare's reader."""

import json
from pathlib import Path

import pytest
import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from sftpipe.cli import main
from sftpipe.config import ModelConfig, load_config
from sftpipe.data.tokenize import encode_prompt
from sftpipe.errors import SftpipeError
from sftpipe.evaluate import run as evaluate
from sftpipe.infer.generate import read_prompts
from sftpipe.models.loading import load_tokenizer
from tests.conftest import write_jsonl

PROMPT = [{"role": "user", "content": "Hi"}]


def chain_model(tiny_dir: Path, out: Path, transitions: dict[int, int], eos: int) -> Path:
    """A model dir with the tiny tokenizer whose Llama greedily predicts `transitions[last token]`, whatever
    came before: every attention and MLP output projection is zero, so the last hidden state is the last
    token's embedding, a basis vector that the head maps to the next token. `eos` is the only end token
    its generation_config names."""
    tokenizer = load_tokenizer(ModelConfig(name_or_path=str(tiny_dir)))
    config = LlamaConfig.from_pretrained(tiny_dir)
    config.eos_token_id = eos
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        for dim, (token, following) in enumerate(transitions.items()):
            model.model.embed_tokens.weight[token] = 0.0
            model.model.embed_tokens.weight[token, dim] = 1.0
            model.lm_head.weight[following, dim] = 10.0
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=eos,
                                               pad_token_id=tokenizer.pad_token_id, do_sample=False)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tokens(tiny_dir):
    """The tiny tokenizer, the last token of every generation prompt, the end-of-turn token, two plain tokens."""
    tokenizer = load_tokenizer(ModelConfig(name_or_path=str(tiny_dir)))
    last = encode_prompt(tokenizer, PROMPT)[-1]
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    plain = [t for t in tokenizer("so it goes", add_special_tokens=False).input_ids
             if t not in (last, end_of_turn) and t not in tokenizer.all_special_ids]
    assert len(set(plain)) >= 2
    return tokenizer, last, end_of_turn, plain[0], plain[1]


def test_infer_and_eval_stop_at_the_template_end_of_turn(tmp_path, tiny_dir, tokens, capsys):
    """The model says A, ends its turn, then rambles on; its generation_config names only BOS as eos. eval
    stops at the template's end-of-turn token; infer must give the same completion, not A + the ramble."""
    tokenizer, last, end_of_turn, a, b = tokens
    model_dir = chain_model(tiny_dir, tmp_path / "model", {last: a, a: end_of_turn, end_of_turn: b, b: b},
                            eos=tokenizer.bos_token_id)
    assert GenerationConfig.from_pretrained(model_dir).eos_token_id == tokenizer.bos_token_id
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Hi"}])
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"eval": {"loss": False, "max_new_tokens": 6, "code": {"enabled": False},
                                           "generation": {"source": str(prompts)}}}))

    evaluate.run(load_config(config), str(model_dir), str(tmp_path / "eval"))
    [record] = [json.loads(x) for x in (tmp_path / "eval" / "generations.jsonl").read_text().splitlines()]
    assert record["ended_with_eos"] and record["num_tokens"] == 2
    assert record["generation"] == tokenizer.decode([a], skip_special_tokens=True)

    rambling = tokenizer.decode([a, end_of_turn, b, b, b, b], skip_special_tokens=True)
    assert rambling != record["generation"]  # control: what generating past the end-of-turn token gives
    assert main(["infer", "--model", str(model_dir), "--prompt", "Hi", "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out == record["generation"] + "\n"
    assert main(["infer", str(config), "--model", str(model_dir), "--prompts-file", str(prompts),
                 "--output", str(tmp_path / "out.jsonl")]) == 0
    [line] = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert line == {"messages": PROMPT, "completion": record["generation"]}


def test_infer_settings_come_from_config_then_set_then_flags(tmp_path, tiny_dir, tokens, capsys):
    """A model that never stops says B max_new_tokens times, so the output shows which setting won."""
    tokenizer, last, end_of_turn, _, b = tokens
    model_dir = chain_model(tiny_dir, tmp_path / "model", {last: b, b: b}, eos=end_of_turn)
    config = tmp_path / "config.yaml"
    config.write_text("eval: {max_new_tokens: 5, generation: {batch_size: 2}}\n")

    def infer(*args: str) -> str:
        assert main(["infer", *args, "--model", str(model_dir), "--prompt", "Hi"]) == 0
        return capsys.readouterr().out.removesuffix("\n")

    assert infer(str(config)) == tokenizer.decode([b] * 5)
    assert infer(str(config), "--set", "eval.max_new_tokens=3") == tokenizer.decode([b] * 3)
    assert infer(str(config), "--set", "eval.max_new_tokens=3", "--max-new-tokens", "2") == tokenizer.decode([b] * 2)
    assert infer("--max-new-tokens", "4") == tokenizer.decode([b] * 4)  # no config: built-in defaults + flags
    # settings are validated as config fields
    assert main(["infer", str(config), "--model", str(model_dir), "--prompt", "Hi", "--top-p", "2"]) == 2
    assert "eval.generation.top_p" in capsys.readouterr().err


def test_infer_samples_several_completions_per_prompt(tmp_path, tiny_dir, tokens):
    tokenizer, last, end_of_turn, a, b = tokens
    model_dir = chain_model(tiny_dir, tmp_path / "model", {last: b, b: b}, eos=end_of_turn)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Hi"}, {"messages": PROMPT}])
    assert main(["infer", "--model", str(model_dir), "--prompts-file", str(prompts), "--output",
                 str(tmp_path / "out.jsonl"), "--set", "eval.generation.num_samples=3", "--temperature", "0.5",
                 "--max-new-tokens", "2"]) == 0
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [len(line["completions"]) for line in lines] == [3, 3]


@pytest.mark.parametrize("line,message", [
    ("not json", r"prompts\.jsonl:3: invalid JSON"),
    (b'{"prompt": "caf\xe9"}', r"prompts\.jsonl:3: bytes that are not UTF-8 at column 16"),
    ('{"prompt": "a", "prompt": "b"}', r"prompts\.jsonl:3: key 'prompt' is given more than once"),
    ("[1, 2]", r"prompts\.jsonl:3: expected a JSON object, got list"),
    ('{"text": "no prompt"}', r"prompts\.jsonl:3: expected \{\"prompt\""),
])
def test_a_bad_line_in_a_prompts_file_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "ok"}\n\n' + (line if isinstance(line, bytes) else line.encode()) + b"\n")
    with pytest.raises(SftpipeError, match=message):
        read_prompts(path)


def test_prompts_file_reads_like_a_data_source(tmp_path):
    """A BOM, blank lines and CRLF line endings are fine; a .json file holds an array."""
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "a"}\r\n\r\n{"messages": [{"role": "user", "content": "b"}]}\r\n')
    assert read_prompts(path) == [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]]
    (tmp_path / "prompts.json").write_text(json.dumps([{"prompt": "a"}]))
    assert read_prompts(tmp_path / "prompts.json") == [[{"role": "user", "content": "a"}]]
    with pytest.raises(SftpipeError, match="no such file"):
        read_prompts(tmp_path / "missing.jsonl")
