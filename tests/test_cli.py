"""The command line, end to end: success paths and every user error (exit 2, one line)."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from icsnn_onnx.cli import main
from tests import models

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits"


@pytest.fixture()
def files(tmp_path, digits):
    model = tmp_path / "cnn.onnx"
    onnx.save(models.cnn_bn(), model)
    x, y = digits
    np.savez(tmp_path / "calib.npz", x=x[:100])
    np.savez(tmp_path / "test.npz", x=x[1000:1200], y=y[1000:1200])
    return tmp_path, model


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "icsnn_onnx", *args], capture_output=True, text=True, timeout=300
    )


def _one_line_error(capsys, code: int, *fragments: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


def test_convert_eval_inspect_end_to_end(tmp_path):
    """As a user runs it: a subprocess on the shipped example."""
    out = tmp_path / "digits.snn.onnx"
    done = _cli(
        "convert",
        str(EXAMPLE / "digits_cnn.onnx"),
        "--calib",
        str(EXAMPLE / "calib.npz"),
        "-T",
        "16",
        "--per-step",
        "-o",
        str(out),
        "--quiet",
    )
    assert done.returncode == 0, done.stderr
    assert "3 neuron site(s) (3 if)" in done.stdout and out.exists()
    done = _cli(
        "eval", str(out), "--data", str(EXAMPLE / "test.npz"), "--ann", str(EXAMPLE / "digits_cnn.onnx"), "-q"
    )
    assert done.returncode == 0, done.stderr
    assert "ANN" in done.stdout and "SNN" in done.stdout and "T=16:" in done.stdout
    snn_acc = float(done.stdout.split("SNN")[1].split("accuracy ")[1].split("%")[0])
    ann_acc = float(done.stdout.split("ANN")[1].split("accuracy ")[1].split("%")[0])
    assert snn_acc >= ann_acc - 1.0
    done = _cli("inspect", str(EXAMPLE / "digits_cnn.onnx"))
    assert done.returncode == 0 and "activation sites: 3" in done.stdout and "convertible" in done.stdout


def test_method_options_reach_the_model_and_inspect_reports_maxpools(tmp_path, capsys):
    from tests.test_maxpool import maxpool_cnn

    model = tmp_path / "pool.onnx"
    onnx.save(maxpool_cnn(), model)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.random((64, 1, 8, 8), dtype=np.float32))
    out = tmp_path / "pool.snn.onnx"
    argv = ["convert", str(model), "--calib", str(tmp_path / "calib.npz"), "-T", "4", "-o", str(out), "-q"]
    extra = ["--encoding", "poisson", "--seed", "3", "--no-compensation", "--maxpool", "decompose"]
    extra += ["--threshold", "mse", "--init", "calibrated", "--levels", "2"]
    assert main([*argv, *extra]) == 0
    assert "compensation off, poisson coding" in capsys.readouterr().out
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert (meta["icsnn.encoding"], meta["icsnn.seed"], meta["icsnn.compensation"]) == (
        "poisson",
        "3",
        "False",
    )
    assert (meta["icsnn.maxpool"], meta["icsnn.threshold"], meta["icsnn.init"], meta["icsnn.levels"]) == (
        "decompose",
        "mse",
        "calibrated",
        "2",
    )
    assert main(["inspect", str(model), "--maxpool", "gate"]) == 0
    report = capsys.readouterr().out
    assert "MaxPool (gate policy between neurons)" in report and "pool" in report
    assert "spike gate" in report


def test_defaults_and_their_opposites_reach_the_model(tmp_path, capsys):
    """No method flag: Alg 2 (auto), mse, channel-wise — said on the summary line and in the
    metadata; --init half --no-channel-wise turn them off."""
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.load(EXAMPLE / "calib.npz")["x"][:64])
    out = tmp_path / "d.snn.onnx"
    argv = ["convert", str(EXAMPLE / "digits_cnn.onnx"), "--calib", str(calib), "-T", "4", "-o", str(out)]
    for extra, init, scope in (
        ([], "calibrated (auto)", "True"),
        (["--init", "half", "--no-channel-wise"], "half", "False"),
    ):
        assert main([*argv, "-q", "--force", *extra]) == 0
        line = capsys.readouterr().out
        assert f"init={init}," in line and ("(channel-wise)" in line) == (scope == "True")
        meta = {p.key: p.value for p in onnx.load(out).metadata_props}
        assert (meta["icsnn.init_method"], meta["icsnn.channel_wise"], meta["icsnn.threshold_method"]) == (
            init.split()[0],
            scope,
            "mse",
        )


def test_default_output_name_and_options(files, capsys):
    tmp, model = files
    code = main(
        [
            "convert",
            str(model),
            "--calib",
            str(tmp / "calib.npz"),
            "-T",
            "4",
            "--init",
            "zero",
            "--threshold",
            "max",
            "--channel-wise",
            "--calib-samples",
            "50",
            "-q",
        ]
    )
    assert code == 0
    meta = {p.key: p.value for p in onnx.load(tmp / "cnn.snn.onnx").metadata_props}
    assert (meta["icsnn.init"], meta["icsnn.threshold"], meta["icsnn.calib_samples"]) == ("zero", "max", "50")


def test_eval_without_labels_needs_ann(files, capsys):
    tmp, model = files
    np.save(tmp / "nolabels.npy", np.zeros((4, 1, 8, 8), np.float32))
    _one_line_error(capsys, main(["eval", str(model), "--data", str(tmp / "nolabels.npy")]), "no labels")
    assert main(["eval", str(model), "--data", str(tmp / "nolabels.npy"), "--ann", str(model), "-q"]) == 0
    assert "agreement" in capsys.readouterr().out


def test_missing_file(files, capsys):
    tmp, _ = files
    _one_line_error(capsys, main(["convert", str(tmp / "nope.onnx")]), "no such file")


def test_not_onnx(files, capsys):
    tmp, _ = files
    (tmp / "text.onnx").write_text("this is not a model\n" * 20)
    _one_line_error(capsys, main(["convert", str(tmp / "text.onnx"), "-o", str(tmp / "o.onnx")]), "text.onnx")
    assert not (tmp / "o.onnx").exists()


@pytest.mark.parametrize("command", ["eval", "bench", "inspect"])
def test_commands_that_run_a_model_report_a_missing_or_broken_one_in_one_line(files, capsys, command):
    tmp, model = files
    (tmp / "text.onnx").write_text("this is not a model\n" * 20)
    for bad, fragment in (("nope.onnx", "no such file"), ("text.onnx", "not an ONNX model")):
        args = {
            "eval": [str(tmp / bad), "--data", str(tmp / "test.npz")],
            "bench": [str(model), str(tmp / bad)],
            "inspect": [str(tmp / bad)],
        }[command]
        _one_line_error(capsys, main([command, *args, "-q"]), bad, fragment)


def test_a_model_onnx_runtime_cannot_load_is_a_user_error(files, capsys):
    tmp, _ = files
    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp / "odd.onnx"
    )
    np.savez(tmp / "one.npz", x=np.zeros((2, 1), np.float32))
    code = main(["eval", str(tmp / "odd.onnx"), "--data", str(tmp / "one.npz"), "-q"])
    _one_line_error(capsys, code, "odd.onnx", "ONNX Runtime cannot load it", "NoSuchOp")


def test_truncated_file(files, capsys):
    tmp, model = files
    data = model.read_bytes()
    (tmp / "cut.onnx").write_bytes(data[: len(data) // 2])
    _one_line_error(
        capsys, main(["convert", str(tmp / "cut.onnx"), "--calib", str(tmp / "calib.npz")]), "cut.onnx"
    )


def test_unsupported_op_exits_2_names_the_node_and_writes_nothing(files, capsys):
    tmp, _ = files
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h1"], name="conv1"),
        helper.make_node("Relu", ["h1"], ["a1"], name="relu1"),
        helper.make_node("RandomUniformLike", ["a1"], ["u"], name="the_noise"),
        helper.make_node("AveragePool", ["u"], ["p"], kernel_shape=[2, 2], name="pool"),
        helper.make_node("Conv", ["p", "w2"], ["h2"], name="conv2"),
        helper.make_node("Relu", ["h2"], ["a2"], name="relu2"),
        helper.make_node("Flatten", ["a2"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
    ]
    inits = {"w1": models._w(4, 1, 3, 3), "w2": models._w(4, 4, 3, 3), "fc": models._w(10, 16)}
    onnx.save(models.make_model(nodes, inits, ["N", 1, 8, 8], ["N", 10]), tmp / "noise.onnx")
    out = tmp / "noise.snn.onnx"
    code = main(["convert", str(tmp / "noise.onnx"), "--calib", str(tmp / "calib.npz"), "-o", str(out)])
    _one_line_error(capsys, code, "the_noise (RandomUniformLike → u): a random op")
    assert not out.exists()
    assert list(tmp.glob("*.tmp")) == []


@pytest.mark.parametrize(
    "array,fragment",
    [
        (np.zeros((10, 1, 7, 7), np.float32), "expects shape"),
        (np.zeros((10, 1, 8, 8), np.int32), "expects float32, got int32"),
        (np.full((10, 1, 8, 8), np.nan, np.float32), "NaN/Inf"),
    ],
    ids=["shape", "dtype", "nan"],
)
def test_bad_calibration_data(files, capsys, array, fragment):
    tmp, model = files
    np.savez(tmp / "bad.npz", x=array)
    out = tmp / "o.onnx"
    code = main(["convert", str(model), "--calib", str(tmp / "bad.npz"), "-o", str(out)])
    _one_line_error(capsys, code, "calibration data", fragment)
    assert not out.exists()


def test_missing_calibration(files, capsys):
    _, model = files
    _one_line_error(capsys, main(["convert", str(model)]), "need calibration data", "--calib")


def test_output_exists_without_force(files, capsys):
    tmp, model = files
    out = tmp / "exists.onnx"
    out.write_text("old")
    code = main(["convert", str(model), "--calib", str(tmp / "calib.npz"), "-o", str(out)])
    _one_line_error(capsys, code, "exists", "--force")
    assert out.read_text() == "old"
    assert (
        main(["convert", str(model), "--calib", str(tmp / "calib.npz"), "-o", str(out), "--force", "-q"]) == 0
    )
    onnx.checker.check_model(onnx.load(out))


def test_input_is_never_modified(files):
    tmp, model = files
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    assert main(["convert", str(model), "--calib", str(tmp / "calib.npz"), "-q", "--force"]) == 0
    assert hashlib.sha256(model.read_bytes()).hexdigest() == digest


def test_bad_options_exit_2(files, capsys):
    _, model = files
    for args in (
        ["-T", "0"],
        ["--threshold", "p101"],
        ["--init", "third"],
        ["--levels", "0"],
        ["--levels", "128"],
    ):
        with pytest.raises(SystemExit) as info:
            main(["convert", str(model), *args])
        assert info.value.code == 2
    capsys.readouterr()


def test_debug_shows_the_traceback(files):
    tmp, _ = files
    done = _cli("convert", str(tmp / "nope.onnx"), "--debug")
    assert done.returncode != 0 and "Traceback" in done.stderr and "ModelLoadError" in done.stderr
    done = _cli("convert", str(tmp / "nope.onnx"))
    assert done.returncode == 2 and "Traceback" not in done.stderr


def test_inspect_reports_neurons_compensated_units_and_blockers(files, capsys):
    tmp, _ = files
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="r1"),
        helper.make_node("Tanh", ["a"], ["t"], name="squash"),
        helper.make_node("MatMul", ["t", "w"], ["h"], name="mm"),
        helper.make_node("Softmax", ["h"], ["p"], name="norm"),
        helper.make_node("Bernoulli", ["p"], ["b"], name="draw"),
        helper.make_node("MatMul", ["b", "w"], ["g"], name="mm2"),
        helper.make_node("Relu", ["g"], ["r"], name="r2"),
        helper.make_node("MatMul", ["r", "w"], ["y"], name="mm3"),
    ]
    onnx.save(models.make_model(nodes, {"w": models._w(16, 16)}, ["N", 16], ["N", 16]), tmp / "net.onnx")
    assert main(["inspect", str(tmp / "net.onnx")]) == 0
    out = capsys.readouterr().out
    # relu then tanh is one region: one sigma-delta neuron of tanh(relu(x))
    assert "r1" in out and "sigma-delta neuron" in out and "if neuron" in out
    assert "compensated units (dense, every step): 1" in out and "norm" in out
    assert "blocking conversion: 1" in out and "draw (Bernoulli → b): a random op" in out and "BLOCKS" in out
    assert (
        "spiking: 2 neuron site(s) (1 if, 1 sigma-delta); 3 of 3 elementwise activation node(s) spike" in out
    )


def test_tune_finds_the_smallest_T_within_the_drop(capsys):
    args = [
        "tune",
        str(EXAMPLE / "digits_cnn.onnx"),
        "--calib",
        str(EXAMPLE / "calib.npz"),
        "--data",
        str(EXAMPLE / "test.npz"),
        "--max-drop",
        "1.0",
        "--max-T",
        "16",
        "-q",
    ]
    # Data-free init and a T-independent threshold: every T from one per-step conversion.
    assert main([*args, "--threshold", "p99.99", "--init", "half"]) == 0
    out = capsys.readouterr().out
    table = {int(m[0]): float(m[1]) for m in re.findall(r"T=(\d+)\s+([\d.]+)%", out)}
    ann = float(out.split("ANN accuracy ")[1].split("%")[0])
    chosen = int(out.split("chosen T = ")[1])
    assert sorted(table) == list(range(1, 17))
    assert table[chosen] >= ann - 1.0 and all(table[t] < ann - 1.0 for t in table if t < chosen)
    # θ (default auto: mse) or v(0) (default auto: calibrated with data) fitted per T: T = 1, 2,
    # 4, … compiled in turn.
    for extra in ([], ["--init", "half"], ["--init", "calibrated"]):
        assert main([*args, *extra]) == 0
        out = capsys.readouterr().out
        fitted = {int(m[0]): float(m[1]) for m in re.findall(r"T=(\d+)\s+([\d.]+)%", out)}
        fitted_T = int(out.split("chosen T = ")[1])
        assert set(fitted) <= {1, 2, 4, 8, 16} and fitted_T == max(fitted)
        assert fitted[fitted_T] >= ann - 1.0
        assert all(fitted[t] < ann - 1.0 for t in fitted if t < fitted_T)


def test_tune_compares_t_and_levels_by_latency_and_synaptic_operations(tmp_path, capsys):
    """--levels 1,3: each K searched; each K's least T within target measured for SOPs; the
    fastest pair (graded reaches the target at a smaller T) is what -o writes."""
    out_model = tmp_path / "tuned.onnx"
    args = ["tune", str(EXAMPLE / "digits_cnn.onnx"), "--calib", str(EXAMPLE / "calib.npz")]
    args += ["--data", str(EXAMPLE / "test.npz"), "--max-drop", "1.0", "--max-T", "16", "--init", "half"]
    assert main([*args, "--levels", "1,3", "-o", str(out_model), "-q"]) == 0
    out = capsys.readouterr().out
    table = {(int(t), int(k)): float(a) for t, k, a in re.findall(r"T=(\d+)\s+K=(\d+)\s+([\d.]+)%", out)}
    assert {k for _, k in table} == {1, 3}
    least = {
        k: min(
            t
            for (t, kk), a in table.items()
            if kk == k and a >= float(out.split("target ≥ ")[1].split("%")[0])
        )
        for k in (1, 3)
    }
    assert least[3] < least[1]
    sops = {
        (int(t), int(k)): float(v)
        for t, k, v in re.findall(r"within target: T=(\d+) K=(\d+): ([\d.e+]+) SOPs", out)
    }
    assert set(sops) == {(least[1], 1), (least[3], 3)}
    assert f"fastest: T={least[3]} K=3" in out
    cheapest = min(sops, key=lambda pair: (sops[pair], pair[0]))
    assert f"fewest synaptic operations: T={cheapest[0]} K={cheapest[1]}" in out
    meta = {p.key: p.value for p in onnx.load(out_model).metadata_props}
    assert (meta["icsnn.T"], meta["icsnn.levels"]) == (str(least[3]), "3")


def test_tune_reports_when_no_T_is_good_enough(capsys):
    args = [
        "tune",
        str(EXAMPLE / "digits_cnn.onnx"),
        "--calib",
        str(EXAMPLE / "calib.npz"),
        "--data",
        str(EXAMPLE / "test.npz"),
        "--max-drop",
        "0",
        "--max-T",
        "2",
        "--init",
        "zero",
        "-q",
    ]
    assert main(args) == 1
    assert "no T ≤ 2" in capsys.readouterr().out


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs a file system nothing may write to")
def test_an_output_folder_nothing_can_write_to_is_one_line_exit_2(files, capsys):
    """/proc takes no files, whatever the permissions say (root may write anywhere else)."""
    tmp, _ = files
    code = main(
        ["convert", str(EXAMPLE / "digits_cnn.onnx"), "--calib", str(tmp / "calib.npz"), "-o", "/proc/x.onnx"]
    )
    _one_line_error(capsys, code, "/proc: cannot write in this directory")
