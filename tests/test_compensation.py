"""Compensated units: what is not affine between neurons runs on the means of its inputs and emits
the change of t·g(means), so the mean it emitted over any first t steps is g of the means it
received — checked inside the emitted graphs, op by op and layout by layout; integer tensors join
units; what cannot be compensated is refused by name."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import icsnn_onnx
from icsnn_onnx.contract import SnnMetadata, stacked_name, step_name
from icsnn_onnx.runtime.instrument import expose
from tests import models
from tests.conftest import relative_error, run

T = 6
S = lambda v: np.asarray(v, np.float32)  # noqa: E731


def _between(ops: list[onnx.NodeProto], inits: dict | None = None) -> onnx.ModelProto:
    """x → two Conv-ReLU neuron layers a, b → ``ops`` (a, b → c) → Conv-ReLU → Flatten → Gemm."""
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["ha"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["ha"], ["a"], name="neuron_a"),
        helper.make_node("Conv", ["x", "wb"], ["hb"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["hb"], ["b"], name="neuron_b"),
        *ops,
        helper.make_node("Conv", ["c", "wc"], ["hc"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["hc"], ["r"], name="neuron_c"),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
    ]
    weights = {"wa": models._w(4, 1, 3, 3), "wb": models._w(4, 1, 3, 3), "wc": models._w(4, 4, 3, 3)}
    return models.make_model(
        nodes, {**weights, "fc": models._w(10, 256), **(inits or {})}, ["N", 1, 8, 8], ["N", 10]
    )


QUANTIZED = {
    "wq": np.random.default_rng(3).integers(-8, 8, (4, 4, 1, 1)).astype(np.int8),
    "wzp": np.zeros((), np.int8),
    "wscale": S(0.05),
}
OPS = {
    "product": ([helper.make_node("Mul", ["a", "b"], ["c"], name="g")], {}),
    "attention-like matmul": ([helper.make_node("MatMul", ["a", "b"], ["c"], name="g")], {}),
    "softmax": (
        [
            helper.make_node("Add", ["a", "b"], ["s"]),
            helper.make_node("Softmax", ["s"], ["c"], axis=1, name="g"),
        ],
        {},
    ),
    "layernorm": (
        [
            helper.make_node("Sub", ["a", "b"], ["s"]),
            helper.make_node("LayerNormalization", ["s", "gamma", "beta"], ["c"], axis=-1, name="g"),
        ],
        {"gamma": S(np.full(8, 1.5)), "beta": S(np.full(8, 0.1))},
    ),
    "division": (  # b is data too (q + b), so a neuron: the divisor varies over time
        [
            helper.make_node("Add", ["b", "one"], ["d"]),
            helper.make_node("Div", ["a", "d"], ["q"], name="g"),
            helper.make_node("Add", ["q", "b"], ["c"]),
        ],
        {"one": S(1)},
    ),
    "lppool": (
        [helper.make_node("LpPool", ["a"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="g")],
        {},
    ),
    "dynamically quantized conv": (
        [
            helper.make_node("DynamicQuantizeLinear", ["a"], ["q", "qscale", "qzp"], name="g"),
            helper.make_node("ConvInteger", ["q", "wq", "qzp", "wzp"], ["acc"]),
            helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["qscale", "wscale"], ["scale"]),
            helper.make_node("Mul", ["accf", "scale"], ["c"]),
        ],
        QUANTIZED,
    ),
}


def _means_and_outputs(snn: onnx.ModelProto, x: np.ndarray, inputs: list[str], layout: str) -> dict:
    """Every step's value of ``inputs`` and of c, the unit's output, read from the SNN's graph."""
    if layout == "step-major":
        names = [step_name(n, t) for n in [*inputs, "c"] for t in range(1, T + 1)]
        got = dict(zip(names, run(expose(snn, names), x), strict=True))
        return {n: np.stack([got[step_name(n, t)] for t in range(1, T + 1)]) for n in [*inputs, "c"]}
    names = [stacked_name(n) for n in [*inputs, "c"]]
    got = dict(zip(names, run(expose(snn, names), x), strict=True))
    return {
        n: got[stacked_name(n)].reshape(T, len(x), *got[stacked_name(n)].shape[1:]) for n in [*inputs, "c"]
    }


