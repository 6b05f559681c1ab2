"""Activation sites are recognized by their transfer function, whatever ops spell them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import icsnn_onnx
from icsnn_onnx.options import ConversionOptions
from icsnn_onnx.passes import PassManager
from icsnn_onnx.passes.activations import RecognizeActivations, fit_transfer
from icsnn_onnx.passes.canonicalize import Canonicalize, import_model
from icsnn_onnx.passes.program import ActivationKind, TransferFunction
from tests import models
from tests.conftest import run

S = lambda v: np.asarray(v, np.float32)  # noqa: E731 - scalar constant


def _elementwise(nodes, inits, opset=21):
    """x[N, 16] → nodes (reading x, writing y)."""
    return models.make_model(nodes, inits, ["N", 16], ["N", 16], opset=opset)


def _sites(model):
    program = import_model(model, ConversionOptions())
    PassManager([Canonicalize(), RecognizeActivations()])(program)
    return program


QCFS_NODES = [  # λ/L · clip(floor(x·L/λ + 0.5), 0, L), as a QCFS layer exports
    helper.make_node("Div", ["x", "lam"], ["u"]),
    helper.make_node("Mul", ["u", "L"], ["v"]),
    helper.make_node("Add", ["v", "half"], ["w"]),
    helper.make_node("Floor", ["w"], ["f"]),
    helper.make_node("Clip", ["f", "zero", "L"], ["c"]),
    helper.make_node("Div", ["c", "L"], ["d"]),
    helper.make_node("Mul", ["d", "lam"], ["y"]),
]
QCFS_INITS = {"lam": S(2.5), "L": S(4.0), "half": S(0.5), "zero": S(0.0)}

CASES = {
    "relu": ([helper.make_node("Relu", ["x"], ["y"])], {}, TransferFunction(ActivationKind.RELU)),
    "max0": (
        [helper.make_node("Max", ["x", "zero"], ["y"])],
        {"zero": S(0)},
        TransferFunction(ActivationKind.RELU),
    ),
    "relu6-clip": (
        [helper.make_node("Clip", ["x", "zero", "six"], ["y"])],
        {"zero": S(0), "six": S(6)},
        TransferFunction(ActivationKind.CLIPPED, upper_bound=6.0),
    ),
    "hardtanh-min-max": (
        [helper.make_node("Max", ["x", "zero"], ["m"]), helper.make_node("Min", ["m", "lam"], ["y"])],
        {"zero": S(0), "lam": S(1.5)},
        TransferFunction(ActivationKind.CLIPPED, upper_bound=1.5),
    ),
    "qcfs": (QCFS_NODES, QCFS_INITS, TransferFunction(ActivationKind.QUANTIZED, 2.5, 4, 0.5)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_recognized(case):
    nodes, inits, expected = CASES[case]
    program = _sites(_elementwise(nodes, inits))
    assert len(program.sites) == 1
    (site,) = program.sites.values()
    assert site.transfer.kind == expected.kind
    assert site.transfer.levels == expected.levels
    for got, want in [
        (site.transfer.upper_bound, expected.upper_bound),
        (site.transfer.offset, expected.offset),
    ]:
        assert got == pytest.approx(want) if want is not None else got is None
    assert (site.input, site.output) == ("x", "y")
    assert len(site.nodes) == len(nodes)


def test_opset9_clip_attributes():
    model = _elementwise([helper.make_node("Clip", ["x"], ["y"], min=0.0, max=3.0)], {}, opset=9)
    (site,) = _sites(model).sites.values()
    assert site.transfer == TransferFunction(ActivationKind.CLIPPED, upper_bound=3.0)


def test_scaled_relu_leaves_the_scale_as_a_linear_op():
    """relu(2x): the Mul stays a linear op, the Relu alone is the site."""
    nodes = [helper.make_node("Mul", ["x", "two"], ["u"]), helper.make_node("Relu", ["u"], ["y"])]
    (site,) = _sites(_elementwise(nodes, {"two": S(2)})).sites.values()
    assert (site.input, site.output, site.transfer.kind) == ("u", "y", ActivationKind.RELU)


def test_relu_then_sigmoid_is_one_generic_site_of_the_whole_function():
    """A ReLU site then a Sigmoid would be two neurons in series, quantizing twice: the region is
    one generic site instead, its function sigmoid(relu(x)) carried as the graph's nodes."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Sigmoid", ["r"], ["y"], name="sig"),
    ]
    program = _sites(_elementwise(nodes, {}))
    (site,) = program.sites.values()
    assert (site.name, site.input, site.output) == ("relu", "x", "y")
    assert site.transfer.kind is ActivationKind.GENERIC and site.neuron == "sigma-delta"
    assert "f(" in site.note and not program.rejected
    x = np.linspace(-4, 4, 101)
    assert np.allclose(site.transfer(x), 1 / (1 + np.exp(-np.maximum(x, 0))))


