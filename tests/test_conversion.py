"""ANN vs SNN agreement in ONNX Runtime, on models made by different tools."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import icsnn_onnx
from icsnn_onnx import UnsupportedOperatorError
from icsnn_onnx.contract import SnnMetadata
from tests import models
from tests.conftest import relative_error, run


def _flat(digits):
    x, y = digits
    return x.reshape(len(x), -1), y


BUILDERS = {
    "helper-opset9-mlp": lambda d: (models.mlp_opset9(), _flat(d)[0]),
    "helper-opset21-cnn-bn": lambda d: (models.cnn_bn(21), d[0]),
    "helper-opset11-cnn-bn": lambda d: (models.cnn_bn(11), d[0]),
    "helper-residual": lambda d: (models.residual_block(), d[0]),
    "helper-concat": lambda d: (models.concat_block(), d[0]),
    "helper-standalone-bn": lambda d: (models.standalone_bn(), d[0]),
    "helper-linear-zoo": lambda d: (models.linear_zoo(), d[0]),
    "torch-legacy": lambda d: (models.torch_export(models.torch_cnn(), d[0][:2], dynamo=False), d[0]),
    "torch-dynamo": lambda d: (models.torch_export(models.torch_cnn(), d[0][:2], dynamo=True), d[0]),
    "torch-densenet-block": lambda d: (
        models.torch_export(models.torch_densenet_block(), d[0][:2], dynamo=False),
        d[0],
    ),
    "torch-inverted-residual": lambda d: (
        models.torch_export(models.torch_inverted_residual(), d[0][:2], dynamo=True),
        d[0],
    ),
}


FLUCTUATING = {"torch-densenet-block", "torch-inverted-residual"}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def case(request, digits):
    model, x = BUILDERS[request.param](digits)
    return request.param, model, x


def test_snn_converges_to_ann_as_T_grows(case):
    name, model, x = case
    calib, test = x[:400], x[400:900]
    (ann,) = run(model, test)
    errors, agreement = {}, {}
    for T in (8, 32, 128, 512):
        # T = 512 in the loop layout: an unrolled graph that size takes ONNX Runtime long to load.
        snn = icsnn_onnx.convert(
            model,
            calib,
            T=T,
            threshold="max",
            init="half",
            channel_wise=False,
            layout="loop" if T > 128 else "step-major",
        )
        (out,) = run(snn, test)
        assert out.shape == ann.shape and out.dtype == ann.dtype
        errors[T] = relative_error(out, ann)
        agreement[T] = float(np.mean(out.argmax(1) == ann.argmax(1)))
    # Error shrinks, and like 1/T once θ/T is below the activations' scale (4x more steps
    # → ~4x less error; allow slack). A ReLU6 site has θ = 6 whatever its activations, so
    # its 1/T regime starts later than a calibrated ReLU's.
    # In the deeper blocks part of the error comes from currents that fluctuate from step to step
    # (spike trains of the layers before), which falls like 1/sqrt(T) (docs/method.md §10).
    factor = 1.8 if name in FLUCTUATING else 2.5
    assert errors[8] > errors[32], errors
    assert errors[128] < errors[32] / factor, errors
    assert errors[512] < errors[128] / factor, errors
    assert errors[512] < 0.03, errors
    # Random-weight nets have small logit margins: the class agrees once the error is tiny.
    assert agreement[512] >= 0.98, (name, agreement)


def test_sklearn_mlp_classifier(digits):
    x, y = _flat(digits)
    model = models.sklearn_mlp(x[:1200], y[:1200])
    test = x[1200:]
    label_ann, proba_ann = run(model, test)
    snn = icsnn_onnx.convert(model, x[:400], T=128, threshold="max")
    assert [o.name for o in snn.graph.output] == ["label", "probabilities"]
    label_snn, proba_snn = run(snn, test)
    assert np.allclose(proba_snn.sum(1), 1, atol=1e-5)  # Softmax applied once, to the read-out
    assert np.mean(label_snn == label_ann) >= 0.97
    assert np.abs(proba_snn - proba_ann).mean() < 0.02


def test_trained_example_reaches_ann_accuracy():
    """The shipped digits CNN (trained, BN, AvgPool) keeps its accuracy at T=32."""
    from pathlib import Path

    here = Path(__file__).resolve().parents[1] / "examples" / "digits"
    test = np.load(here / "test.npz")
    snn = icsnn_onnx.convert(here / "digits_cnn.onnx", here / "calib.npz", T=32)
    (ann,) = run(onnx.load(here / "digits_cnn.onnx"), test["x"])
    (out,) = run(snn, test["x"])
    ann_acc = np.mean(ann.argmax(1) == test["y"])
    snn_acc = np.mean(out.argmax(1) == test["y"])
    assert snn_acc >= ann_acc - 0.01, (ann_acc, snn_acc)


def _with_nodes_between(extra: list[onnx.NodeProto], extra_inits: dict | None = None) -> onnx.ModelProto:
    """Conv-ReLU → extra nodes (reading a1, writing e) → Conv-ReLU → Flatten → Gemm."""
    nodes = [
        helper.make_node("Conv", ["x", "c1"], ["h1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["h1"], ["a1"], name="relu1"),
        *extra,
        helper.make_node("Conv", ["e", "c2"], ["h2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["h2"], ["a2"], name="relu2"),
        helper.make_node("Flatten", ["a2"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1, name="fc"),
    ]
    inits = {
        "c1": models._w(4, 1, 3, 3),
        "c2": models._w(4, 4, 3, 3),
        "cm": models._w(4, 4, 1, 1),
        "fc": models._w(10, 256),
    }
    return models.make_model(nodes, {**inits, **(extra_inits or {})}, ["N", 1, 8, 8], ["N", 10])


def test_nonlinear_ops_between_neurons_are_neurons_or_compensated_units(digits):
    """relu → sigmoid is one region: one sigma-delta neuron of sigmoid(relu(x)); so is the square
    m·m, an elementwise function of one tensor; LpPool, which is not, is a compensated unit; the
    converted net follows its ANN."""
    model = _with_nodes_between(
        [
            helper.make_node("Sigmoid", ["a1"], ["s"], name="gate"),
            helper.make_node("LpPool", ["s"], ["m"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
            helper.make_node("Mul", ["m", "m"], ["sq"], name="square"),
            helper.make_node("Pad", ["sq", "pads"], ["e"], mode="edge", name="pad"),
        ],
        extra_inits={"pads": np.array([0, 0, 2, 2, 0, 0, 2, 2], np.int64)},
    )
    x = digits[0][:50]
    snn = icsnn_onnx.convert(model, x, T=32)
    meta = SnnMetadata.read({p.key: p.value for p in snn.metadata_props})
    assert [(s["site"], s["kind"]) for s in meta.neurons] == [
        ("relu1", "sigma-delta"),
        ("square", "sigma-delta"),
        ("relu2", "if"),
    ]
    assert [u["ops"] for u in meta.compensated] == [["LpPool"]]
    ann = run(model, x)[0]
    assert relative_error(run(snn, x)[0], ann) < 0.05


def test_unsupported_ops_are_all_reported_at_once(digits):
    """Random ops cannot be compensated (a mean of draws is no draw): every one named at once."""
    model = _with_nodes_between(
        [
            helper.make_node("RandomNormalLike", ["a1"], ["n1"], name="noise1"),
            helper.make_node("Add", ["a1", "n1"], ["s"], name="plus"),
            helper.make_node("RandomUniformLike", ["s"], ["n2"], name="noise2"),
            helper.make_node("Mul", ["s", "n2"], ["e"], name="times"),
        ]
    )
    with pytest.raises(UnsupportedOperatorError) as info:
        icsnn_onnx.convert(model, digits[0][:50], T=4)
    assert {n.name for n in info.value.nodes} == {"noise1", "noise2"}
    message = str(info.value)
    assert (
        "noise1 (RandomNormalLike → n1): a random op" in message
        and "noise2 (RandomUniformLike → n2)" in message
    )


def test_leaky_relu_between_neurons_is_a_sigma_delta_neuron_noting_why_it_is_no_if_neuron(digits):
    model = _with_nodes_between(
        [
            helper.make_node("Conv", ["a1", "cm"], ["hm"], name="conv_mid"),
            helper.make_node("LeakyRelu", ["hm"], ["e"], alpha=0.1, name="leaky"),
        ]
    )
    (site,) = [s for s in icsnn_onnx.inspect_model(model).sites if s.name == "leaky"]
    assert site.neuron == "sigma-delta" and site.transfer.describe() == "leaky relu (0.1)"
    assert "0 for negative inputs" in site.note


def test_nonlinear_ops_outside_the_spiking_part_are_allowed(digits):
    """A Sigmoid on the (time-invariant) input and a Softmax/ArgMax head convert exactly."""
    nodes = [
        helper.make_node("Sigmoid", ["x"], ["xs"], name="input_squash"),
        helper.make_node("Conv", ["xs", "c1"], ["h1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h1"], ["a1"]),
        helper.make_node("Flatten", ["a1"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["y"], axis=1),
    ]
    model = models.make_model(
        nodes, {"c1": models._w(4, 1, 3, 3), "fc": models._w(10, 256)}, ["N", 1, 8, 8], ["N", 10]
    )
    x = digits[0][:300]
    snn = icsnn_onnx.convert(model, x, T=256, threshold="max")
    (ann,), (out,) = run(model, x), run(snn, x)
    assert np.allclose(out.sum(1), 1, atol=1e-5)
    assert np.mean(out.argmax(1) == ann.argmax(1)) > 0.97
    softmax_nodes = [n for n in snn.graph.node if n.op_type == "Softmax"]
    assert len(softmax_nodes) == 1  # applied once, to the read-out


def test_model_without_activation_is_rejected(digits):
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w"], ["y"], transB=1)]
    model = models.make_model(nodes, {"w": models._w(10, 64)}, ["N", 1, 8, 8], ["N", 10])
    with pytest.raises(icsnn_onnx.ConversionError, match="no nonlinear activation"):
        icsnn_onnx.convert(model, digits[0][:10], T=4)


@pytest.mark.parametrize(
    "activation,names",
    [
        ([helper.make_node("Sigmoid", ["h"], ["a"], name="sig")], ["sig"]),
        (  # SiLU as EfficientNet exports it: x·sigmoid(x)
            [
                helper.make_node("Sigmoid", ["h"], ["s"], name="sig"),
                helper.make_node("Mul", ["h", "s"], ["a"], name="silu"),
            ],
            ["sig", "silu"],
        ),
        ([helper.make_node("Gelu", ["h"], ["a"], name="gelu")], ["gelu"]),
    ],
    ids=["sigmoid", "silu", "gelu"],
)
def test_a_model_without_relu_converts_its_activations_to_sigma_delta_neurons(digits, activation, names):
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"]),
        helper.make_node("Gemm", ["f", "w"], ["h"], transB=1),
        *activation,
        helper.make_node("Gemm", ["a", "w2"], ["y"], transB=1),
    ]
    model = models.make_model(
        nodes, {"w": models._w(16, 64), "w2": models._w(10, 16)}, ["N", 1, 8, 8], ["N", 10]
    )
    report = icsnn_onnx.inspect_model(model)
    (site,) = report.sites
    assert list(site.nodes) == names and site.neuron == "sigma-delta" and report.convertible
    assert report.spiking_share == 1.0 and not report.units
    x = digits[0][:64]
    ann = run(model, x)[0]
    # its only neurons feed the read-out: compensated, it is exact at any T (float rounding)
    assert relative_error(run(icsnn_onnx.convert(model, x, T=4), x)[0], ann) < 1e-5
    errors = [
        relative_error(run(icsnn_onnx.convert(model, x, T=T, compensation=False), x)[0], ann) for T in (4, 64)
    ]
    assert errors[1] < errors[0] / 4 and errors[1] < 0.02, errors


def test_missing_calibration_is_reported():
    with pytest.raises(icsnn_onnx.CalibrationError, match="need calibration data"):
        icsnn_onnx.convert(models.cnn_bn(), None, T=4)


def test_clipped_network_needs_no_calibration(digits):
    """ReLU6/Clip sites take θ = λ from the graph: no data needed."""
    nodes = [
        helper.make_node("Conv", ["x", "c1"], ["h1"], pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["h1", "zero", "six"], ["a1"]),
        helper.make_node("Flatten", ["a1"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
    ]
    inits = {
        "c1": models._w(4, 1, 3, 3, scale=3.0),
        "fc": models._w(10, 256),
        "zero": np.zeros((), np.float32),
        "six": np.full((), 6.0, np.float32),
    }
    model = models.make_model(nodes, inits, ["N", 1, 8, 8], ["N", 10])
    snn = icsnn_onnx.convert(model, None, T=64)
    thresholds = [
        onnx.numpy_helper.to_array(i) for i in snn.graph.initializer if i.name.endswith(".threshold")
    ]
    assert len(thresholds) == 1 and float(thresholds[0]) == 6.0
    (ann,), (out,) = run(model, digits[0][:200]), run(snn, digits[0][:200])
    assert relative_error(out, ann) < 0.05


def test_multi_input_model(digits, tmp_path):
    x = digits[0][:600]
    features = np.random.default_rng(0).normal(size=(600, 5)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", image=x[:300], features=features[:300])
    model = models.two_inputs()
    snn = icsnn_onnx.convert(model, tmp_path / "calib.npz", T=256, threshold="max")
    assert [i.name for i in snn.graph.input] == ["image", "features"]
    feeds = {"image": x[300:], "features": features[300:]}
    (ann,), (out,) = run(model, feeds), run(snn, feeds)
    assert relative_error(out, ann) < 0.02


def test_external_data_model(digits, tmp_path):
    model = models.cnn_bn()
    (ann,) = run(model, digits[0][200:400])  # before saving: external-data saving rewrites the proto
    onnx.save(
        model,
        tmp_path / "ext.onnx",
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.weights",
        size_threshold=0,
    )
    assert (tmp_path / "ext.weights").exists()
    snn = icsnn_onnx.convert(tmp_path / "ext.onnx", digits[0][:200], T=64, threshold="max")
    (out,) = run(snn, digits[0][200:400])
    assert relative_error(out, ann) < 0.05


def test_ir3_model_with_weights_listed_as_inputs_converts(digits):
    """IR version 3 (the ONNX model zoo's opset-9 graphs): every initializer is also a graph
    input. They become constants, and the model must then say IR 4 for the version converter."""
    model = models.mlp_opset9()
    model.ir_version = 3
    onnx.checker.check_model(model)
    x = digits[0].reshape(len(digits[0]), -1)
    snn = icsnn_onnx.convert(model, x[:64], T=64)
    (ann,), (out,) = run(model, x), run(snn, x)
    assert [i.name for i in snn.graph.input] == ["x"]
    assert (out.argmax(1) == ann.argmax(1)).mean() > 0.97