#: A dynamically quantized op takes one scale over the whole tensor, every sample at once: its steps
#: cannot be stacked on the batch axis (time-batched refuses, auto takes step-major).
PER_TENSOR = {"dynamically quantized conv"}


@pytest.mark.parametrize("layout", ["step-major", "time-batched"])
@pytest.mark.parametrize("op", sorted(OPS))
def test_the_mean_output_is_the_op_of_the_mean_inputs_at_every_step(op, layout, digits):
    if op in PER_TENSOR and layout == "time-batched":
        pytest.skip("a per-tensor quantizer is not time-batched (test_a_per_tensor_quantizer_…)")
    nodes, inits = OPS[op]
    model = _between(nodes, inits)
    x = digits[0][:16]
    snn = icsnn_onnx.convert(model, x, T=T, init="half", layout=layout)
    meta = SnnMetadata.read({p.key: p.value for p in snn.metadata_props})
    assert meta.layout == layout and meta.compensated, meta
    unit = next(u for u in meta.compensated if "g" in u["nodes"])
    inputs = [
        t
        for t in ("a", "b")
        if any(t in n.input for n in model.graph.node if n.name in unit["nodes"] or n.output[0] in ("s", "d"))
    ]
    values = _means_and_outputs(snn, x, inputs, layout)
    # the op alone, as the ANN computes it, on the running means of its inputs after t steps
    alone = onnx.ModelProto()
    alone.CopyFrom(model)
    graph = alone.graph
    kept = [n for n in graph.node if n.output[0] not in ("ha", "a", "hb", "b", "hc", "r", "f", "y")]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.input[:], graph.output[:]
    graph.input.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in inputs)
    graph.output.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, None))
    # the running means as the graph forms them: a float32 sum in step order, times 1/t
    sums = {n: np.cumsum(values[n], axis=0, dtype=np.float32) for n in inputs}
    for t in range(1, T + 1):
        means = {n: sums[n][t - 1] if t == 1 else sums[n][t - 1] * np.float32(1 / t) for n in inputs}
        expected = run(alone, means)[0]
        got = values["c"][:t].mean(axis=0)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(expected).max()))


def test_an_integer_tensor_joins_its_producer_and_readers_into_one_unit():
    nodes, inits = OPS["dynamically quantized conv"]
    report = icsnn_onnx.inspect_model(_between(nodes, inits))
    assert [u.op_types for u in report.units] == [("DynamicQuantizeLinear", "ConvInteger", "Cast"), ("Mul",)]


@pytest.mark.parametrize("op", sorted(OPS))
def test_every_layout_computes_the_same(op, digits):
    nodes, inits = OPS[op]
    model, x = _between(nodes, inits), digits[0][:16]
    layouts = ("step-major", "loop") if op in PER_TENSOR else ("step-major", "time-batched", "loop")
    outs = {
        layout: run(icsnn_onnx.convert(model, x, T=T, init="half", layout=layout), x)[0] for layout in layouts
    }
    scale = np.abs(outs["step-major"]).max()
    for layout in layouts[1:]:
        np.testing.assert_allclose(outs[layout], outs["step-major"], atol=1e-4 * scale)


def test_a_per_tensor_quantizer_is_not_time_batched_and_auto_says_why(digits, caplog):
    nodes, inits = OPS["dynamically quantized conv"]
    model, x = _between(nodes, inits), digits[0][:8]
    with pytest.raises(icsnn_onnx.ConversionError, match="time-varying scalar qscale: no batch axis"):
        icsnn_onnx.convert(model, x, T=4, init="half", layout="time-batched")
    snn = icsnn_onnx.convert(model, x, T=4, init="half", layout="auto")
    assert SnnMetadata.read({p.key: p.value for p in snn.metadata_props}).layout == "step-major"


@pytest.mark.parametrize("op", ["product", "softmax", "layernorm", "division"])
def test_the_snn_converges_to_its_ann(op, digits):
    nodes, inits = OPS[op]
    model, x = _between(nodes, inits), digits[0][:32]
    ann = run(model, x)[0]
    errors = [relative_error(run(icsnn_onnx.convert(model, x, T=t, init="half"), x)[0], ann) for t in (4, 64)]
    assert errors[1] < errors[0] and errors[1] < 0.05, errors


