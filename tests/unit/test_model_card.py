"""Model cards of final/, checkpoints and merged models, and the generation config's stop tokens."""

import json
from pathlib import Path

import huggingface_hub
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from sftpipe import __version__
from sftpipe.contracts.data_dir import DataDir
from sftpipe.evaluate.generation import DecodingSettings, generate_samples
from sftpipe.export import merge

PROMPTS = [[{"role": "user", "content": "Write a Haskell function that reverses a list."}],
           [{"role": "user", "content": "What is the capital of France?"}],
           [{"role": "system", "content": "You are concise."}, {"role": "user", "content": "Say hello."}]]


def _front_matter(path):
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    head, _, body = text[4:].partition("\n---\n")
    return yaml.safe_load(head), body


def test_lora_final_and_checkpoint_cards_load_with_huggingface_hub(lora_run):
    cfg, result = lora_run
    manifest = DataDir(cfg.data.output_dir).manifest
    checkpoints = sorted((result.run_dir / "checkpoints").glob("checkpoint-*"))
    assert checkpoints
    for model_dir in (result.final_dir, checkpoints[-1]):
        meta, body = _front_matter(model_dir / "README.md")
        card = huggingface_hub.ModelCard.load(model_dir / "README.md")
        assert card.data.base_model == cfg.model.name_or_path == meta["base_model"]
        assert card.data.library_name == "peft"
        assert "sftpipe" in card.data.tags and card.data.pipeline_tag == "text-generation"
        assert set(card.data.datasets) == set(manifest.sources) and card.data.datasets
        for needle in (f"| learning rate | {cfg.train.lr:g} |", f"| LoRA r | {cfg.lora.r} |",
                       f"| LoRA alpha | {cfg.lora.alpha} |", "| LoRA target modules |",
                       f"| gradient accumulation | {cfg.train.grad_accum} |", manifest.tokenizer.sha256,
                       manifest.sha256, f"`{manifest.template.name}`", "`<|im_end|>`", f"sftpipe {__version__}",
                       f"| train | {manifest.splits['train'].examples} |"):
            assert needle in body, needle


def test_merged_card_says_transformers_and_keeps_the_training_figures(lora_run, tmp_path):
    cfg, result = lora_run
    out = tmp_path / "merged"
    merged = merge.run(cfg, str(result.run_dir), str(out))
    card = huggingface_hub.ModelCard.load(out / "README.md")
    adapter_card = huggingface_hub.ModelCard.load(result.final_dir / "README.md")
    assert card.data.library_name == "transformers" and adapter_card.data.library_name == "peft"
    assert card.data.base_model == cfg.model.name_or_path
    assert "sftpipe" in card.data.tags and card.data.datasets == adapter_card.data.datasets
    assert adapter_card.text.strip() in card.text and "## Merge" in card.text
    assert f"{merged.max_abs_logit_diff:.2e}" in card.text


def test_plain_generate_with_the_saved_generation_config_stops_where_sftpipe_stops(lora_run, tmp_path):
    cfg, result = lora_run
    out = tmp_path / "merged"
    merge.run(cfg, str(result.run_dir), str(out))
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    saved = GenerationConfig.from_pretrained(out)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end in saved.eos_token_id
    # A 4-step tiny model rarely ends a turn by itself: make the end-of-turn token win wherever the model
    # would have written the third token of its first reply, so every path below has a stop to find.
    first = generate_samples(model, tokenizer, PROMPTS[:1], DecodingSettings(max_new_tokens=8))[0][0]
    third = tokenizer(first.text, add_special_tokens=False).input_ids[2]
    with torch.no_grad():
        model.get_output_embeddings().weight[end] = 2 * model.get_output_embeddings().weight[third]
    ours = generate_samples(model, tokenizer, PROMPTS, DecodingSettings(max_new_tokens=48))
    assert any(g[0].ended for g in ours), "control: some generation must end at a stop token"
    for messages, samples in zip(PROMPTS, ours):
        new = _plain_generate(model, tokenizer, messages, saved)
        assert len(new) == samples[0].num_tokens
        assert tokenizer.decode(new, skip_special_tokens=True) == samples[0].text
    # control: a generation config without the stop tokens runs past where sftpipe stops
    ended = next(i for i, samples in enumerate(ours) if samples[0].ended)
    saved.eos_token_id = [tokenizer.pad_token_id]  # a token the model never writes here
    assert len(_plain_generate(model, tokenizer, PROMPTS[ended], saved)) > ours[ended][0].num_tokens


def _plain_generate(model, tokenizer, messages, config) -> list[int]:
    # the recipe the card gives, as transformers' pipelines and vLLM's chat call it
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                        return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, generation_config=config, max_new_tokens=48, do_sample=False)
    return out[0, ids["input_ids"].shape[1]:].tolist()


def test_a_full_fine_tune_card_says_transformers_and_has_no_lora_rows(lora_run, tmp_path):
    from sftpipe.export.model_card import CardSource, write_model_card

    cfg, _ = lora_run
    full = cfg.model_copy(update={"train": cfg.train.model_copy(update={"method": "full"})})
    write_model_card(tmp_path, full, DataDir(cfg.data.output_dir).manifest, CardSource("9.9.9", None, ["<|im_end|>"]))
    card = huggingface_hub.ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "transformers" and "full" in card.data.tags
    assert "LoRA" not in card.text and "| method | full |" in card.text
    assert "sftpipe 9.9.9." in card.text  # no commit when none is known


def test_the_saved_template_tokenizes_prompts_as_training_did(lora_run):
    """apply_chat_template(tokenize=True) adds no special tokens: the saved template must write the BOS that
    training put before every prompt, exactly once."""
    from sftpipe.data.tokenize import encode_prompt

    cfg, result = lora_run
    tokenizer = AutoTokenizer.from_pretrained(result.final_dir)
    template = DataDir(Path(cfg.data.output_dir)).manifest.template.text
    for messages in PROMPTS:
        trained = encode_prompt(tokenizer, messages, template)  # how training and sftpipe's generation encode
        assert trained[0] == tokenizer.bos_token_id and trained.count(tokenizer.bos_token_id) == 1
        assert tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                             return_dict=False) == trained
        # control: the training template as it is, without the BOS, tokenizes without it
        assert tokenizer.apply_chat_template(messages, chat_template=template, add_generation_prompt=True,
                                             tokenize=True, return_dict=False) == trained[1:]
