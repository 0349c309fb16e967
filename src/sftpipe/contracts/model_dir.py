"""sftpipe.json: the info file beside every model sftpipe writes (final/, each checkpoint, a merged model).

It says how the model was trained (method, base model, template, tokenizer hash) so a reader of the dir
alone knows what it holds; a merge copies it and adds what was merged, and how exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import model_serializer

from sftpipe.contracts.files import FORMAT_VERSION, Record, read_record, write_record

INFO = "sftpipe.json"


class FinalInfo(Record):
    """sftpipe.json of final/ and of each checkpoint."""

    format_version: int = FORMAT_VERSION
    sftpipe_version: str
    method: str  # train.method
    base_model: str  # model.name_or_path
    template: str  # data.template (the tokenizer saved beside carries its text)
    tokenizer_sha256: str
    # model.quantization of a QLoRA run (the base the adapter was trained on); left out of the file otherwise
    quantization: dict[str, Any] | None = None

    @model_serializer(mode="wrap")
    def _leave_out_absent(self, handler: Any) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if k != "quantization" or v is not None}


class MergedInfo(Record):
    """sftpipe.json of a merged model: the adapter's own info (absent when it had none) and the merge's."""

    format_version: int = FORMAT_VERSION
    sftpipe_version: str | None = None
    method: str | None = None
    base_model: str | None = None
    template: str | None = None
    tokenizer_sha256: str | None = None
    quantization: dict[str, Any] | None = None  # of a QLoRA adapter: the base it was merged into was dequantized
    merged_from: str
    max_abs_logit_diff: float  # between the merged and the adapter model's logits on a sample batch
    dtype: str  # export.dtype

    @classmethod
    def of(cls, adapter: FinalInfo | None, *, merged_from: str, max_abs_logit_diff: float, dtype: str) -> MergedInfo:
        trained = {} if adapter is None else adapter.model_dump(exclude={"format_version"})
        return cls(**trained, merged_from=merged_from, max_abs_logit_diff=max_abs_logit_diff, dtype=dtype)

    @model_serializer(mode="wrap")
    def _leave_out_absent(self, handler: Any) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


def read_final_info(model_dir: Path) -> FinalInfo | None:
    """The sftpipe.json of a model dir sftpipe trained; None when there is none (a model from elsewhere).

    Raises:
        SftpipeError: it is there but unreadable, of a newer format_version, or not a training info file.
    """
    path = model_dir / INFO
    if not path.is_file():
        return None
    return read_record(path, FinalInfo, "an sftpipe model info file", "train the model again")


def write_info(model_dir: Path, info: FinalInfo | MergedInfo) -> None:
    write_record(model_dir / INFO, info)
