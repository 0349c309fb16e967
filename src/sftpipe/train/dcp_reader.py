"""Read a torch.distributed.checkpoint (DCP) directory without unpickling arbitrary objects.

DCP's `FileSystemReader` loads a checkpoint's `.metadata` with `pickle.load`, so a planted `.metadata` would
run code on every process that resumes from it; the digests of the COMPLETE marker do not help against a
checkpoint dir crafted whole. `SafeFileSystemReader` unpickles `.metadata` with an allow-list instead: DCP's
own metadata records and the plain torch values they hold (sizes, dtypes, layouts), nothing that can call
into the rest of Python. The shards themselves are read by DCP with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

_DCP_METADATA = "torch.distributed.checkpoint.metadata"
# (module, name) that DCP's metadata pickles hold (seen with torch 2.13), each a record, an enum or a pure
# constructor: calling any of them with any arguments builds a value and does nothing else.
ALLOWED_GLOBALS = frozenset({
    *((_DCP_METADATA, name) for name in ("Metadata", "MetadataIndex", "StorageMeta", "TensorProperties",
                                         "TensorStorageMetadata", "ChunkStorageMetadata", "BytesStorageMetadata",
                                         "_MEM_FORMAT_ENCODING")),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
    ("collections", "OrderedDict"),
})
METADATA_FILE = ".metadata"


class MetadataUnpickler(pickle.Unpickler):
    """An unpickler that resolves only `ALLOWED_GLOBALS` and torch dtypes."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS or (module == "torch" and isinstance(getattr(torch, name, None),
                                                                                  torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a checkpoint's {METADATA_FILE}")


class SafeFileSystemReader(FileSystemReader):
    """DCP's file reader with `.metadata` read by `MetadataUnpickler` (see the module docstring)."""

    def __init__(self, path: str | Path):
        super().__init__(path)
        self.root = Path(path)

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        rank = kwargs.get("rank")  # DCP falls back to a rank's own metadata file, named as FileSystemReader does
        path = self.root / (METADATA_FILE if rank is None else f"__{rank}{METADATA_FILE}")
        with path.open("rb") as fh:
            metadata = MetadataUnpickler(fh).load()
        if not isinstance(metadata, Metadata):
            raise pickle.UnpicklingError(f"{path} holds a {type(metadata).__name__}, not DCP metadata")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata
