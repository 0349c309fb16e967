"""The fast path computes the same thing as the slow one (CPU, micro Llama, fp32), each with a negative control.

- packed rows give every example the logits and loss it has alone;
- the chunked cross-entropy equals the full-logits one, and never holds (tokens x vocab) logits;
- gradients are token-weighted over the whole step for packed micro-batches, whatever the split.
"""

import pytest
import torch
from accelerate import Accelerator
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM

from sftpipe.contracts.data_dir import DataDir
from sftpipe.data import prepare
from sftpipe.data.batches.collate import TokenStore, collate_flat, collate_packed, collate_padded
from sftpipe.data.batches.plan import pack_best_fit
from sftpipe.data.tokenize import IGNORE_INDEX
from sftpipe.errors import SftpipeError
from sftpipe.models.adapters import build_trainable_model
from sftpipe.models.loading import resolve_attn
from sftpipe.models.loss import token_loss_sum
from sftpipe.train import loop
from sftpipe.train.causal_lm import CausalLMLoss
from tests.conftest import make_config

PAD = 0


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_dir, chat_sources):
    tmp = tmp_path_factory.mktemp("packed_eq")
    cfg = make_config(tmp, tiny_dir, chat_sources, train={"method": "full"})
    prepare.run(cfg)
    return cfg, TokenStore(DataDir(tmp / "data").load_split("train"))


def mixed_examples(store: TokenStore, k: int = 4) -> list[int]:
    """k examples with the fewest trained labels and k with the most (very different label counts)."""
    order = sorted(range(len(store)), key=lambda i: int((store.example(i)[1] != IGNORE_INDEX).sum()))
    return order[:k] + order[-k:]


def alone(model, store, index):
    ids = torch.from_numpy(store.example(index)[0].astype("int64"))[None]
    return model(input_ids=ids, use_cache=False).logits[0]


@pytest.mark.parametrize("attn", ["sdpa", "eager", "sdpa_varlen"])
def test_packed_logits_and_loss_equal_unpacked(prepared, tiny_dir, attn):
    _, store = prepared
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation=resolve_attn(attn)).eval()
    examples = mixed_examples(store, 3)
    rows = [examples[:3], examples[3:]]
    mb = collate_packed(store, rows, PAD)
    inputs = mb.inputs
    loss_model = CausalLMLoss(model)
    with torch.no_grad():
        packed = model(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"], use_cache=False).logits
        crossing = model(input_ids=inputs["input_ids"], use_cache=False).logits  # plain causal over the row
        # what a caller gets without use_cache=False: the model's cache disables packed-sequence detection
        cached = model(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"]).logits
        worst = crossed = cache_diff = 0.0
        for r, row in enumerate(rows):
            at = 0
            for index in row:
                ref = alone(model, store, index)
                n = ref.shape[0]
                worst = max(worst, (packed[r, at : at + n] - ref).abs().max().item())
                if at:  # the first example of a row has nothing before it to attend to
                    crossed = max(crossed, (crossing[r, at : at + n] - ref).abs().max().item())
                    cache_diff = max(cache_diff, (cached[r, at : at + n] - ref).abs().max().item())
                # per-example mean loss: the packed micro-batch with only this example's labels kept
                labels = torch.full_like(inputs["labels"], IGNORE_INDEX)
                labels[r, at : at + n] = inputs["labels"][r, at : at + n]
                packed_loss = loss_model(input_ids=inputs["input_ids"], labels=labels,
                                         position_ids=inputs["position_ids"])
                ids = torch.from_numpy(store.example(index)[0].astype("int64"))[None]
                own = torch.from_numpy(store.example(index)[1].astype("int64"))[None]
                alone_sum, count, _ = token_loss_sum(ref[None], own)
                assert count == (labels[:, 1:] != IGNORE_INDEX).sum()
                assert abs(packed_loss.item() - alone_sum.item()) / count.item() <= 1e-5, index
                assert ids.shape[1] == n
                at += n
    assert worst <= 1e-5
    assert crossed > 1e-3, "negative control: attention across examples should change the logits"
    if attn != "sdpa_varlen":  # sdpa_varlen reads the segments itself, with or without a cache object
        assert cache_diff > 1e-3, "negative control: with a cache transformers ignores the packed position ids"


def test_flat_varlen_rows_give_every_example_its_own_loss(prepared, tiny_dir):
    """The layout packed training uses on CPU: one padding-free row per micro-batch, sdpa_varlen attention."""
    _, store = prepared
    examples = mixed_examples(store, 3)
    flat = collate_flat(store, [examples[:3], examples[3:]], PAD)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation=resolve_attn("sdpa_varlen")).eval()
    inputs = flat.inputs
    assert inputs["input_ids"].shape[0] == 1 and flat.real_tokens == flat.slots
    with torch.no_grad():
        logits = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False).logits[0]
        bounds = inputs["cu_seq_lens_q"].tolist()
        worst = max((logits[a:b] - alone(model, store, i)).abs().max().item()
                    for i, a, b in zip(examples, bounds, bounds[1:]))
        total = CausalLMLoss(model)(**inputs)
        separate = sum(CausalLMLoss(model)(**collate_padded(store, [[i]], PAD).inputs) for i in examples)
        # negative control: the same flat row without its boundaries is one long sequence
        crossing = model(input_ids=inputs["input_ids"], use_cache=False).logits[0]
    assert worst <= 1e-5
    assert abs(total.item() - separate.item()) / (inputs["labels"] != IGNORE_INDEX).sum().item() <= 1e-5
    assert (crossing[bounds[1] :] - logits[bounds[1] :]).abs().max() > 1e-3