def test_an_lstm_between_neurons_is_one_unit_and_converges():
    """A CRNN-style net: Conv-ReLU features read as a sequence by an LSTM, then ReLU and a head."""
    import torch
    from torch import nn

    class Crnn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
            self.lstm = nn.LSTM(8 * 8, 16)
            self.out = nn.Sequential(nn.ReLU(), nn.Linear(16, 5))

        def forward(self, x):
            f = self.conv(x)  # [N, 8, 8, W=8] → sequence over W
            seq = f.permute(3, 0, 1, 2).flatten(2)  # [W, N, 64]
            h, _ = self.lstm(seq)
            return self.out(h)

    torch.manual_seed(0)
    x = np.random.default_rng(0).random((8, 1, 8, 8)).astype(np.float32)
    model = models.torch_export(Crnn().eval(), x, dynamo=False)
    report = icsnn_onnx.inspect_model(model)
    assert [u.op_types for u in report.units] == [("LSTM",)]
    ann = run(model, x)[0]
    errors = [relative_error(run(icsnn_onnx.convert(model, x, T=t, init="half"), x)[0], ann) for t in (4, 64)]
    assert errors[1] < errors[0] / 4, errors


def test_control_flow_reading_time_varying_tensors_is_a_unit_and_converges(digits):
    """An If on a time-invariant but data-dependent condition whose branches read a neuron layer:
    a compensated unit, its branches reading the running means."""
    then_branch = helper.make_graph(
        [helper.make_node("Relu", ["a"], ["t_out"])],
        "then",
        [],
        [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, None)],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Neg", ["a"], ["e_out"])],
        "else",
        [],
        [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, None)],
    )
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
        helper.make_node("Greater", ["m", "zero"], ["cond"]),
        helper.make_node(
            "If", ["cond"], ["c"], then_branch=then_branch, else_branch=else_branch, name="branch"
        ),
    ]
    model = _between(nodes, {"zero": S(0)})
    assert [u.op_types for u in icsnn_onnx.inspect_model(model).units] == [("If",)]
    x = digits[0][:32]
    ann = run(model, x)[0]
    errors = [relative_error(run(icsnn_onnx.convert(model, x, T=t, init="half"), x)[0], ann) for t in (4, 64)]
    assert errors[1] < errors[0] and errors[1] < 0.05, errors
    looped = run(icsnn_onnx.convert(model, x, T=8, init="half", layout="loop"), x)[0]
    unrolled = run(icsnn_onnx.convert(model, x, T=8, init="half"), x)[0]
    np.testing.assert_allclose(looped, unrolled, atol=1e-4 * np.abs(unrolled).max())
    icsnn_onnx.convert(model, x, T=4)  # Alg 2's segments read around the If too


def test_a_model_with_only_compensated_nonlinearities_is_refused_there_is_nothing_to_spike(digits):
    """Softmax alone between two layers: no activation to make a neuron."""
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"]),
        helper.make_node("Gemm", ["f", "w"], ["h"], transB=1),
        helper.make_node("Softmax", ["h"], ["s"], axis=1, name="norm"),
        helper.make_node("Gemm", ["s", "w2"], ["y"], transB=1),
    ]
    model = models.make_model(
        nodes, {"w": models._w(16, 64), "w2": models._w(10, 16)}, ["N", 1, 8, 8], ["N", 10]
    )
    with pytest.raises(icsnn_onnx.UnsupportedOperatorError, match="no activation to make a spiking neuron"):
        icsnn_onnx.convert(model, digits[0][:8], T=4)


def test_weights_as_graph_inputs_are_not_streams():
    """Sanity of the fixture: the quantized weights are constants, so ConvInteger is per sample."""
    nodes, inits = OPS["dynamically quantized conv"]
    model = _between(nodes, inits)
    assert {t.name for t in model.graph.initializer} >= {"wq", "wzp", "wscale"}
    assert numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "wq")).dtype == np.int8


@pytest.mark.parametrize("build", ["if_between", "loop_between"])
def test_control_flow_that_used_to_be_refused_converts_as_a_unit(build, digits):
    """An If and a Loop whose bodies read a neuron layer (tests/bad_models.py): compensated."""
    from tests import bad_models

    model, x = getattr(bad_models, build)(), digits[0][:16]
    report = icsnn_onnx.inspect_model(model)
    # a mask on the layer (Greater) joins the If that reads it: a bool carries no mean
    (unit,) = report.units
    assert report.convertible and unit.op_types[-1] in ("If", "Loop")
    ann = run(model, x)[0]
    assert relative_error(run(icsnn_onnx.convert(model, x, T=32), x)[0], ann) < 0.05


