"""Fixed inputs (``--input NAME=VALUE``): inputs that are not samples, compiled in as constants, so
an ``If`` on them folds to its branch, whose activations then spike; the SNN keeps the inputs and
refuses other values; data need not hold them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import icsnn_onnx
from icsnn_onnx.cli import main
from icsnn_onnx.contract import SnnMetadata
from icsnn_onnx.data import Dataset
from icsnn_onnx.runtime import Session
from tests import models
from tests.conftest import relative_error


def _branch(name: str, activation: str) -> onnx.GraphProto:
    """Conv → activation → Conv, reading x and the weights from the graph around it."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], [f"{name}_h"], pads=[1, 1, 1, 1]),
        helper.make_node(activation, [f"{name}_h"], [f"{name}_a"]),
        helper.make_node("Conv", [f"{name}_a", "w2"], [f"{name}_y"], pads=[1, 1, 1, 1]),
    ]
    return helper.make_graph(
        nodes, name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, None)]
    )


def switched() -> onnx.ModelProto:
    """y = head(If(rate == 16000, relu branch, sigmoid branch) + bias), with a scalar input ``rate``
    and a bias input that is no sample ([1, 4, 1, 1])."""
    nodes = [
        helper.make_node("Equal", ["rate", "sixteen_k"], ["is_16k"]),
        helper.make_node(
            "If",
            ["is_16k"],
            ["branch_out"],
            then_branch=_branch("fast", "Relu"),
            else_branch=_branch("slow", "Sigmoid"),
            name="switch",
        ),
        helper.make_node("Add", ["branch_out", "bias"], ["biased"]),
        helper.make_node("Relu", ["biased"], ["r"], name="last"),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
    ]
    inits = {
        "w1": models._w(4, 1, 3, 3, rng=np.random.default_rng(1)),
        "w2": models._w(4, 4, 3, 3, rng=np.random.default_rng(2)),
        "fc": models._w(10, 256, rng=np.random.default_rng(3)),
        "sixteen_k": np.array(16000, np.int64),
    }
    graph = helper.make_graph(
        nodes,
        "switched",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8]),
            helper.make_tensor_value_info("rate", TensorProto.INT64, []),
            helper.make_tensor_value_info("bias", TensorProto.FLOAT, [1, 4, 1, 1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        [onnx.numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    onnx.checker.check_model(model)
    return model


BIAS = np.full((1, 4, 1, 1), 0.1, np.float32)


@pytest.mark.parametrize("rate,kinds", [(16000, {"if"}), (8000, {"if", "sigma-delta"})])
def test_an_if_on_a_fixed_input_folds_and_its_branch_converts(digits, rate, kinds):
    model, x = switched(), digits[0][:64]
    fixed = {"rate": rate, "bias": BIAS}
    snn = icsnn_onnx.convert(model, x, T=32, fixed=fixed)
    meta = SnnMetadata.read({p.key: p.value for p in snn.metadata_props})
    assert {s["kind"] for s in meta.neurons} == kinds and not meta.compensated
    assert not any(n.op_type == "If" for n in snn.graph.node)
    assert [i.name for i in snn.graph.input] == ["x", "rate", "bias"]  # a drop-in replacement
    ann = Session(model, provider="cpu", fixed=fixed).run({"x": x})["y"]
    out = Session(snn, provider="cpu", fixed=fixed).run({"x": x})["y"]
    assert relative_error(out, ann) < 0.05


def test_the_snn_refuses_other_or_missing_fixed_values(digits):
    model, x = switched(), digits[0][:16]
    snn = icsnn_onnx.convert(model, x, T=4, fixed={"rate": 16000, "bias": BIAS})
    with pytest.raises(icsnn_onnx.DataError, match="compiled for input rate = 16000, given 8000"):
        Session(snn, provider="cpu", fixed={"rate": 8000, "bias": BIAS})
    with pytest.raises(
        icsnn_onnx.DataError, match=r"compiled for input rate = 16000: give it \(--input rate=…\)"
    ):
        Session(snn, provider="cpu")
    session = Session(snn, provider="cpu", fixed={"rate": "16000", "bias": BIAS})
    assert [s.name for s in session.inputs] == ["x"]  # what data must hold


@pytest.mark.parametrize(
    "fixed,message",
    [
        ({"nope": 1}, "the model has no input 'nope'"),
        ({"rate": "fast"}, "'fast' is no number"),
        ({"rate": 1.5}, "non-integer values"),
        ({"bias": np.zeros((1, 3, 1, 1))}, r"given shape \[1, 3, 1, 1\] \(axis 1\)"),
        ({"bias": "missing.npy"}, "no such file"),
        ({"bias": np.full((1, 4, 1, 1), np.nan)}, "not finite"),
    ],
)
def test_bad_fixed_values_are_data_errors_naming_the_input(digits, fixed, message):
    with pytest.raises(icsnn_onnx.DataError, match=message):
        icsnn_onnx.convert(switched(), digits[0][:8], T=4, fixed={"rate": 16000, "bias": BIAS, **fixed})


def test_without_its_fixed_input_inspect_says_which_input_folds_the_if():
    """Unfixed, the If reads only inputs: computed once, its activations dense, and said so."""
    report = icsnn_onnx.inspect_model(switched())
    assert [s.name for s in report.sites] == ["last"]
    (note,) = report.notes
    assert "switch" in note and "condition reads the input(s) ['rate']" in note
    fixed = icsnn_onnx.inspect_model(switched(), fixed={"rate": 16000, "bias": BIAS})
    assert len(fixed.sites) == 2 and not fixed.notes


def test_cli_convert_and_eval_with_fixed_inputs(tmp_path, digits, capsys):
    model = tmp_path / "switched.onnx"
    onnx.save(switched(), model)
    np.save(tmp_path / "bias.npy", BIAS)
    np.savez(tmp_path / "calib.npz", x=digits[0][:64])
    np.savez(tmp_path / "test.npz", x=digits[0][64:192], y=np.zeros(128, np.int64))
    fixed = ["--input", "rate=16000", "--input", f"bias={tmp_path / 'bias.npy'}"]
    out = tmp_path / "switched.snn.onnx"
    assert (
        main(
            [
                "convert",
                str(model),
                "--calib",
                str(tmp_path / "calib.npz"),
                "-T",
                "8",
                "-o",
                str(out),
                "-q",
                *fixed,
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(["eval", str(out), "--data", str(tmp_path / "test.npz"), "--ann", str(model), "-q", *fixed]) == 0
    )
    assert "agreement" in capsys.readouterr().out
    code = main(
        [
            "eval",
            str(out),
            "--data",
            str(tmp_path / "test.npz"),
            "-q",
            "--input",
            "rate=8000",
            fixed[2],
            fixed[3],
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "compiled for input rate = 16000, given 8000" in err
    with pytest.raises(SystemExit) as usage:
        main(["convert", str(model), "-q", "--input", "rate"])
    assert usage.value.code == 2 and "expected NAME=VALUE" in capsys.readouterr().err


def _with_state() -> onnx.ModelProto:
    """y = head(Relu(Conv(Concat(Relu(Conv(x)), state)))): a state input ``[N, 4, 8, 8]``, no sample."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["a"], name="first"),
        helper.make_node("Concat", ["a", "state"], ["c"], axis=1),
        helper.make_node("Conv", ["c", "w2"], ["h2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h2"], ["r"], name="last"),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
    ]
    inits = {
        "w1": models._w(4, 1, 3, 3, rng=np.random.default_rng(1)),
        "w2": models._w(4, 8, 3, 3, rng=np.random.default_rng(2)),
        "fc": models._w(10, 256, rng=np.random.default_rng(3)),
    }
    graph = helper.make_graph(
        nodes,
        "stateful",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, ["N", 4, 8, 8]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        [onnx.numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def test_report_runs_with_a_fixed_input_sized_for_the_batch(digits):
    """Silero VAD's recurrent state is ``[2, N, 128]``: fixed for a batch, the SNN runs that batch
    only, so the report's shape probe takes that batch, not one sample; costs stay per sample."""
    x = digits[0][:8, :, :8, :8]
    data = Dataset({"x": x})
    costs = []
    for n in (8, 1):
        fixed = {"state": np.full((n, 4, 8, 8), 0.1, np.float32)}
        snn = icsnn_onnx.convert(_with_state(), x[:n], T=4, fixed=fixed)
        got = icsnn_onnx.report(snn, data.head(n), batch_size=n, fixed=fixed)
        costs.append(got.energy["ann_macs_per_sample"])
    assert costs[0] == costs[1] > 0
