"""The printed table of `sftpipe estimate` (and the one-line summary `validate` shows)."""

from __future__ import annotations

from sftpipe.models.memory import MemoryEstimate
from sftpipe.preflight.dry_run import DryRunResult
from sftpipe.preflight.estimate import EstimateResult, human

PARTS = [("weights", "weights"), ("gradients", "gradients"), ("optimizer (AdamW states)", "optimizer"),
         ("activations kept for backward", "activations"), ("loss buffers (chunked logits)", "loss"),
         ("recomputed layer (checkpointing)", "recompute")]


def _column(e: MemoryEstimate) -> list[str]:
    return [human(getattr(e, key)) for _, key in PARTS] + [human(e.total), human(e.overhead), human(e.reserved)]


def print_estimate(result: EstimateResult) -> None:
    e, other = result.planned, result.other_checkpointing
    b = result.batch
    sharding = f", FSDP-sharded over {e.devices}" if e.sharded else (f", replicated on {e.devices}" if e.devices > 1
                                                                     else "")
    print(f"memory estimate (estimated, not measured): {result.model}, train.method {result.method}, per device"
          f"{sharding}")
    print(f"  {e.total_params:,} params, {e.trainable_params:,} trainable; largest micro-batch {e.rows} "
          f"{'packed ' if b.packed else ''}rows x {e.row_length} tokens = {e.tokens:,} tokens (lengths: {b.source})")
    labels = [label for label, _ in PARTS] + ["peak in tensors (max_memory_allocated)",
                                               "CUDA context + allocator slack", "peak reserved"]
    heads = (f"checkpointing {'on' if e.checkpointing else 'off'} (planned)",
             f"checkpointing {'on' if other.checkpointing else 'off'}")
    width = max(map(len, labels))
    print(f"  {'':{width}}  {heads[0]:>30}  {heads[1]:>20}")
    for label, a, c in zip(labels, _column(e), _column(other)):
        print(f"  {label:{width}}  {a:>30}  {c:>20}")
    if result.budget is None:
        print("  no budget: pass --gpu-memory (e.g. 24GiB) for a fit and a recommended batch")
        return
    print(f"  budget {human(result.budget)} per device: " + ("fits" if result.fits else "does NOT fit"))
    rec = result.recommendation
    if rec is None:
        print("  nothing fits, not even one row with gradient checkpointing: use qlora, more GPUs (--gpus with "
              "FSDP), or shorter rows")
        return
    print(f"  recommended: train.micro_batch_size {rec.micro_batch_size}, train.grad_accum {rec.grad_accum} "
          f"({b.rows_per_step} rows per optimizer step as configured{', rounded up' if rec.micro_batch_size * rec.grad_accum != b.rows_per_step else ''}), "
          f"model.gradient_checkpointing {str(rec.gradient_checkpointing).lower()}: ~{human(rec.estimate.reserved)}")


def print_dry_run(result: DryRunResult) -> None:
    from sftpipe.cli.report import print_checks

    print_checks(result.checks)
    print()
    print_estimate(result.estimate)
    print()
    if result.failed:
        print("dry run: no step tried, validation failed: " + ", ".join(c.name for c in result.failed))
    elif not result.ran:
        print("dry run: no step tried: the estimate does not fit the memory budget (see the recommendation)")
    else:
        e = result.estimate.planned
        print(f"dry run: one step on the largest micro-batch ({result.rows} rows, {result.tokens:,} token slots) in "
              f"{result.step_s:.2f} s, loss {result.loss:.4f}, {result.trainable_params:,} trainable params")
        print(f"  peak memory: {human(result.peak_bytes)} measured ({result.peak_kind}); estimate "
              f"{human(e.total)} in tensors, {human(e.reserved)} reserved")
    print("nothing was written")