def test_sdpa_varlen_leaves_padded_batches_and_generation_unchanged(tiny_dir):
    """Outside packed rows (padding masks, a KV cache) sdpa_varlen is transformers' sdpa."""
    varlen = AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation=resolve_attn("sdpa_varlen")).eval()
    sdpa = AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation="sdpa").eval()
    ids = torch.randint(5, 500, (2, 24), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0
    with torch.no_grad():
        torch.testing.assert_close(varlen(input_ids=ids, attention_mask=mask).logits,
                                   sdpa(input_ids=ids, attention_mask=mask).logits, rtol=0, atol=1e-6)
        left = torch.ones(2, 8, dtype=torch.long)
        left[1, :3] = 0  # left padding, as batched generation uses
        out = {name: m.generate(ids[:, :8], attention_mask=left, max_new_tokens=6, do_sample=False)
               for name, m in (("varlen", varlen), ("sdpa", sdpa))}
    assert torch.equal(out["varlen"], out["sdpa"])


def test_chunked_cross_entropy_equals_full_logits_loss(prepared, tiny_dir):
    _, store = prepared
    mb = collate_packed(store, [mixed_examples(store, 2)], PAD)
    supervised = (mb.inputs["labels"][:, 1:] != IGNORE_INDEX).sum()
    results = {}
    for impl, chunk in (("full", 0), ("chunked", 0), ("chunked", 7)):
        model = AutoModelForCausalLM.from_pretrained(tiny_dir)
        loss = CausalLMLoss(model, impl, chunk_tokens=chunk)(**mb.inputs)
        (loss / supervised).backward()  # the token mean, as the loop normalises it
        results[impl, chunk] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    ref_loss, ref_grads = results["full", 0]
    for key in (("chunked", 0), ("chunked", 7)):
        loss, grads = results[key]
        torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-4)
        for name, grad in ref_grads.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6)
    # negative control: the same comparison sees a loss whose targets are not shifted
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    inputs = mb.inputs
    logits = model(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"], use_cache=False).logits
    unshifted = torch.nn.functional.cross_entropy(logits[0], inputs["labels"][0], ignore_index=IGNORE_INDEX,
                                                  reduction="sum")
    assert (unshifted - ref_loss).abs() > 1.0


def test_chunked_loss_refuses_a_second_backward_instead_of_reusing_scaled_gradients():
    """Its gradients are computed in the forward pass and scaled in place in backward: a second backward through
    the same graph (retain_graph=True) must fail, not hand out the scaled gradients again."""
    from sftpipe.models.loss import linear_cross_entropy_sum

    g = torch.Generator().manual_seed(0)
    h = torch.randn(12, 8, generator=g, requires_grad=True)
    w = torch.randn(40, 8, generator=g, requires_grad=True)
    t = torch.randint(0, 40, (12,), generator=g)
    loss = linear_cross_entropy_sum(h, w, t, chunk_tokens=5) * 0.25
    loss.backward(retain_graph=True)
    ref_h, ref_w = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    (torch.nn.functional.cross_entropy(ref_h @ ref_w.T, t, reduction="sum") * 0.25).backward()
    torch.testing.assert_close(h.grad, ref_h.grad)
    torch.testing.assert_close(w.grad, ref_w.grad)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


class LargestVocabTensor(TorchDispatchMode):
    """Records the largest tensor with a vocabulary-sized dimension that any aten op produces (fwd and bwd)."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.largest = vocab, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and self.vocab in t.shape:
                self.largest = max(self.largest, t.numel())
        return out


def test_chunked_loss_never_materialises_the_full_logits(prepared, tiny_dir):
    _, store = prepared
    mb = collate_packed(store, [mixed_examples(store, 4)[:4], mixed_examples(store, 4)[4:]], PAD)
    config = AutoModelForCausalLM.from_pretrained(tiny_dir).config
    vocab, hidden = config.vocab_size, config.hidden_size
    supervised = int((mb.inputs["labels"][:, 1:] != IGNORE_INDEX).sum())
    chunk = 16
    sizes = {}
    for impl in ("chunked", "full"):
        loss_model = CausalLMLoss(AutoModelForCausalLM.from_pretrained(tiny_dir), impl, chunk_tokens=chunk)
        with LargestVocabTensor(vocab) as probe:
            loss_model(**mb.inputs).backward()
        sizes[impl] = probe.largest
    assert supervised > 4 * chunk
    assert sizes["chunked"] < supervised * vocab
    # one chunk of logits at most, or the head weight and its gradient (vocab x hidden)
    assert sizes["chunked"] <= max(chunk * vocab, vocab * hidden)
    # negative control: the full path holds logits for every position of the micro-batch
    assert sizes["full"] >= mb.inputs["input_ids"].numel() * vocab


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("layout", ["rows", "flat"])
def test_packed_gradient_is_token_weighted_for_any_split(prepared, layout):
    """8x1, 4x2 and 1x8 packed micro-batches give the gradient of the one padded batch of all eight.

    rows: packed rows padded to a width, block-causal masks (sdpa); flat: one padding-free row per micro-batch
    with sdpa_varlen, what packed training uses on CPU.
    """
    cfg, store = prepared
    if layout == "flat":
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"attn_implementation": "sdpa_varlen"})})
    collate = collate_flat if layout == "flat" else collate_packed
    examples = mixed_examples(store, 4)
    counts = [int((store.example(i)[1][1:] != IGNORE_INDEX).sum()) for i in examples]
    assert max(counts) > 4 * min(counts)
    acc = Accelerator(cpu=True)
    model = build_trainable_model(cfg, torch.device("cpu"))
    loss_model = CausalLMLoss(model)
    model.zero_grad()
    loop.accumulate_gradients(loss_model, [collate_padded(store, [[i] for i in examples], PAD).inputs], acc)
    reference = _grads(model)
    for micro in (8, 4, 1):
        model.zero_grad()
        batches = []
        for start in range(0, 8, micro):
            group = examples[start : start + micro]
            rows = [[group[j] for j in row] for row in pack_best_fit(store.lengths[group], 256)]
            batches.append(collate(store, rows, PAD).inputs)
        loop.accumulate_gradients(loss_model, batches, acc)
        for name, grad in _grads(model).items():
            torch.testing.assert_close(grad, reference[name], rtol=1e-4, atol=1e-6)
    # negative control: the mean of per-micro-batch means over the same packed 1x8 split
    model.zero_grad()
    for i in examples:
        inputs = collate(store, [[i]], PAD).inputs
        n = (inputs["labels"][:, 1:] != IGNORE_INDEX).sum()
        (loss_model(**inputs) / n / 8).backward()
    naive = _grads(model)
    assert max((naive[k] - reference[k]).abs().max().item() for k in naive) > 1e-4


def test_loss_implementation_choice_and_fallbacks(tiny_dir, caplog):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert CausalLMLoss(model).cross_entropy == "chunked"
    assert CausalLMLoss(model, "full").cross_entropy == "full"
    with caplog.at_level("WARNING", logger="sftpipe"):
        assert CausalLMLoss(model, "liger").cross_entropy == "chunked"  # no CUDA here
    assert "liger needs a CUDA device" in caplog.text
    # a head that is not a plain linear map (here: a bias) cannot be applied in chunks by sftpipe
    biased = AutoModelForCausalLM.from_pretrained(tiny_dir)
    biased.lm_head = torch.nn.Linear(biased.config.hidden_size, biased.config.vocab_size, bias=True)
    assert CausalLMLoss(biased).cross_entropy == "full"
    with pytest.raises(SftpipeError, match="train.cross_entropy=chunked"):
        CausalLMLoss(biased, "chunked")
