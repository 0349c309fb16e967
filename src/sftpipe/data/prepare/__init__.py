"""The `prepare` stage: sources -> filtered, split, deduplicated, decontaminated, mixed, tokenized data dir.

`run(cfg)` (`pipeline.py`) runs these stages in order:

1. scan (`scan.py`): read the sources as a stream; on all cores convert, filter, tokenize with masks and
   fingerprint each record (`fingerprint.py`); examples go to Arrow chunk files, per-example figures to arrays.
   Records of sources with `verify: tests` are first run against their own tests (`verify.py`, with eval's
   executor; code-quality figures in `quality.py`).
2. split (`split.py`): a content-keyed deterministic split with exact ratios, before dedup.
3. dedup (`dedup.py`): exact and near duplicates, test first, then val, then train, so a near duplicate of
   a test example is removed from train, never kept on both sides.
4. decontam (`decontam.py`): n-gram overlap of train with eval sets (and, if asked, with val/test).
5. mix (`sftpipe.data.mixing.plan_mix`, shared with train-time mixing of data dirs): weighted up/down-sampling
   of sources in train, if weights are set.
6. write (`write.py`, with `shards.py` for the split dirs, `manifest.py` for the typed manifest of
   `contracts.data_dir` and `card.py` for DATA_CARD.md): sharded split dirs, manifest.json, DATA_CARD.md,
   rejected.jsonl.

Alongside them: `ledger.py` counts and writes every rejection, `spill.py` keeps per-example side data on disk,
and `results.py` holds the figures the stages hand on and `run` returns (it imports none of the stages).

Every record read is accounted for: it ends up in a split or in `rejected.jsonl` with a reason, and the
counts per reason are in the manifest, the data card and the CLI output. A run that keeps nothing, or leaves
the train split empty where the split asks for one, is an error, not a data dir: its reports are kept in
`<output_dir>.failed/` for the user to read. Memory does not grow with the input but for a few dozen bytes
of figures per example and the dedup indexes, which hold only duplicate candidates (see `dedup.py`).
"""

from sftpipe.data.prepare.pipeline import run
from sftpipe.data.prepare.results import PrepareResult

__all__ = ["PrepareResult", "run"]
