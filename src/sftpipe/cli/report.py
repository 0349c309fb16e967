"""Human-readable summaries of each stage's result, printed by the CLI and the demo."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sftpipe.contracts.run_dir import RunDir

if TYPE_CHECKING:
    from sftpipe.data.prepare import PrepareResult
    from sftpipe.evaluate.run import CompareResult, EvalResult
    from sftpipe.hpo import HpoResult
    from sftpipe.preflight import Check
    from sftpipe.train.loop import TrainResult


def print_prepare(result: PrepareResult) -> None:
    kept = sum(c["kept"] for c in result.per_source.values())
    rate = f" in {result.wall_s:.1f}s ({result.records_read / result.wall_s:.0f} records/s)" if result.wall_s else ""
    print(f"prepared {result.output_dir}: {result.records_read} records read, {kept} kept, "
          f"{sum(result.rejected.values())} rejected{rate}")
    for name, s in result.splits.items():
        print(f"  {name:<5} {s.examples:>6} examples  {s.tokens:>8} tokens  {s.trained_tokens:>8} trained  "
              f"{s.truncated} truncated  longest {s.max_tokens}")
    for stage, reasons in sorted(result.removed_by_stage.items()):
        for reason, count in sorted(reasons.items()):
            print(f"  rejected ({stage}) {reason}: {count}")
    if result.verification is not None:
        v = result.verification
        verdicts = ", ".join(f"{verdict} {n}" for verdict, n in v.verdicts.items()) or "none"
        print(f"  verified {v.verified} records against their own tests ({verdicts}); {v.cached} verdicts from "
              f"the cache; {v.untested} without tests ({'kept' if v.untested_policy == 'keep' else 'dropped'})")
        for name, why in v.skipped_figures.items():
            print(f"  note: {name} not measured: {why}")
    if result.mixing:
        for m in result.mixing:
            print(f"  mix {m.source}: target {m.target_share:.1%}, achieved {m.achieved_share:.1%} "
                  f"({m.available_examples} -> {m.examples} examples)")
    if result.rejected:
        print(f"  details: {result.output_dir / 'rejected.jsonl'}; summary: {result.output_dir / 'DATA_CARD.md'}")


def print_train(result: TrainResult) -> None:
    if result.resumed_from is not None:
        print(f"resumed from {result.resumed_from}")
    print(f"trained {result.steps} steps in {result.wall_s:.1f}s, {result.trainable_params:,} of "
          f"{result.total_params:,} params trainable")
    print(f"  {result.tokens_per_s:,.0f} tokens/s in training steps (validation and checkpoints not counted, "
          "as tokens_per_s in metrics.jsonl)")
    if result.packing_efficiency == result.packing_efficiency:  # not NaN
        print(f"  packing efficiency {result.packing_efficiency:.1%} (real tokens / token slots computed)")
    if result.val_before is not None:
        print(f"  val loss before {result.val_before.loss:.4f} (ppl {result.val_before.perplexity:.2f})")
    if result.val is not None:
        print(f"  val loss after  {result.val.loss:.4f} (ppl {result.val.perplexity:.2f}, "
              f"token acc {result.val.token_accuracy:.3f})")
    final = result.final
    if final.selected_by == "last":
        print(f"  final model: {result.final_dir} (the last step's weights, step {final.step})")
    else:
        print(f"  final model: {result.final_dir} (the checkpoint with the best {final.selected_by}: step "
              f"{final.step}, {final.selected_by} {final.value:.4f})")
    print(f"  logs: {RunDir(result.run_dir).metrics}")
    print(f"  run report: {RunDir(result.run_dir).report}")


def print_eval(result: EvalResult, show_skip: bool = True) -> None:
    """The eval figures; `show_skip=False` leaves out why execution was skipped (said once elsewhere)."""
    m = result.metrics
    if m is not None:
        print(f"eval {result.model} on {result.split} ({m.examples} examples, {m.tokens} tokens): loss {m.loss:.4f}, "
              f"ppl {m.perplexity:.2f}, token acc {m.token_accuracy:.3f}, sequence acc {m.sequence_accuracy:.3f}")
    else:
        print(f"eval {result.model}")
    suite = result.suite
    if suite is not None and suite.generation is not None:
        g = suite.generation
        print(f"  generation: {g.count} samples in {suite.generate_s:.1f}s, length mean {g.length_mean:.1f} tokens, "
              f"{g.ended_with_eos:.0%} ended with the end token, distinct-2 {g.distinct_2:.3f}, "
              f"repetition {g.repetition_rate:.3f}")
    if suite is not None and suite.code is not None:
        c = suite.code
        if c.problems:
            passk = ", ".join(f"{k} {v:.3f}" for k, v in c.pass_at_k.items())
            verdicts = ", ".join(f"{k} {v}" for k, v in c.verdicts.items() if v)
            print(f"  execution: {c.problems} problems, {c.samples} samples ({c.profile} profile, {c.sandbox} sandbox, "
                  f"{c.executed} run + {c.cached} cached, {c.exec_wall_s:.1f}s): {passk}; {verdicts}")
        if c.skipped and show_skip:
            print(f"  execution skipped: {c.skipped}")
    scored = result.settings.get("completions")
    if scored:
        print(f"  completions: {scored['records']} records, {scored['samples']} samples scored, {scored['empty']} empty, "
              f"{len(scored['unknown_ids'])} naming no problem, {len(scored['problems_without_completions'])} problems "
              "without completions")
    print(f"  metrics: {result.output_dir / 'metrics.json'}")
    if (result.output_dir / "report.html").is_file():
        print(f"  report: {result.output_dir / 'report.html'}")


def print_compare(result: CompareResult) -> None:
    for label, r in (("base", result.base), ("run", result.run)):
        print(f"[{label}]", end=" ")
        print_eval(r)
    print(f"side by side: {result.output_dir / 'report.html'}")


def print_checks(checks: list[Check]) -> None:
    from sftpipe.preflight import summary

    for check in checks:
        print(check.line())
    print(summary(checks))


def print_hpo(result: HpoResult, top: int = 10) -> None:
    counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(result.counts.items())) or "no trials"
    print(f"study '{result.study_name}' ({result.storage}): {counts}; this worker ran {result.trials_run} trial(s) "
          f"in {result.wall_s:.1f}s")
    keys = sorted({k for row in result.rows for k in row.params})
    print(f"  {'#':>4}  {'state':<8}  {result.objective:>12}  " + "  ".join(f"{k:>12}" for k in keys) + "  note")
    for row in result.rows[:top]:
        value = "" if row.value is None else f"{row.value:.6g}"
        params = "  ".join(f"{_short(row.params.get(k, '')):>12}" for k in keys)
        print(f"  {row.number:>4}  {row.state:<8}  {value:>12}  {params}  {row.note[:80]}")
    if len(result.rows) > top:
        print(f"  ... {len(result.rows) - top} more")
    for path in result.files:
        print(f"  wrote {path}")
    if result.best is not None:
        best = result.best
        print(f"best: trial {best.number}, {result.objective} {best.value:.6g}, run dir {best.run_dir}")


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