def test_the_spiking_share_counts_activations_on_the_way_to_synapses_only():
    """A scale from a shape (``sqrt(d)``), a LayerNorm's ``1/sqrt(var)`` (reads no data) and a
    final ``Exp`` (the read-out's, computed once) are no activations; the GELU is, and spikes."""
    from onnx import helper

    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Shape", ["h"], ["shape"]),
        helper.make_node("Gather", ["shape", "last"], ["d"]),
        helper.make_node("Cast", ["d"], ["df"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Sqrt", ["df"], ["scale"], name="scale_from_shape"),
        helper.make_node("Div", ["h", "scale"], ["hs"]),
        helper.make_node("ReduceMean", ["hs", "axes"], ["mean"]),
        helper.make_node("Sub", ["hs", "mean"], ["centred"]),
        helper.make_node("Mul", ["centred", "centred"], ["square"]),
        helper.make_node("ReduceMean", ["square", "axes"], ["var"]),
        helper.make_node("Add", ["var", "eps"], ["var_eps"]),
        helper.make_node("Sqrt", ["var_eps"], ["std"], name="norm_sqrt"),
        helper.make_node("Reciprocal", ["std"], ["inv"], name="norm_reciprocal"),
        helper.make_node("Mul", ["centred", "inv"], ["normed"]),
        helper.make_node("Gelu", ["normed"], ["g"], name="gelu"),
        helper.make_node("MatMul", ["g", "w2"], ["logits"]),
        helper.make_node("Exp", ["logits"], ["y"], name="readout_exp"),
    ]
    inits = {
        "w1": models._w(16, 16), "w2": models._w(16, 8), "last": np.asarray(1, np.int64),
        "axes": np.asarray([-1], np.int64), "eps": np.asarray(1e-5, np.float32),
    }  # fmt: skip
    model = models.make_model(nodes, inits, ["N", 16], ["N", 8])
    report = icsnn_onnx.inspect_model(model)
    assert (report.activations, report.spiking_activations) == (1, 1), report.summary()
    assert [s.nodes for s in report.sites] == [("gelu",)]


def test_a_tensor_read_by_two_units_has_one_running_mean_in_every_layout(digits):
    """Spatial-pyramid pooling (YOLO's SPP): MaxPools with windows too large to decompose, each
    a unit, all reading the neurons' output: one running sum and mean of it per step (not nodes
    of one name, which ONNX Runtime refuses), the same result in every layout."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["a"]),
        helper.make_node("MaxPool", ["a"], ["p7"], kernel_shape=[7, 7], pads=[3, 3, 3, 3]),
        helper.make_node("MaxPool", ["a"], ["p9"], kernel_shape=[9, 9], pads=[4, 4, 4, 4]),
        helper.make_node("Concat", ["a", "p7", "p9"], ["c"], axis=1),
        helper.make_node("Conv", ["c", "w2"], ["g"]),
        helper.make_node("Relu", ["g"], ["r"]),  # the pools are between neurons
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
    ]
    inits = {"w": models._w(4, 1, 3, 3), "w2": models._w(4, 12, 1, 1), "fc": models._w(10, 256)}
    model = models.make_model(nodes, inits, ["N", 1, 8, 8], ["N", 10])
    x = digits[0][:32]
    (ann,) = run(model, x)
    outs = {}
    for layout in ("step-major", "time-batched", "loop"):
        snn = icsnn_onnx.convert(model, x, T=4, init="half", layout=layout)
        names = [n.name for n in snn.graph.node]
        assert len(names) == len(set(names))
        assert len(json.loads({p.key: p.value for p in snn.metadata_props}["icsnn.compensated"])) == 2
        outs[layout] = run(snn, x)[0]
    np.testing.assert_allclose(outs["time-batched"], outs["step-major"], atol=1e-4)
    np.testing.assert_allclose(outs["loop"], outs["step-major"], atol=1e-4)
    assert relative_error(outs["step-major"], ann) < 0.5
