"""Calibration and evaluation data: ``.npz``/``.npy`` loading and validation against a model.

Accepted forms: an ``.npz`` with ``x`` (single-input models) or keys named after the model's
inputs, and optional integer labels ``y``; an ``.npy`` of inputs, memory-mapped (read batch by
batch as it is used, so it may be larger than memory); or the same in memory (an array, a dict of
arrays, a :class:`Dataset`).
"""

from __future__ import annotations

import math
import mmap
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import onnx

from icsnn_onnx.errors import DataError, IcsnnError
from icsnn_onnx.limits import check_allocation
from icsnn_onnx.model_io import check_readable_file

if TYPE_CHECKING:
    from icsnn_onnx.streams import Stream

Dim = int | str | None


@dataclass(frozen=True)
class InputSpec:
    """Name, dtype and shape (``int`` static, ``str``/``None`` dynamic) of a model input."""

    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...]

    def describe(self) -> str:
        dims = ", ".join("?" if not isinstance(d, int) else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"

    @property
    def static_batch(self) -> int | None:
        first = self.shape[0] if self.shape else None
        return first if isinstance(first, int) and first > 0 else None


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The inputs a caller feeds (initializers listed as inputs excluded)."""
    weights = {init.name for init in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in weights:
            continue
        tensor = value.type.tensor_type
        dims: list[Dim] = []
        for d in tensor.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        specs.append(InputSpec(value.name, dtype, tuple(dims)))
    return specs


def check_same_inputs(snn: list[InputSpec], ann: list[InputSpec], ann_name: str) -> None:
    """An ANN compared with an SNN must take the same inputs: name the first that differs."""
    if [s.name for s in snn] != [s.name for s in ann]:
        raise DataError(
            f"the ANN {ann_name} takes inputs {[s.name for s in ann]}, the SNN {[s.name for s in snn]}: "
            "give the ANN the SNN was converted from"
        )
    for a, b in zip(snn, ann, strict=True):
        static = (
            [d if isinstance(d, int) else None for d in a.shape],
            [d if isinstance(d, int) else None for d in b.shape],
        )
        if (
            a.dtype != b.dtype
            or len(a.shape) != len(b.shape)
            or any(x is not None and y is not None and x != y for x, y in zip(*static, strict=True))
        ):
            raise DataError(
                f"input {a.name!r}: the SNN takes {a.describe()}, the ANN {ann_name} {b.describe()}"
            )


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
        """Samples (a :class:`~icsnn_onnx.streams.Stream` may not know its own)."""
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


DataSource = str | Path | np.ndarray | Mapping[str, np.ndarray] | Dataset | Iterable[object]


def load_dataset(
    source: DataSource,
    specs: list[InputSpec],
    *,
    what: str = "data",
    error: type[IcsnnError] = DataError,
) -> Dataset | Stream:
    """Read and validate ``source`` for a model with inputs ``specs``; raises ``error``.

    A directory or glob of shards, or an iterable of batches, becomes a :class:`Stream`: read
    and validated one part at a time as it is used (its errors name the shard or batch)."""
    from icsnn_onnx.streams import open_stream  # streams builds on this module

    try:
        stream = open_stream(source, specs, what, error)
        if stream is not None:
            return stream
        raw, labels = _read(source, specs)
        return validated(raw, labels, specs)
    except DataError as err:
        raise error(f"{what}: {err}") from None


def validated(raw: Mapping[str, np.ndarray], labels: object, specs: list[InputSpec]) -> Dataset:
    """A :class:`Dataset` of ``raw`` inputs and ``labels`` checked against ``specs``."""
    inputs = {spec.name: _validate(raw, spec) for spec in specs}
    if labels is not None:
        labels = np.asarray(labels)
        if labels.dtype.kind not in "iub":
            raise DataError(f"labels 'y' must be integers, got {labels.dtype}")
        labels = labels.astype(np.int64)
    return Dataset(inputs, labels)


def _read(source: object, specs: list[InputSpec]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    if isinstance(source, Dataset):
        return dict(source.inputs), source.labels
    if isinstance(source, np.ndarray):
        return single_input(source, specs), None
    if isinstance(source, Mapping):
        arrays = {k: np.asarray(v) for k, v in source.items()}
        return from_keys(arrays, specs, "the mapping")
    if hasattr(source, "__array__"):  # e.g. a torch tensor: one array, not an iterable of rows
        return single_input(np.asarray(source), specs), None
    if not isinstance(source, str | Path):
        raise TypeError(
            f"data is a path, an array, a mapping, a Dataset or an iterable of batches, not {type(source).__name__}"
        )
    return read_file(Path(source), specs)


def read_file(path: Path, specs: list[InputSpec]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The inputs and labels of one ``.npz`` or ``.npy`` file (an ``.npy`` memory-mapped)."""
    check_readable_file(path, DataError)
    try:
        if _check_headers(path):  # an .npy: memory-mapped, read batch by batch as it is used
            return single_input(np.load(path, mmap_mode="r", allow_pickle=False), specs), None
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"cannot read {path}: {_first_line(err)}") from None
    except MemoryError:
        raise DataError(f"{path}: its arrays do not fit in memory") from None
    if isinstance(loaded, np.ndarray):
        return single_input(loaded, specs), None
    with loaded:
        try:
            arrays = {k: loaded[k] for k in loaded.files}
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
            raise DataError(f"cannot read {path}: {err}") from None
    return from_keys(arrays, specs, str(path))


