"""Data read a part at a time: shard folders and globs, iterables of batches (a DataLoader), each
part validated with its shard or batch named; results equal to the same data in one file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from icsnn_onnx import convert
from icsnn_onnx.data import Dataset, InputSpec, Stream, load_dataset
from icsnn_onnx.errors import CalibrationError, DataError
from icsnn_onnx.runtime import Session, evaluate
from icsnn_onnx.tuning import tune

DIGITS = Path(__file__).resolve().parents[1] / "examples" / "digits"
SPECS = [InputSpec("image", np.dtype(np.float32), ("N", 1, 8, 8))]


def shard(folder: Path, x: np.ndarray, y: np.ndarray | None, sizes: list[int], npy: bool = False) -> None:
    """``x`` cut into shards of ``sizes`` named part-0 … part-N (numbers past 9 test the order)."""
    folder.mkdir(exist_ok=True)
    start = 0
    for i, n in enumerate(sizes):
        if npy:
            np.save(folder / f"part-{i}.npy", x[start : start + n])
        else:
            np.savez(
                folder / f"part-{i}.npz",
                x=x[start : start + n],
                **({} if y is None else {"y": y[start : start + n]}),
            )
        start += n


def test_shards_give_what_one_file_gives(tmp_path: Path, example_snn: bytes, example_test_set: tuple) -> None:
    x, y = example_test_set
    sizes = [37] * 12 + [len(x) - 37 * 12]  # 13 shards: part-10 … part-12 sort after part-9
    shard(tmp_path / "shards", x, y, sizes)
    session = Session(example_snn, provider="cpu")
    whole = evaluate(session, load_dataset(DIGITS / "test.npz", session.inputs), batch_size=64)
    for source in (tmp_path / "shards", str(tmp_path / "shards" / "part-*.npz")):
        data = load_dataset(source, session.inputs)
        assert isinstance(data, Stream) and data.size == len(x)
        streamed = evaluate(session, data, batch_size=64)
        assert streamed.samples == len(x)
        np.testing.assert_array_equal(streamed.predictions, whole.predictions)
        assert streamed.accuracy == whole.accuracy
        assert streamed.per_step_accuracy == whole.per_step_accuracy


def test_batches_are_cut_to_size_across_shards(tmp_path: Path, example_test_set: tuple) -> None:
    x, y = example_test_set
    shard(tmp_path, x[:100], y[:100], [30, 5, 41, 24])
    batches = list(load_dataset(tmp_path, SPECS).labelled_batches(16))
    assert [len(b) for b in batches] == [16] * 6 + [4]
    np.testing.assert_array_equal(np.concatenate([b.inputs["image"] for b in batches]), x[:100])
    np.testing.assert_array_equal(np.concatenate([b.labels for b in batches]), y[:100])


def test_npy_shards_are_memory_mapped(tmp_path: Path, example_test_set: tuple) -> None:
    x, _ = example_test_set
    shard(tmp_path, x, None, [200, 340], npy=True)
    part = next(load_dataset(tmp_path, SPECS).parts())
    assert isinstance(part.data.inputs["image"], np.memmap)
    assert part.where.endswith("part-0.npy")


def test_a_dataloader_works_unchanged(example_snn: bytes, example_test_set: tuple) -> None:
    x, y = example_test_set
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=50
    )
    session = Session(example_snn, provider="cpu")
    data = load_dataset(loader, session.inputs)
    assert data.size == len(x)  # from the loader's dataset, before reading
    got = evaluate(session, data, batch_size=64)
    want = evaluate(session, Dataset({"image": x}, y), batch_size=64)
    np.testing.assert_array_equal(got.predictions, want.predictions)
    assert got.accuracy == want.accuracy and got.per_step_accuracy == want.per_step_accuracy
    # read again: a DataLoader is re-iterable
    assert evaluate(session, data).accuracy == want.accuracy


def test_batches_as_dicts_pairs_and_arrays(example_test_set: tuple) -> None:
    x, y = example_test_set
    forms = [
        [{"x": x[:10], "y": y[:10]}, {"x": x[10:20], "y": y[10:20]}],
        [(x[:10], y[:10]), [x[10:20], y[10:20]]],
        [{"image": x[:10]}, x[10:20]],
    ]
    for batches in forms:
        data = load_dataset(batches, SPECS)
        joined = list(data.labelled_batches(20))
        assert len(joined) == 1 and len(joined[0]) == 20
        np.testing.assert_array_equal(joined[0].inputs["image"], x[:20])
    assert joined[0].labels is None


def test_a_tensor_is_one_array_not_an_iterable_of_rows(example_test_set: tuple) -> None:
    data = load_dataset(torch.from_numpy(example_test_set[0][:7]), SPECS)
    assert isinstance(data, Dataset) and len(data) == 7


def test_errors_name_the_shard_and_row(tmp_path: Path, example_test_set: tuple) -> None:
    x, y = example_test_set
    bad = x[:90].copy()
    bad[47, 0, 3, 3] = np.inf  # row 17 of the second shard
    shard(tmp_path, bad, y[:90], [30, 30, 30])
    with pytest.raises(
        DataError,
        match=r"shard .*part-1\.npz: input 'image' contains 1 NaN/Inf value\(s\) \(the first in row 17\)",
    ):
        list(load_dataset(tmp_path, SPECS, what="eval data").batches(8))


def test_errors_name_the_batch(example_test_set: tuple) -> None:
    x, y = example_test_set
    with pytest.raises(DataError, match=r"batch 2 \(samples from 20\): input 'image' expects shape"):
        list(load_dataset([x[:10], x[10:20], x[20:30, :, :4]], SPECS).batches(64))
    with pytest.raises(DataError, match=r"batch 1 .*: labels 'y' must be integers"):
        list(load_dataset([(x[:5], y[:5]), (x[5:10], y[5:10] + 0.5)], SPECS).batches(64))
    with pytest.raises(DataError, match=r"batch 1 .* has no labels 'y', the parts before it had"):
        list(load_dataset([(x[:5], y[:5]), x[5:10]], SPECS).batches(64))
    with pytest.raises(
        DataError, match=r"batch 0 .*: a batch is an array, a dict or an \(x, y\) pair, not str"
    ):
        list(load_dataset(["x"], SPECS).batches(64))


def test_shard_folder_errors(tmp_path: Path, example_test_set: tuple) -> None:
    with pytest.raises(DataError, match=r"a directory without \.npz or \.npy shards"):
        load_dataset(tmp_path, SPECS)
    with pytest.raises(DataError, match="no files match"):
        load_dataset(str(tmp_path / "*.npz"), SPECS)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"not \.npz or \.npy"):
        load_dataset(str(tmp_path / "*"), SPECS)
    (tmp_path / "part-0.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match=r"part-0\.npz"):
        list(load_dataset(tmp_path, SPECS).batches(8))


def test_a_generator_is_read_once_and_tune_reads_calibration_once(example_test_set: tuple) -> None:
    x, y = example_test_set
    gen = (b for b in [(x[:200], y[:200]), (x[200:], y[200:])])
    data = load_dataset(gen, SPECS)
    assert data.size is None
    assert sum(len(b) for b in data.labelled_batches(64)) == len(x)
    with pytest.raises(DataError, match="one-shot iterator"):
        list(data.batches(64))
    with np.load(DIGITS / "calib.npz") as f:
        cx = f["x"]
    # A conversion reads calibration data more than once, tune converts once per T: a one-shot
    # iterator is read into memory once, and gives what the same data in one array gives.
    calib = (cx[i : i + 100] for i in range(0, len(cx), 100))
    got = tune(DIGITS / "digits_cnn.onnx", calib, DIGITS / "test.npz", max_T=4, max_drop=0)
    want = tune(DIGITS / "digits_cnn.onnx", cx, DIGITS / "test.npz", max_T=4, max_drop=0)
    assert got == want


def test_calibrating_on_shards_writes_the_same_snn(tmp_path: Path) -> None:
    with np.load(DIGITS / "calib.npz") as f:
        cx = f["x"]
    shard(tmp_path, cx, None, [100, 100, len(cx) - 200], npy=True)
    for init in ("half", "calibrated"):
        whole = convert(DIGITS / "digits_cnn.onnx", DIGITS / "calib.npz", T=4, init=init)
        sharded = convert(DIGITS / "digits_cnn.onnx", tmp_path, T=4, init=init)
        assert sharded.SerializeToString() == whole.SerializeToString()
    with pytest.raises(CalibrationError, match=r"calibration data: .*part-2"):
        bad = cx[200:].copy()
        bad[0] = np.nan
        np.save(tmp_path / "part-2.npy", bad)
        convert(DIGITS / "digits_cnn.onnx", tmp_path, T=4)


def test_head_takes_the_first_samples_across_shards(tmp_path: Path, example_test_set: tuple) -> None:
    x, y = example_test_set
    shard(tmp_path, x[:100], y[:100], [30, 30, 40])
    head = load_dataset(tmp_path, SPECS).head(45)
    assert isinstance(head, Dataset) and len(head) == 45
    np.testing.assert_array_equal(head.inputs["image"], x[:45])
    np.testing.assert_array_equal(head.labels, y[:45])


def test_the_cli_reads_a_shard_folder_and_names_the_bad_shard(
    tmp_path: Path, example_test_set: tuple
) -> None:
    x, y = example_test_set
    shard(tmp_path / "test", x, y, [270, 270])
    cli = [sys.executable, "-m", "icsnn_onnx"]
    out = subprocess.run(
        [*cli, "eval", str(DIGITS / "digits_cnn.onnx"), "--data", str(tmp_path / "test")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "540 samples" in out and "99.63%" in out
    bad = x[270:].copy()
    bad[5] = np.nan
    np.savez(tmp_path / "test" / "part-1.npz", x=bad, y=y[270:])
    run = subprocess.run(
        [*cli, "eval", str(DIGITS / "digits_cnn.onnx"), "--data", str(tmp_path / "test" / "*.npz")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "part-1.npz" in run.stderr and "row 5" in run.stderr


def test_one_shard_in_memory_at_a_time(
    tmp_path: Path, example_snn: bytes, example_test_set: tuple, monkeypatch
) -> None:
    """An .npz shard is read whole: the one before it must be gone by then, even while the
    caller still holds the last batch cut from it (8 GiB of shards would otherwise cost two
    shards of memory, as they did)."""
    import weakref

    from icsnn_onnx.data import streams

    x, y = example_test_set
    shard(tmp_path, x, y, [100, 150, 90, 200])
    alive_at_read: list[bool] = []
    previous: list[weakref.ref] = []
    read = streams.read_file

    def watched(path, specs):
        alive_at_read.append(bool(previous) and previous[-1]() is not None)
        raw, labels = read(path, specs)
        array = raw["image"]
        previous.append(weakref.ref(array.base if array.base is not None else array))
        return raw, labels

    monkeypatch.setattr(streams, "read_file", watched)
    session = Session(example_snn, provider="cpu")
    evaluate(session, load_dataset(tmp_path, session.inputs), batch_size=64)
    assert alive_at_read == [False, False, False, False]
