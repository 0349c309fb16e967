"""One benchmark contender in its own process (so that its peak RSS is its own); prints one JSON line.

    python benchmarks/train/contender.py SPEC.json NAME

SPEC.json (written by run.py) holds the shared settings and every contender's definition. Each contender
trains `warmup + steps` optimizer steps and reports the figures of the last `steps` only:
non-pad tokens/s, supervised tokens/s, packing efficiency (non-pad tokens / token slots computed), and the
process's peak RSS.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
IGNORE_INDEX = -100


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM), as benchmarks/prepare measures it: ru_maxrss would also carry the
    launching run.py's RSS at fork (~0.5 GB here) across the exec."""
    with open("/proc/self/status") as fh:
        return int(fh.read().split("VmHWM:")[1].split()[0]) / 1024


def clocks() -> tuple[float, float, float]:
    """(wall s, this process's CPU s, CPU s the whole machine was busy) — the last from /proc/stat, so that
    a window can say how much of the machine other processes (other containers included) took."""
    busy = 0.0
    if os.path.exists("/proc/stat"):
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    return time.perf_counter(), time.process_time(), busy


def window(marks: list[tuple], warmup: int) -> dict:
    """Figures between the end of step `warmup` and the last step. Marks are (clocks(), real, supervised,
    slots) with cumulative token counts, one before step 1 and one after each step."""
    ((w0, c0, b0), r0, s0, p0), ((w1, c1, b1), r1, s1, p1) = marks[warmup], marks[-1]
    elapsed, cpu = w1 - w0, c1 - c0
    others = max(0.0, (b1 - b0) - cpu) / (elapsed * (os.cpu_count() or 1)) if b1 > b0 else None
    return {"seconds": elapsed, "steps": len(marks) - 1 - warmup, "tokens": r1 - r0, "supervised": s1 - s0,
            "slots": p1 - p0, "tokens_per_s": (r1 - r0) / elapsed, "supervised_per_s": (s1 - s0) / elapsed,
            "tokens_per_cpu_s": (r1 - r0) / cpu, "supervised_per_cpu_s": (s1 - s0) / cpu,
            "packing_efficiency": (r1 - r0) / (p1 - p0) if p1 > p0 else 1.0,
            "others_cpu_share": others}


def run_sftpipe(spec: dict, c: dict) -> dict:
    from sftpipe import stages
    from sftpipe.config import load_config
    from sftpipe.contracts.run_dir import RunDir
    from sftpipe.train.tracking import MetricsLogger, read_metrics

    stamps: dict[int, tuple] = {}
    original_log = MetricsLogger.log

    def log_with_clocks(self, step, values):  # the loop logs every step (log_every 1): stamp each
        if "loss" in values:
            stamps[step] = clocks()
        original_log(self, step, values)

    MetricsLogger.log = log_with_clocks
    out = Path(spec["workdir"]) / "runs" / c["name"]
    shutil.rmtree(out, ignore_errors=True)  # a fresh run: metrics.jsonl appends, checkpoints would resume
    overrides = [f"train.output_dir={out}", f"train.method={c['method']}",
                 f"train.max_steps={spec['warmup'] + spec['steps']}", *c.get("set", [])]
    cfg = load_config(spec["config"], overrides=overrides)
    result = stages.train(cfg, resume="never")
    steps = [m for m in read_metrics(RunDir(out).metrics) if "loss" in m]
    marks, real, sup, slots = [((0.0, 0.0, 0.0), 0, 0, 0)], 0, 0, 0
    for m in steps:
        step_real = m["tokens"] - real
        real, sup = m["tokens"], m["trained_tokens"]
        slots += step_real / m["packing_efficiency"]
        marks.append((stamps[m["step"]], real, sup, int(round(slots))))
    speed = next(m["speed"] for m in read_metrics(RunDir(out).metrics) if "speed" in m)
    return {**window(marks, spec["warmup"]), "detail": speed, "final_loss": result.train_loss}