def test_relu_scale_relu_is_two_sites():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="r1"),
        helper.make_node("Mul", ["a", "half"], ["b"], name="scale"),
        helper.make_node("Relu", ["b"], ["y"], name="r2"),
    ]
    program = _sites(_elementwise(nodes, {"half": S(0.5)}))
    assert sorted(program.sites) == ["r1", "r2"]


@pytest.mark.parametrize(
    "nodes,inits,reason",
    [
        ([helper.make_node("LeakyRelu", ["x"], ["y"], alpha=0.1)], {}, "0 for negative inputs"),
        (
            [helper.make_node("Clip", ["x", "lo", "hi"], ["y"])],
            {"lo": S(-1), "hi": S(1)},
            "0 for negative inputs",
        ),
        ([helper.make_node("Sigmoid", ["x"], ["y"])], {}, "0 for negative inputs"),
        ([helper.make_node("Softplus", ["x"], ["y"])], {}, "0 for negative inputs"),
        (
            [helper.make_node("Clip", ["x", "lo", "hi"], ["y"])],
            {"lo": S(0.5), "hi": S(1)},
            ") = 0.5, but a ReLU is 0",
        ),
    ],
)
def test_not_relu_is_a_generic_site_noting_why(nodes, inits, reason):
    """What is not ReLU-like becomes a generic (sigma-delta) site; why it is no IF neuron is noted."""
    program = _sites(_elementwise(nodes, inits))
    (site,) = program.sites.values()
    assert site.transfer.kind is ActivationKind.GENERIC and reason in site.note
    assert not program.rejected
    x = np.linspace(-3, 3, 61).astype(np.float32)
    assert np.allclose(
        site.transfer(x), run(_elementwise(nodes, inits), x.reshape(-1, 1).repeat(16, 1))[0][:, 0]
    )


def test_fit_transfer_offsets_and_levels():
    for L, lam, phi in [(2, 1.0, 0.5), (8, 0.3, 0.0), (16, 7.0, 0.25)]:
        f = TransferFunction(ActivationKind.QUANTIZED, lam, L, phi)
        fitted = fit_transfer(f)
        assert isinstance(fitted, TransferFunction)
        assert fitted.levels == L and fitted.offset == pytest.approx(phi, abs=1e-5)
        assert fitted.upper_bound == pytest.approx(lam)
    assert "not the identity" in fit_transfer(lambda x: 2 * np.maximum(x, 0))


def test_transfer_function_is_validated():
    with pytest.raises(ValueError):
        TransferFunction(ActivationKind.CLIPPED)
    with pytest.raises(ValueError):
        TransferFunction(ActivationKind.QUANTIZED, 1.0, 4, 1.0)
    with pytest.raises(ValueError):
        TransferFunction(ActivationKind.RELU, upper_bound=1.0)


def _qcfs_layer(L: int, lam: float) -> onnx.ModelProto:
    inits = {**QCFS_INITS, "lam": S(lam), "L": S(float(L))}
    return _elementwise(QCFS_NODES, inits)


