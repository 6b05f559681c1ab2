"""Data in memory or memory-mapped: :class:`Dataset` (inputs and labels) and its batches.

An ``.npy`` stays memory-mapped and each batch is unmapped once read (:func:`release`), so a pass
over a file larger than memory stays bounded.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from icsnn_onnx.errors import DataError


@dataclass(frozen=True)
class Dataset:
    """Model inputs (same number of samples each) and optional integer labels."""

    inputs: Mapping[str, np.ndarray]
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not self.inputs:
            raise DataError("dataset has no inputs")
        sizes = {name: len(a) for name, a in self.inputs.items()}
        if len(set(sizes.values())) != 1:
            raise DataError(f"inputs have different numbers of samples: {sizes}")
        if len(self) == 0:
            raise DataError("dataset is empty")
        if self.labels is not None and (self.labels.ndim != 1 or len(self.labels) != len(self)):
            raise DataError(
                f"labels must be a 1-D array of {len(self)} entries, got shape {self.labels.shape}"
            )

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def head(self, n: int | None) -> Dataset:
        if n is None or n >= len(self):
            return self
        labels = None if self.labels is None else self.labels[:n]
        return Dataset({k: v[:n] for k, v in self.inputs.items()}, labels)

    @property
    def size(self) -> int:
        """Samples (a :class:`~icsnn_onnx.data.streams.Stream` may not know its own)."""
        return len(self)

    def reusable(self) -> Dataset:
        """Data that can be read more than once: this (a stream may need reading into memory)."""
        return self

    def batches(self, size: int) -> Iterator[dict[str, np.ndarray]]:
        for batch in self.labelled_batches(size):
            yield batch.inputs

    def labelled_batches(self, size: int) -> Iterator[Batch]:
        for start in range(0, len(self), size):
            labels = None if self.labels is None else self.labels[start : start + size]
            yield Batch({k: v[start : start + size] for k, v in self.inputs.items()}, labels)
            for values in self.inputs.values():
                release(values, start, start + size)


@dataclass(frozen=True)
class Batch:
    """One batch of inputs and, where the data has them, its labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))


def release(array: np.ndarray, start: int, stop: int) -> None:
    """Unmap rows ``start:stop`` of a memory-mapped array once read (their whole pages): the
    kernel would otherwise keep every page read mapped into the process, so a pass over a
    file larger than memory would show as that much resident memory. They stay in the page
    cache and map back in if read again. A no-op for other arrays."""
    mapping = getattr(array, "_mmap", None)
    if not isinstance(array, np.memmap) or not hasattr(mapping, "madvise"):  # (no madvise on Windows)
        return
    if not array.flags.c_contiguous or len(array) == 0:
        return
    row = array[:1].nbytes
    base = array.ctypes.data - _address(mapping)  # where the array starts inside the mapping
    first = base + start * row
    last = base + min(stop, len(array)) * row
    page = mmap.PAGESIZE
    first, last = -(-first // page) * page, last // page * page  # whole pages only
    if last > first:
        mapping.madvise(mmap.MADV_DONTNEED, first, last - first)


def _address(mapping: mmap.mmap) -> int:
    """Where a (read-only) mapping starts in memory."""
    return int(np.frombuffer(mapping, np.uint8, count=1).ctypes.data)