def run_bare(spec: dict, c: dict) -> dict:
    """The limit: forward, backward, optimizer step on the micro-batches sftpipe would build, nothing else.

    `kernels: "transformers"` is the loop a user writes by hand: transformers' sdpa (block-causal masks built
    from position_ids) and cross-entropy on the full logits. `kernels: "sftpipe"` runs the very computation
    sftpipe's trainer runs (sdpa_varlen on flat padding-free rows, chunked linear cross-entropy), so that
    sftpipe against it measures the trainer's own overhead: logging, scheduling, clipping, data loading.
    """
    import peft
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from sftpipe.config import load_config
    from sftpipe.contracts.data_dir import DataDir
    from sftpipe.data.batches.collate import TokenStore, collate_flat, collate_packed
    from sftpipe.data.batches.plan import build_plan
    from sftpipe.models.varlen_attention import use_sdpa_varlen
    from sftpipe.train.causal_lm import CausalLMLoss

    same_kernels = c.get("kernels", "transformers") == "sftpipe"
    cfg = load_config(spec["config"], overrides=c.get("set", []))
    tc = cfg.train
    torch.manual_seed(tc.seed)
    store = TokenStore(DataDir(Path(cfg.data.output_dir)).load_split("train"))
    plan, _ = build_plan(tc, store.lengths, cfg.data.max_length, 1, 0, flat=same_kernels)
    collate = collate_flat if same_kernels else collate_packed
    total = spec["warmup"] + spec["steps"]
    steps = [[collate(store, plan.rows(g)[0], 0) for g in range(s * tc.grad_accum, (s + 1) * tc.grad_accum)]
             for s in range(total)]
    model = AutoModelForCausalLM.from_pretrained(cfg.model.name_or_path, attn_implementation="sdpa")
    if same_kernels:
        use_sdpa_varlen(model)
    if c["method"] == "lora":
        model = peft.get_peft_model(model, peft.LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha,
                                                           lora_dropout=cfg.lora.dropout,
                                                           target_modules=cfg.lora.target_modules,
                                                           task_type="CAUSAL_LM"))
    model.train()
    loss_sum = CausalLMLoss(model, "chunked") if same_kernels else None
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tc.lr)
    marks, real, sup, slots = [(clocks(), 0, 0, 0)], 0, 0, 0
    for micro in steps:
        step_tokens = sum(int((mb.inputs["labels"][:, 1:] != IGNORE_INDEX).sum()) for mb in micro)
        for mb in micro:
            x = mb.inputs
            if same_kernels:
                loss = loss_sum(**x) / step_tokens
            else:
                logits = model(input_ids=x["input_ids"], position_ids=x["position_ids"], use_cache=False).logits
                loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(),
                                       x["labels"][:, 1:].reshape(-1), ignore_index=IGNORE_INDEX,
                                       reduction="sum") / step_tokens
            loss.backward()
            real, slots = real + mb.real_tokens, slots + mb.slots
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sup += step_tokens
        marks.append((clocks(), real, sup, slots))
    return window(marks, spec["warmup"])


def run_trl(spec: dict, c: dict) -> dict:
    """TRL's SFTTrainer on the same tokenized examples (input_ids + labels from sftpipe's data dir)."""
    import datasets
    import peft
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from sftpipe.config import load_config

    cfg = load_config(spec["config"])
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.name_or_path)
    train = datasets.load_from_disk(str(Path(cfg.data.output_dir) / "train")).select_columns(["input_ids", "labels"])
    model = AutoModelForCausalLM.from_pretrained(cfg.model.name_or_path, attn_implementation="sdpa",
                                                 dtype=torch.float32)
    counts = {"real": 0, "supervised": 0, "slots": 0}
    packed = c["trl"] == "packed"

    # TRL refuses a custom collator with padding-free, so its own collator class is wrapped to count what
    # each micro-batch holds (padding-free batches are one row without padding: every slot is real)
    original = DataCollatorForLanguageModeling.torch_call

    def counting_torch_call(self, examples):
        batch = original(self, examples)
        ids = batch["input_ids"]
        counts["real"] += int(batch["attention_mask"].sum()) if "attention_mask" in batch else ids.numel()
        counts["slots"] += ids.numel()
        counts["supervised"] += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        return batch

    DataCollatorForLanguageModeling.torch_call = counting_torch_call

    marks: list[tuple[float, int, int, int]] = []

    class Marks(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            marks.append((clocks(), 0, 0, 0))

        def on_step_end(self, args, state, control, **kwargs):
            marks.append((clocks(), counts["real"], counts["supervised"], counts["slots"]))

    args = SFTConfig(
        output_dir=str(Path(spec["workdir"]) / "runs" / c["name"]), max_length=cfg.data.max_length,
        per_device_train_batch_size=c["batch_size"], gradient_accumulation_steps=c["grad_accum"],
        learning_rate=cfg.train.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=cfg.train.max_grad_norm, max_steps=spec["warmup"] + spec["steps"], logging_steps=1,
        save_strategy="no", eval_strategy="no", report_to="none", use_cpu=True, seed=cfg.train.seed,
        dataloader_num_workers=0, disable_tqdm=True, packing=packed, packing_strategy="bfd", padding_free=packed,
        bf16=False, fp16=False,
    )
    peft_config = None
    if c["method"] == "lora":
        peft_config = peft.LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                      target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[Marks()])
    result = trainer.train()
    return {**window(marks, spec["warmup"]), "final_loss": result.training_loss}


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    c = next(x for x in spec["contenders"] if x["name"] == sys.argv[2])
    runner = {"sftpipe": run_sftpipe, "bare": run_bare, "trl": run_trl}[c["kind"]]
    started = time.perf_counter()
    figures = runner(spec, c)
    figures.update(name=c["name"], peak_rss_mb=peak_rss_mb(), process_seconds=time.perf_counter() - started)
    print("RESULT " + json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
