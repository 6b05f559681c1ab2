"""Reading and validating data: ``.npz``/``.npy`` files (headers checked before anything is
allocated; an ``.npy`` memory-mapped), in-memory arrays and mappings, each input checked against
the model's (dtype, shape, NaN/Inf)."""

from __future__ import annotations

import math
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np

from icsnn_onnx.data.dataset import Dataset, release
from icsnn_onnx.data.specs import InputSpec
from icsnn_onnx.errors import DataError
from icsnn_onnx.limits import check_allocation
from icsnn_onnx.model_io import check_readable_file


def validated(raw: Mapping[str, np.ndarray], labels: object, specs: list[InputSpec]) -> Dataset:
    """A :class:`Dataset` of ``raw`` inputs and ``labels`` checked against ``specs``."""
    inputs = {spec.name: _validate(raw, spec) for spec in specs}
    if labels is not None:
        labels = np.asarray(labels)
        if labels.dtype.kind not in "iub":
            raise DataError(f"labels 'y' must be integers, got {labels.dtype}")
        labels = labels.astype(np.int64)
    return Dataset(inputs, labels)


def read(source: object, specs: list[InputSpec]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The inputs and labels of one source that is not a stream: a Dataset, an array, a mapping or
    a file."""
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
