"""Calibration/evaluation data loading and validation."""

from __future__ import annotations

import os

import numpy as np
import pytest

from icsnn_onnx.data import Dataset, InputSpec, load_dataset
from icsnn_onnx.errors import CalibrationError, DataError

SPEC = [InputSpec("image", np.dtype(np.float32), ("N", 1, 8, 8))]


def test_npz_with_x_and_labels(tmp_path):
    x = np.zeros((5, 1, 8, 8), np.float64)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(5))
    data = load_dataset(tmp_path / "d.npz", SPEC)
    assert len(data) == 5 and data.inputs["image"].dtype == np.float32
    assert data.labels.tolist() == [0, 1, 2, 3, 4]


def test_npz_keyed_by_input_names_for_multi_input_models(tmp_path):
    specs = [InputSpec("a", np.dtype(np.float32), ("N", 3)), InputSpec("b", np.dtype(np.float32), ("N", 2))]
    np.savez(tmp_path / "d.npz", a=np.zeros((4, 3), np.float32), b=np.ones((4, 2), np.float32))
    data = load_dataset(tmp_path / "d.npz", specs)
    assert set(data.inputs) == {"a", "b"} and data.labels is None


def test_npy(tmp_path):
    np.save(tmp_path / "d.npy", np.zeros((3, 1, 8, 8), np.float32))
    assert len(load_dataset(tmp_path / "d.npy", SPEC)) == 3


@pytest.mark.parametrize(
    "array,message",
    [
        (np.zeros((5, 1, 9, 8), np.float32), "expects shape"),
        (np.zeros((5, 64), np.float32), "expects shape"),
        (np.zeros((5, 1, 8, 8), np.uint8), "expects float32, got uint8"),
        (np.full((5, 1, 8, 8), np.nan, np.float32), "NaN/Inf"),
        (np.full((5, 1, 8, 8), np.inf, np.float32), "NaN/Inf"),
    ],
)
def test_invalid_arrays(array, message):
    with pytest.raises(CalibrationError, match=message):
        load_dataset(array, SPEC, what="calibration data", error=CalibrationError)


def test_wrong_keys_and_unreadable_files(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(DataError, match="expected 'x'"):
        load_dataset(tmp_path / "d.npz", SPEC)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read"):
        load_dataset(tmp_path / "bad.npz", SPEC)
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "missing.npz", SPEC)


def test_labels_must_be_integers_of_matching_length(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 1, 8, 8), np.float32), y=np.zeros(3, np.float32))
    with pytest.raises(DataError, match="integers"):
        load_dataset(tmp_path / "d.npz", SPEC)
    with pytest.raises(DataError, match="1-D array of 3"):
        Dataset({"image": np.zeros((3, 1, 8, 8))}, np.zeros(2, np.int64))


def test_head_and_batches():
    data = Dataset({"image": np.arange(10).reshape(10, 1)}, np.arange(10))
    assert len(data.head(4)) == 4 and data.head(None) is data
    assert [len(b["image"]) for b in data.batches(4)] == [4, 4, 2]


def test_an_npy_is_memory_mapped_and_checked_a_chunk_at_a_time(tmp_path, monkeypatch):
    """An .npy is read batch by batch as it is used (so it may be larger than memory); the NaN/Inf
    check reads a chunk of rows at a time and names the first bad row."""
    from icsnn_onnx.data import files as data

    x = np.random.default_rng(0).random((50, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    dataset = load_dataset(tmp_path / "x.npy", SPEC)
    assert isinstance(dataset.inputs[SPEC[0].name], np.memmap)
    np.testing.assert_array_equal(next(dataset.batches(16))[SPEC[0].name], x[:16])
    x[37, 0, 3, 4] = np.nan
    x[41, 0, 0, 0] = np.inf
    np.save(tmp_path / "bad.npy", x)
    monkeypatch.setattr(data, "CHECK_BYTES", 5 * x[0].nbytes)  # ten chunks of five rows
    with pytest.raises(DataError, match=r"2 NaN/Inf value\(s\) \(the first in row 37\)"):
        load_dataset(tmp_path / "bad.npy", SPEC)


def test_a_memory_mapped_npy_of_another_dtype_is_converted_only_if_it_fits(tmp_path, monkeypatch):
    from icsnn_onnx import limits

    np.save(tmp_path / "x64.npy", np.zeros((6, 1, 8, 8), np.float64))
    assert load_dataset(tmp_path / "x64.npy", SPEC).inputs[SPEC[0].name].dtype == np.float32
    monkeypatch.setattr(limits, "available_memory", lambda: 1000)
    with pytest.raises(DataError, match="save it as float32"):
        load_dataset(tmp_path / "x64.npy", SPEC)


def test_an_npy_whose_header_promises_more_than_the_file_holds_is_refused(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((6, 1, 8, 8), np.float32))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "x.npy").read_bytes()[:-10])
    with pytest.raises(DataError, match="promises 1536 bytes of data, the file holds 1526"):
        load_dataset(tmp_path / "cut.npy", SPEC)


def _mapped_kib(path) -> int:
    """Resident KiB of this process's mappings of ``path`` (Linux /proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            if "-" in line.split(" ", 1)[0]:  # a mapping's header line
                inside = line.rstrip().endswith(str(path))
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc")
def test_batches_of_a_memory_mapped_npy_do_not_stay_resident(tmp_path):
    """A pass over a memory-mapped .npy unmaps each batch once read: the file's pages do not
    pile up in the process (a 4 GB file would otherwise show as 4 GB resident)."""
    x = np.random.default_rng(0).random((2000, 1, 8, 8)).astype(np.float32)
    x = np.repeat(x, 32, axis=0)  # 16 MiB
    np.save(tmp_path / "x.npy", x)
    dataset = load_dataset(tmp_path / "x.npy", SPEC)  # the NaN/Inf check reads it all
    total = 0.0
    for batch in dataset.batches(256):
        total += float(batch[SPEC[0].name].sum())
    assert total == pytest.approx(float(x.sum(dtype=np.float64)), rel=1e-5)
    assert _mapped_kib(tmp_path / "x.npy") < 1024  # of 16384 KiB read