@pytest.mark.parametrize("L,lam", [(4, 2.5), (8, 1.0), (2, 3.0)])
def test_quantized_layer_is_exact_with_T_equal_L_and_half_init(L, lam):
    """For a QCFS site with T = L and v(0) = θ/2 the SNN reproduces the activation exactly."""
    model = _qcfs_layer(L, lam)
    step = lam / L
    # Inputs over the whole range, kept 1 % of a step away from the rounding edges.
    k = np.arange(-2 * L, 3 * L)
    x = np.concatenate([(k + 0.5 + off) * step for off in (-0.49, -0.2, 0.0, 0.3, 0.49)])
    x = x[np.abs(((x / step) - 0.5) - np.round((x / step) - 0.5)) > 0.01].astype(np.float32)
    x = np.resize(x, (len(x) // 16 * 16,)).reshape(-1, 16)
    # The site is the read-out here: compensation would recover it at any T, so it is off to
    # test the neurons themselves.
    snn = icsnn_onnx.convert(model, None, T=L, init="half", compensation=False)
    (ann,), (out,) = run(model, x), run(snn, x)
    assert np.allclose(out, ann, atol=1e-6 * lam)
    # Zero init floors instead of rounding.
    (floored,) = run(icsnn_onnx.convert(model, None, T=L, init="zero", compensation=False), x)
    assert not np.allclose(floored, ann, atol=1e-6 * lam)
    # With read-out compensation the integrated membrane passes through the site's own
    # function: exact whatever T and v(0).
    for T, init in ((1, "zero"), (L + 1, "half")):
        (compensated,) = run(icsnn_onnx.convert(model, None, T=T, init=init), x)
        assert np.allclose(compensated, ann, atol=1e-5 * lam)


def _qcfs_chain(x: str, y: str, prefix: str) -> list[onnx.NodeProto]:
    rename = {"x": x, "y": y}
    return [
        helper.make_node(
            n.op_type,
            [rename.get(i, i if i in QCFS_INITS else prefix + i) for i in n.input],
            [rename.get(o, prefix + o) for o in n.output],
        )
        for n in QCFS_NODES
    ]


def test_two_layer_qcfs_net_is_reproduced_exactly_at_T_equal_L(digits):
    """QCFS MLP, T = L, v(0) = θ/2 (data-free): the first layer's counts are its quantized
    activations (constant current); the second is the read-out, whose compensated value is the
    QCFS function of its mean current — the ANN's. Without compensation the time-varying current
    of the second layer is not reproduced."""
    nodes = [
        helper.make_node("Gemm", ["x", "w1"], ["h1"], transB=1),
        *_qcfs_chain("h1", "a1", "q1_"),
        helper.make_node("Gemm", ["a1", "w2"], ["h2"], transB=1),
        *_qcfs_chain("h2", "a2", "q2_"),
        helper.make_node("Gemm", ["a2", "w3"], ["y"], transB=1),
    ]
    inits = {**QCFS_INITS, "w1": models._w(48, 64), "w2": models._w(32, 48), "w3": models._w(10, 32)}
    model = models.make_model(nodes, inits, ["N", 64], ["N", 10])
    x = digits[0].reshape(len(digits[0]), -1)
    (ann,) = run(model, x)
    snn = icsnn_onnx.convert(model, None, T=4)  # L = 4; no data needed
    assert {p.key: p.value for p in snn.metadata_props}["icsnn.sites"] == "2"
    (out,) = run(snn, x)
    assert np.allclose(out, ann, atol=1e-4 * np.abs(ann).max())
    (plain,) = run(icsnn_onnx.convert(model, None, T=4, compensation=False), x)
    assert not np.allclose(plain, ann, atol=1e-2 * np.abs(ann).max())


# DAG forms: single-input elementwise regions that are not chains.
STE_NODES = [  # λ·(x_c + (q(x_c) − x_c)), x_c = clip(x/λ, 0, 1): torch's export of a QAT activation
    helper.make_node("Div", ["x", "lam"], ["u"]),
    helper.make_node("Clip", ["u", "zero", "one"], ["xc"]),
    helper.make_node("Mul", ["xc", "L"], ["v"]),
    helper.make_node("Add", ["v", "half"], ["w"]),
    helper.make_node("Floor", ["w"], ["f"]),
    helper.make_node("Div", ["f", "L"], ["q"]),
    helper.make_node("Sub", ["q", "xc"], ["d"]),  # (q − x_c).detach() exports as nothing
    helper.make_node("Add", ["xc", "d"], ["s"]),
    helper.make_node("Mul", ["s", "lam"], ["y"]),
]
STE_INITS = {"lam": S(2.5), "L": S(4.0), "half": S(0.5), "zero": S(0.0), "one": S(1.0)}

DAG_CASES = {
    "(x+|x|)/2": (
        [
            helper.make_node("Abs", ["x"], ["a"]),
            helper.make_node("Add", ["x", "a"], ["s"]),
            helper.make_node("Div", ["s", "two"], ["y"]),
        ],
        {"two": S(2)},
        TransferFunction(ActivationKind.RELU),
    ),
    "x*(x>0)": (
        [
            helper.make_node("Greater", ["x", "zero"], ["g"]),
            helper.make_node("Cast", ["g"], ["m"], to=onnx.TensorProto.FLOAT),
            helper.make_node("Mul", ["x", "m"], ["y"]),
        ],
        {"zero": S(0)},
        TransferFunction(ActivationKind.RELU),
    ),
    "where(x>0,x,0)": (
        [
            helper.make_node("Greater", ["x", "zero"], ["g"]),
            helper.make_node("Where", ["g", "x", "zero"], ["y"]),
        ],
        {"zero": S(0)},
        TransferFunction(ActivationKind.RELU),
    ),
    "relu(x)-relu(x-lam)": (
        [
            helper.make_node("Relu", ["x"], ["r1"]),
            helper.make_node("Sub", ["x", "lam"], ["d"]),
            helper.make_node("Relu", ["d"], ["r2"]),
            helper.make_node("Sub", ["r1", "r2"], ["y"]),
        ],
        {"lam": S(1.5)},
        TransferFunction(ActivationKind.CLIPPED, upper_bound=1.5),
    ),
    "leakyrelu-alpha0": (
        [helper.make_node("LeakyRelu", ["x"], ["y"], alpha=0.0)],
        {},
        TransferFunction(ActivationKind.RELU),
    ),
    "prelu-slope0-per-channel": (
        [helper.make_node("PRelu", ["x", "slope"], ["y"])],
        {"slope": np.zeros(16, np.float32)},
        TransferFunction(ActivationKind.RELU),
    ),
    "ste-quantized": (STE_NODES, STE_INITS, TransferFunction(ActivationKind.QUANTIZED, 2.5, 4, 0.5)),
}


@pytest.mark.parametrize("case", sorted(DAG_CASES))
def test_dag_forms_are_recognized_as_one_site(case):
    nodes, inits, expected = DAG_CASES[case]
    model = _elementwise(nodes, inits)
    program = _sites(model)
    (site,) = program.sites.values()
    assert not program.rejected
    assert (site.input, site.output) == ("x", "y")
    assert sorted(site.nodes) == sorted(program_node_names(program, nodes))
    assert site.transfer.kind == expected.kind and site.transfer.levels == expected.levels
    if expected.upper_bound is not None:
        assert site.transfer.upper_bound == pytest.approx(expected.upper_bound)
    x = np.linspace(-5, 5, 16 * 40, dtype=np.float32).reshape(-1, 16)
    (ann,) = run(model, x)
    assert np.allclose(site.transfer(x), ann, atol=1e-6)


def program_node_names(program, nodes):
    """The names Canonicalize gave the test's nodes (found by their output tensors)."""
    by_output = {n.outputs[0].name: n.name for n in program.graph.nodes}
    return [by_output[n.output[0]] for n in nodes]


def test_silu_as_a_dag_is_one_generic_site_named_by_what_it_computes():
    """SiLU written as x·sigmoid(x): one region, not a ReLU: one sigma-delta site."""
    nodes = [
        helper.make_node("Sigmoid", ["x"], ["s"], name="sig"),
        helper.make_node("Mul", ["x", "s"], ["y"], name="silu"),
    ]
    program = _sites(_elementwise(nodes, {}))
    (site,) = program.sites.values()
    assert site.nodes == ("sig", "silu") and site.transfer.describe() == "silu"
    assert [eq.op_type for eq in site.transfer.function.equations] == ["Sigmoid", "Mul"]


@pytest.mark.parametrize(
    "nodes,inits,name",
    [
        (  # HardSwish as torch's legacy exporter writes it: x·clip(x + 3, 0, 6)/6
            [
                helper.make_node("Add", ["x", "three"], ["a"]),
                helper.make_node("Clip", ["a", "zero", "six"], ["c"]),
                helper.make_node("Div", ["c", "six"], ["d"]),
                helper.make_node("Mul", ["x", "d"], ["y"]),
            ],
            {"three": S(3), "zero": S(0), "six": S(6)},
            "hardswish",
        ),
        (  # GELU in its Erf form
            [
                helper.make_node("Div", ["x", "sqrt2"], ["a"]),
                helper.make_node("Erf", ["a"], ["e"]),
                helper.make_node("Add", ["e", "one"], ["b"]),
                helper.make_node("Mul", ["x", "b"], ["c"]),
                helper.make_node("Mul", ["c", "half"], ["y"]),
            ],
            {"sqrt2": S(np.sqrt(2)), "one": S(1), "half": S(0.5)},
            "gelu",
        ),
        ([helper.make_node("HardSwish", ["x"], ["y"])], {}, "hardswish"),
        ([helper.make_node("Gelu", ["x"], ["y"], approximate="tanh")], {}, "gelu (tanh)"),
        ([helper.make_node("Mish", ["x"], ["y"])], {}, "mish"),
    ],
)
def test_common_activations_are_generic_sites_computing_what_onnx_runtime_does(nodes, inits, name):
    model = _elementwise(nodes, inits)
    (site,) = _sites(model).sites.values()
    assert site.transfer.describe() == name
    x = np.linspace(-6, 6, 16 * 8, dtype=np.float32).reshape(8, 16)
    np.testing.assert_allclose(site.transfer(x), run(model, x)[0], rtol=1e-5, atol=1e-6)


def test_an_activation_not_finite_on_the_mean_inputs_range_stays_rejected():
    """log(x): a mean input can leave its domain; not a neuron (the support analysis compensates it)."""
    program = _sites(_elementwise([helper.make_node("Log", ["x"], ["y"], name="log")], {}))
    assert not program.sites and "not finite on [-50, 50]" in program.rejected["log"]


def test_a_clamp_on_a_divisor_is_a_side_computation_not_a_neuron():
    """r / clamp(Σ r, 1e-9), r = relu(x): the clamp reaches the output only as a divisor, so it stays
    dense; r is also the numerator, data: a neuron."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("ReduceSum", ["r", "axes"], ["n"], name="norm", keepdims=1),
        helper.make_node("Clip", ["n", "eps"], ["c"], name="clamp"),
        helper.make_node("Div", ["r", "c"], ["y"], name="normalize"),
    ]
    model = models.make_model(nodes, {"axes": np.array([1]), "eps": S(1e-9)}, ["N", 16], ["N", 16])
    program = _sites(model)
    assert "clamp" not in program.sites and "side computation" in program.side["clamp"]
    assert list(program.sites) == ["relu"]


def test_a_relu_read_twice_is_a_site_and_its_consumers_stay_outside():
    """Relu → (Mul by 2 → Relu) and Relu → output: the first Relu's output leaves the region,
    so it is its own site; the second chain is another."""
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="r1"),
        helper.make_node("Mul", ["a", "two"], ["b"], name="scale"),
        helper.make_node("Relu", ["b"], ["c"], name="r2"),
        helper.make_node("Add", ["a", "c"], ["y"], name="sum"),
    ]
    program = _sites(_elementwise(nodes, {"two": S(2)}))
    assert sorted(program.sites) == ["r1", "r2"]
    assert program.sites["r2"].input == "b"


def test_sibling_branches_after_a_nonlinear_op_are_one_generic_site():
    nodes = [
        helper.make_node("Abs", ["x"], ["a"], name="abs"),
        helper.make_node("Relu", ["a"], ["b"], name="relu"),
        helper.make_node("Clip", ["a", "zero", "six"], ["c"], name="clip"),
        helper.make_node("Add", ["b", "c"], ["y"], name="sum"),
    ]
    program = _sites(_elementwise(nodes, {"zero": S(0), "six": S(6)}))
    # |x| is no ReLU, so the region is one generic site: relu(|x|) + clip(|x|, 0, 6)
    (site,) = program.sites.values()
    x = np.linspace(-8, 8, 81)
    assert site.name == "abs" and np.allclose(site.transfer(x), np.abs(x) + np.clip(np.abs(x), 0, 6))


def _ste_mlp(dynamo: bool):
    """A two-layer QAT MLP whose activations are quantized with a straight-through estimator."""
    import torch

    class STEQuant(torch.nn.Module):  # QCFS with a straight-through estimator, as QAT code writes it
        def __init__(self, levels: int, lam: float) -> None:
            super().__init__()
            self.levels, self.lam = levels, torch.nn.Parameter(torch.tensor(lam))

        def forward(self, x):
            xc = torch.clamp(x / self.lam, 0, 1)
            q = torch.floor(xc * self.levels + 0.5) / self.levels
            return (xc + (q - xc).detach()) * self.lam

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(64, 48),
        STEQuant(4, 1.5),
        torch.nn.Linear(48, 32),
        STEQuant(4, 2.0),
        torch.nn.Linear(32, 10),
    ).eval()
    return models.torch_export(net, np.zeros((1, 1, 8, 8), np.float32), dynamo=dynamo)


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_ste_quantized_torch_net_is_reproduced_exactly_at_T_equal_L(digits, dynamo):
    """As the chain-form QCFS net above: with T = L and v(0) = θ/2 (data-free) the first layer's
    spike counts are its quantized activations and the read-out layer is compensated exactly."""
    model = _ste_mlp(dynamo)
    program = _sites(model)
    assert len(program.sites) == 2 and not program.rejected
    assert all(s.transfer.kind is ActivationKind.QUANTIZED for s in program.sites.values())
    assert {s.transfer.levels for s in program.sites.values()} == {4}
    x = digits[0]
    (ann,) = run(model, x)
    (out,) = run(icsnn_onnx.convert(model, None, T=4), x)
    assert np.allclose(out, ann, atol=1e-4 * np.abs(ann).max())
    (plain,) = run(icsnn_onnx.convert(model, None, T=4, compensation=False), x)
    assert not np.allclose(plain, ann, atol=1e-2 * np.abs(ann).max())


def test_integer_elementwise_ops_are_shape_arithmetic_not_activation_candidates():
    """ViT-style exports compute shapes with Equal/Where on int64: no site, and not named as a
    rejected activation either (the reason a model fails must be its real nonlinearities)."""
    from onnx import TensorProto

    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Equal", ["s", "minus_one"], ["e"], name="is_dynamic"),
        helper.make_node("Where", ["e", "one", "s"], ["dims"], name="pick"),
        helper.make_node("Reshape", ["x", "dims"], ["r"]),
        helper.make_node("Relu", ["r"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "shapes",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
        [
            onnx.numpy_helper.from_array(np.array([-1, -1], np.int64), "minus_one"),
            onnx.numpy_helper.from_array(np.array([1, 1], np.int64), "one"),
        ],
    )
    program = _sites(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10))
    assert list(program.sites) == ["relu"]
    assert not program.rejected
