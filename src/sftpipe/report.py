"""Human-readable summaries of each stage's result, printed by the CLI and the demo."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sftpipe.data.prepare import PrepareResult
    from sftpipe.evaluate.run import EvalResult
    from sftpipe.train.loop import TrainResult


def print_prepare(result: PrepareResult) -> None:
    kept = sum(s.examples for s in result.splits.values())
    print(f"prepared {result.output_dir}: {result.records_read} records read, {kept} kept, "
          f"{sum(result.rejected.values())} rejected")
    for name, s in result.splits.items():
        print(f"  {name:<5} {s.examples:>6} examples  {s.tokens:>8} tokens  {s.trained_tokens:>8} trained  "
              f"{s.truncated} truncated  longest {s.max_tokens}")
    for reason, count in sorted(result.rejected.items()):
        print(f"  rejected {reason}: {count}")
    if result.rejected:
        print(f"  details: {result.output_dir / 'rejected.jsonl'}")


def print_train(result: TrainResult) -> None:
    if result.resumed_from is not None:
        print(f"resumed from {result.resumed_from}")
    print(f"trained {result.steps} steps in {result.wall_s:.1f}s ({result.tokens_per_s:.0f} tokens/s), "
          f"{result.trainable_params:,} of {result.total_params:,} params trainable")
    if result.packing_efficiency == result.packing_efficiency:  # not NaN
        print(f"  packing efficiency {result.packing_efficiency:.1%} (real tokens / token slots computed)")
    if result.val_before is not None:
        print(f"  val loss before {result.val_before.loss:.4f} (ppl {result.val_before.perplexity:.2f})")
    if result.val is not None:
        print(f"  val loss after  {result.val.loss:.4f} (ppl {result.val.perplexity:.2f}, "
              f"token acc {result.val.token_accuracy:.3f})")
    print(f"  final model: {result.final_dir}")
    print(f"  logs: {result.run_dir / 'logs' / 'metrics.jsonl'}")


def print_eval(result: EvalResult) -> None:
    m = result.metrics
    print(f"eval {result.model} on {result.split} ({m.examples} examples, {m.tokens} tokens): loss {m.loss:.4f}, "
          f"ppl {m.perplexity:.2f}, token acc {m.token_accuracy:.3f}, sequence acc {m.sequence_accuracy:.3f}")
    print(f"  metrics: {result.output_dir / 'metrics.json'}")
