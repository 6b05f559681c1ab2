"""``--engine ray``: evaluation, tuning and calibration statistics on a local Ray give exactly the
single-process numbers; workers' data errors come back as themselves; without Ray, one error
names the extra."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from icsnn_onnx import convert, load_dataset
from icsnn_onnx.calibration.statistics import activation_thresholds
from icsnn_onnx.data import Dataset
from icsnn_onnx.errors import DataError, OptionError
from icsnn_onnx.runtime import Session, evaluate
from icsnn_onnx.runtime.engine import RayEngine, plan, ray_module
from icsnn_onnx.runtime.scoring import score
from icsnn_onnx.tuning import tune

ray = pytest.importorskip("ray")

DIGITS = Path(__file__).resolve().parents[1] / "examples" / "digits"
ANN = DIGITS / "digits_cnn.onnx"
ENGINE = RayEngine(workers=2)


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_evaluation_equals_one_process(tmp_path: Path, example_snn: bytes, example_test_set: tuple) -> None:
    x, y = example_test_set
    folder = tmp_path / "shards"
    folder.mkdir()
    for i, start in enumerate(range(0, len(x), 150)):  # 4 shards, the last one short
        np.savez(folder / f"part-{i}.npz", x=x[start : start + 150], y=y[start : start + 150])
    session, ann = Session(example_snn, provider="cpu"), Session(ANN, provider="cpu")
    data = load_dataset(folder, session.inputs)
    local, reference = evaluate(session, data), evaluate(ann, data)
    got = score({"snn": example_snn, "ann": ANN}, data, ENGINE, reference="ann")
    assert got.samples == local.samples == len(x)
    assert got.accuracy == {"snn": local.accuracy, "ann": reference.accuracy}
    assert got.per_step_accuracy["snn"] == local.per_step_accuracy
    assert got.agreement["snn"] == local.agreement(reference)
    # in memory (chunks put in the object store) and from a DataLoader: the same numbers
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=100
    )
    for source in ({"x": x, "y": y}, loader):
        again = score(
            {"snn": example_snn, "ann": ANN}, load_dataset(source, session.inputs), ENGINE, reference="ann"
        )
        assert again == got


def test_an_unlabelled_npy_is_read_by_the_workers_in_row_ranges(
    tmp_path: Path, example_snn: bytes, example_test_set: tuple
) -> None:
    x, _ = example_test_set
    np.save(tmp_path / "x.npy", x)
    session, ann = Session(example_snn, provider="cpu"), Session(ANN, provider="cpu")
    data = load_dataset(tmp_path / "x.npy", session.inputs)
    chunks, refs = plan(data, batch_size=16)  # 256 rows a chunk
    assert not refs and [(c["start"], c["stop"]) for c in chunks] == [(0, 256), (256, 512), (512, 540)]
    got = score({"snn": example_snn, "ann": ANN}, data, ENGINE, reference="ann", batch_size=16)
    assert got.accuracy == {"snn": None, "ann": None}
    assert got.agreement["snn"] == evaluate(session, data).agreement(evaluate(ann, data))


@pytest.mark.parametrize(
    ("percentile", "levels", "channel_wise"),
    [(None, None, False), (99.9, None, True), (None, 4, True), (None, 8, False)],
)
def test_threshold_statistics_equal_one_process(tmp_path: Path, percentile, levels, channel_wise) -> None:
    import onnx

    with np.load(DIGITS / "calib.npz") as f:
        cx = f["x"]
    for i, start in enumerate(range(0, len(cx), 97)):
        np.save(tmp_path / f"c{i}.npy", cx[start : start + 97])
    model = onnx.load(ANN)
    tensors = [n.input[0] for n in model.graph.node if n.op_type == "Relu"]
    data = load_dataset(tmp_path, Session(ANN, provider="cpu").inputs)
    kwargs = {"percentile": percentile, "levels": levels, "channel_wise": channel_wise, "batch_size": 32}
    local = activation_thresholds(model, tensors, data, **kwargs)
    distributed = activation_thresholds(model, tensors, data, engine=ENGINE, **kwargs)
    assert local.keys() == distributed.keys()
    for name in tensors:
        np.testing.assert_array_equal(distributed[name], local[name])


def test_conversion_with_ray_statistics_writes_the_same_snn(example_snn: bytes) -> None:
    got = convert(ANN, DIGITS / "calib.npz", T=4, per_step=True, engine=ENGINE)
    assert got.SerializeToString() == example_snn


def test_tune_equals_one_process_on_every_T_both_tried() -> None:
    local = tune(ANN, DIGITS / "calib.npz", DIGITS / "test.npz", max_T=8, max_drop=0.5)
    distributed = tune(ANN, DIGITS / "calib.npz", DIGITS / "test.npz", max_T=8, max_drop=0.5, engine=ENGINE)
    assert distributed.ann_accuracy == local.ann_accuracy
    assert distributed.chosen_T == local.chosen_T
    assert sorted(distributed.accuracy_by_T) == [1, 2, 4, 8]  # every candidate, in parallel
    assert all(distributed.accuracy_by_T[t] == a for t, a in local.accuracy_by_T.items())
    # per-step tuning (T-independent θ and v(0)): one conversion, every T from its per-step outputs
    options = {"init": "half", "threshold": "p99.9"}
    local = tune(ANN, DIGITS / "calib.npz", DIGITS / "test.npz", max_T=8, **options)
    distributed = tune(ANN, DIGITS / "calib.npz", DIGITS / "test.npz", max_T=8, engine=ENGINE, **options)
    assert distributed == local


def test_a_workers_data_error_comes_back_as_itself(tmp_path: Path, example_test_set: tuple) -> None:
    x, _ = example_test_set
    bad = x[:300].copy()
    bad[217, 0, 1, 1] = np.nan
    np.save(tmp_path / "x.npy", bad)
    # load_dataset would refuse the file as it opens it: the workers get it unchecked, as a
    # file changed after it was opened would reach them
    mapped = Dataset({"image": np.load(tmp_path / "x.npy", mmap_mode="r")})
    with pytest.raises(
        DataError,
        match=r"x\.npy, rows 128…255: input 'image' contains 1 NaN/Inf value\(s\) \(the first in row 89\)",
    ):
        score({"ann": ANN}, mapped, ENGINE, batch_size=8)


def test_without_ray_one_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    with pytest.raises(OptionError, match=r'pip install "icsnn-onnx\[ray\]"'):
        ray_module()


def test_a_gpu_request_the_cluster_cannot_meet_is_refused_not_waited_for(example_test_set: tuple) -> None:
    x, y = example_test_set
    with pytest.raises(OptionError, match=r"--gpus-per-worker 1: the Ray cluster has 0 GPU"):
        score({"ann": ANN}, Dataset({"image": x}, y), RayEngine(gpus_per_worker=1))


def test_engine_options_are_checked() -> None:
    with pytest.raises(ValueError, match="workers"):
        RayEngine(workers=0)
    with pytest.raises(ValueError, match="gpus_per_worker"):
        RayEngine(gpus_per_worker=float("nan"))
    assert RayEngine(gpus_per_worker=1).provider == "cuda"


def test_the_cli_prints_the_same_numbers(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "icsnn_onnx", "eval", str(ANN), "--data", str(DIGITS / "test.npz")]
    local = subprocess.run(cli, capture_output=True, text=True, check=True)
    distributed = subprocess.run(
        [*cli, "--engine", "ray", "--workers", "2"], capture_output=True, text=True, check=True
    )
    assert local.stdout.splitlines()[1:] == distributed.stdout.splitlines()[1:]
    assert distributed.stdout.startswith("540 samples, Ray workers on CPU")
    assert distributed.stderr == ""  # Ray's own messages go to the log
    wrong = subprocess.run([*cli, "--workers", "2"], capture_output=True, text=True)
    assert wrong.returncode == 2 and "--workers only apply with --engine ray" in wrong.stderr