def _check_headers(path: Path) -> bool:
    """Refuse, from the headers alone, a zip member larger than the memory available, an archive
    that would inflate beyond it, or a pickled (object) array. True for an ``.npy``, which is
    memory-mapped rather than read: its size is the disk's concern, not the memory's."""
    with path.open("rb") as f:
        if f.read(6) == b"\x93NUMPY":
            f.seek(0)
            data = _check_npy_header(f, str(path), allocate=False)
            held = path.stat().st_size - f.tell()
            if data > held:
                raise DataError(f"{path}: its header promises {data} bytes of data, the file holds {held}")
            return True
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        check_allocation(sum(m.file_size for m in members), f"{path} (uncompressed)", DataError)
        for member in members:
            if member.filename.endswith(".npy"):
                with archive.open(member) as f:
                    _check_npy_header(f, f"{path}:{member.filename}")
    return False


def _check_npy_header(f: BinaryIO, where: str, allocate: bool = True) -> int:
    """The data's size in bytes, from the header (left just after it); refuses object arrays and,
    with ``allocate``, sizes beyond the memory available."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=2**20)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(f, max_header_size=2**20)
    if dtype.hasobject:
        raise DataError(f"{where}: a pickled (object) array; only numeric arrays are read")
    size = math.prod(shape) * dtype.itemsize
    if allocate:
        check_allocation(size, f"{where} (shape {shape}, {dtype})", DataError)
    return size


def _first_line(err: Exception) -> str:
    return (str(err).strip() or type(err).__name__).splitlines()[0]


def single_input(array: np.ndarray, specs: list[InputSpec]) -> dict[str, np.ndarray]:
    """One array as the inputs of a single-input model."""
    if len(specs) != 1:
        names = [s.name for s in specs]
        raise DataError(f"the model has {len(specs)} inputs {names}; give an .npz keyed by name")
    return {specs[0].name: array}


def from_keys(
    arrays: dict[str, np.ndarray], specs: list[InputSpec], where: str
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Inputs and labels of keyed arrays (an ``.npz``, a dict batch): ``x`` for a single-input
    model or the inputs' names, labels ``y``."""
    labels = arrays.get("y")
    names = [s.name for s in specs]
    if all(n in arrays for n in names):
        return {n: arrays[n] for n in names}, labels
    if len(specs) == 1 and "x" in arrays:
        return {names[0]: arrays["x"]}, labels
    raise DataError(f"{where} has keys {sorted(arrays)}; expected 'x' or the model's inputs {names}")


def _validate(raw: dict[str, np.ndarray], spec: InputSpec) -> np.ndarray:
    array = np.asanyarray(raw[spec.name])  # a memory-mapped .npy stays mapped
    want, got = spec.dtype, array.dtype
    if want.kind == "f" and got.kind != "f":
        raise DataError(f"input '{spec.name}' expects {want}, got {got} (convert and scale it first)")
    if want.kind in "iub" and got.kind not in "iub":
        raise DataError(f"input '{spec.name}' expects {want}, got {got}")
    if array.ndim != len(spec.shape):
        raise DataError(f"input '{spec.name}' expects shape {spec.describe()}, got {array.shape}")
    for axis, (dim, size) in enumerate(zip(spec.shape, array.shape, strict=True)):
        if axis > 0 and isinstance(dim, int) and dim > 0 and dim != size:
            raise DataError(
                f"input '{spec.name}' expects shape {spec.describe()}, got {array.shape} (axis {axis})"
            )
    if isinstance(array, np.memmap) and got != want:
        # Converting reads the whole file into memory, which a mapped file is there to avoid.
        check_allocation(
            array.size * want.itemsize,
            f"input '{spec.name}' converted to {want}",
            DataError,
            hint=f"save it as {want} to read it batch by batch, memory-mapped",
        )
    array = array.astype(want, copy=False)
    if want.kind == "f":
        _check_finite(array, spec.name)
    return array


#: Bytes of data checked at a time: a memory-mapped input is never read whole.
CHECK_BYTES = 64 << 20


def _check_finite(array: np.ndarray, name: str) -> None:
    """NaN/Inf anywhere: how many, and the first row holding one, read a chunk of rows at a time."""
    rows = max(1, CHECK_BYTES // max(array[:1].nbytes, 1))
    bad, first = 0, None
    for start in range(0, len(array), rows):
        finite = np.isfinite(array[start : start + rows])
        release(array, start, start + rows)
        if not finite.all():
            bad += int(finite.size - np.count_nonzero(finite))
            if first is None:
                first = start + int(np.argmin(finite.reshape(len(finite), -1).all(axis=1)))
    if bad:
        raise DataError(f"input '{name}' contains {bad} NaN/Inf value(s) (the first in row {first})")
