"""Calibration/evaluation data loading and validation."""

from __future__ import annotations

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
