"""Rows of example indices -> model inputs: the one padded collator (training, validation and eval), packed
rows and flat (padding-free) rows, all reading tokens from a `TokenStore`.

Padding is masked by position, never by token id (the pad id may equal eos). With `real` False (a stand-in
micro-batch of a rank that ran out of data) every label is ignored: the rank takes part in the collective
steps and trains nothing.
"""

from __future__ import annotations

import bisect
from typing import NamedTuple

import datasets
import numpy as np
import torch

from sftpipe.errors import SftpipeError
from sftpipe.data.records import IGNORE_INDEX


class TokenStore:
    """`input_ids` and `labels` of a split, read in place from its memory-mapped Arrow record batches.

    Slicing these is what collation does for every micro-batch; going through `Dataset.select` instead
    costs more than a forward pass of a small model. The token arrays are zero-copy views of the mapped
    files (only the per-example lengths are held in memory), so the process's own memory does not grow with
    the data: the kernel pages tokens in as batches read them and may drop them again.
    """

    def __init__(self, dataset: datasets.Dataset):
        table = dataset.with_format("arrow")[:].select(["input_ids", "labels"])
        self._ids: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._offsets: list[tuple[np.ndarray, np.ndarray]] = []
        self._starts: list[int] = []  # index of each record batch's first example
        lengths, at = [], 0
        for batch in table.to_batches():
            ids, labels = batch.column(0), batch.column(1)
            id_offsets, label_offsets = ids.offsets.to_numpy(), labels.offsets.to_numpy()
            if not np.array_equal(np.diff(id_offsets), np.diff(label_offsets)):
                raise SftpipeError("data dir: input_ids and labels differ in length for some example; re-run prepare")
            # `values` ignores a sliced array's offset and `offsets` index into it: the pair stays consistent
            self._ids.append(ids.values.to_numpy(zero_copy_only=False))
            self._labels.append(labels.values.to_numpy(zero_copy_only=False))
            self._offsets.append((id_offsets, label_offsets))
            self._starts.append(at)
            lengths.append(np.diff(id_offsets).astype(np.int64))
            at += len(batch)
        self.lengths = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.lengths)

    def example(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and labels of example `index` (views, not copies)."""
        chunk = bisect.bisect_right(self._starts, index) - 1
        local = index - self._starts[chunk]
        id_offsets, label_offsets = self._offsets[chunk]
        return (self._ids[chunk][id_offsets[local] : id_offsets[local + 1]],
                self._labels[chunk][label_offsets[local] : label_offsets[local + 1]])

    def trained_lengths(self) -> np.ndarray:
        """Supervised tokens (labels that are not ignored) of every example, one record batch at a time."""
        counts = []
        for labels, (_, offsets) in zip(self._labels, self._offsets):
            supervised = np.concatenate([[0], np.cumsum(labels[offsets[0] : offsets[-1]] != IGNORE_INDEX)])
            counts.append(supervised[offsets[1:] - offsets[0]] - supervised[offsets[:-1] - offsets[0]])
        return np.concatenate(counts).astype(np.int64) if counts else np.zeros(0, dtype=np.int64)


class MicroBatch(NamedTuple):
    """Model inputs of one micro-batch plus the figures the loop logs."""

    inputs: dict[str, torch.Tensor]
    real_tokens: int  # tokens that are not padding
    slots: int  # token positions computed (real + padding)
    real: bool


def collate_padded(store: TokenStore, rows: list[list[int]], pad_id: int, real: bool = True) -> MicroBatch:
    """One example per row (`row[0]`), right-padded to the longest, with an `attention_mask`."""
    examples = [store.example(row[0]) for row in rows]
    width = max(len(ids) for ids, _ in examples)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    labels = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, (ids, lab) in enumerate(examples):
        input_ids[i, : len(ids)] = ids
        attention_mask[i, : len(ids)] = 1
        if real:
            labels[i, : len(ids)] = lab
    inputs = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
    return MicroBatch({k: torch.from_numpy(v) for k, v in inputs.items()}, int(attention_mask.sum()),
                      input_ids.size, real)


def collate_packed(store: TokenStore, rows: list[list[int]], pad_id: int, real: bool = True) -> MicroBatch:
    """Packed rows padded to the longest row; `position_ids` restart at 0 for every example.

    The first label of every example is ignored: unpacked, nothing predicts it (there is no token before);
    packed, the previous example's last token would. Row padding forms one more segment of its own
    (positions from 0 again, labels ignored), so no real token attends to it.
    """
    used = [sum(int(store.lengths[i]) for i in row) for row in rows]
    width = max(used)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    labels = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
    position_ids = np.zeros((len(rows), width), dtype=np.int64)
    ramp = np.arange(width)
    for r, row in enumerate(rows):
        at = 0
        for index in row:
            ids, lab = store.example(index)
            n = len(ids)
            input_ids[r, at : at + n] = ids
            position_ids[r, at : at + n] = ramp[:n]
            if real:
                labels[r, at + 1 : at + n] = lab[1:]
            at += n
        position_ids[r, at:] = ramp[: width - at]
    inputs = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
    return MicroBatch({k: torch.from_numpy(v) for k, v in inputs.items()}, sum(used), input_ids.size, real)


def collate_flat(store: TokenStore, rows: list[list[int]], pad_id: int, real: bool = True) -> MicroBatch:
    """All examples of the micro-batch in one row without padding, for varlen attention (flash, sdpa_varlen).

    Sequence boundaries are passed as `cu_seq_lens_*`/`max_length_*` so the model need not derive them
    from `position_ids` (which costs a device-to-host sync in every layer).
    """
    order = [i for row in rows for i in row]
    packed = collate_packed(store, [order], pad_id, real)
    lengths = torch.tensor([0] + [int(store.lengths[i]) for i in order])
    cu = torch.cumsum(lengths, 0, dtype=torch.int32)
    longest = int(lengths.max())
    inputs = dict(packed.inputs, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest)
    return MicroBatch(inputs, packed.real_tokens, packed.slots, real)
