"""Stage 6, with write.py: the data dir's typed manifest, what it holds and how it was made (`contracts.data_dir`)."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from sftpipe import __version__
from sftpipe.config.schema import Config
from sftpipe.contracts.data_dir import (
    DataManifest,
    LengthFigures,
    Mixing,
    Overlap,
    TemplateInfo,
    TokenizerInfo,
    tokenizer_sha256,
)
from sftpipe.redact import redact

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from sftpipe.data.prepare.ledger import Ledger
    from sftpipe.data.prepare.results import PrepareResult


def build_manifest(cfg: Config, tokenizer: PreTrainedTokenizerBase, template: str, result: PrepareResult,
                   lengths: LengthFigures, ledger: Ledger) -> DataManifest:
    """What the data dir holds and how it was made; `train` checks its tokenizer hash."""
    return DataManifest(
        sftpipe_version=__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        tokenizer=TokenizerInfo(name_or_path=cfg.model.tokenizer or cfg.model.name_or_path,
                                sha256=tokenizer_sha256(tokenizer)),
        template=TemplateInfo(name=cfg.data.template, sha256=hashlib.sha256(template.encode()).hexdigest(),
                              text=template),
        max_length=cfg.data.max_length,
        overlong=cfg.data.overlong,
        records_read=result.records_read,
        splits=result.splits,
        sources=result.per_source,
        rejected=dict(sorted(result.rejected.items())),
        removed_by_stage={stage: dict(sorted(c.items())) for stage, c in sorted(result.removed_by_stage.items())},
        rejected_by_source={name: dict(sorted(c.items())) for name, c in sorted(ledger.by_source.items())},
        overlaps=[Overlap(reason=reason, against=target, count=n)
                  for (reason, target), n in sorted(ledger.by_target.items())],
        mixing=None if result.mixing is None else Mixing(
            unit=cfg.data.mix.unit, total=sum(m.achieved for m in result.mixing), sources=result.mixing),
        lengths=lengths,
        data_config=redact(cfg.data.model_dump(mode="json")),
        verification=result.verification,
    )
