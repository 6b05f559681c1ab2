"""The ``cpu`` target: the channelwise IF neuron computes bit for bit what the IF equations do,
in numpy and in ONNX Runtime, and a model compiled for it agrees with the portable one."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import icsnn_onnx
from icsnn_onnx.cli import main
from icsnn_onnx.contract import NEURON_DOMAIN
from icsnn_onnx.neurons import IF, IF_CHANNELWISE
from icsnn_onnx.neurons import if_channelwise as channelwise
from icsnn_onnx.neurons import if_neuron as neuron
from tests import models
from tests.conftest import run
from tests.test_conversion import BUILDERS

C = 16  # one block of ONNX Runtime's blocked channel layout


def _thresholds(rng: np.random.Generator) -> np.ndarray:
    """Per-channel θ over 60 decades, with exact powers of two (the spacing changes there)."""
    theta = (10.0 ** rng.uniform(-25, 25, C)).astype(np.float32)
    theta[:5] = [1.0, 0.5, 3.0, 2.0**-20, 0.1]
    return theta


def _adversarial_currents(theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[N, C, 4, 4] values at and around each channel's θ (its float neighbours), zeros, ±inf,
    huge and tiny values, and random ones on θ's scale."""
    cases = []
    for t in theta:
        below = np.nextafter(t, np.float32(0))
        cases.append(
            [
                t,
                below,
                np.nextafter(below, np.float32(0)),
                np.nextafter(t, np.float32(np.inf)),
                0.0,
                -0.0,
                -t,
                t / 2,
                2 * t,
                t * 1e6,
                -3e38,
                3e38,
                1e-45,
                np.inf,
                -np.inf,
                t * 0.999999,
            ]
        )
    special = np.asarray(cases, np.float32).reshape(1, C, 4, 4)
    noise = (rng.standard_normal((3, C, 4, 4)) * theta.reshape(1, C, 1, 1) * 2).astype(np.float32)
    return np.concatenate([special, noise])


def test_channelwise_step_matches_the_equations_bit_for_bit():
    rng = np.random.default_rng(0)
    theta = _thresholds(rng)
    z = _adversarial_currents(theta, rng)
    parameters = channelwise.channelwise_parameters(theta)
    for v in (np.zeros_like(z), (rng.uniform(-1, 1, z.shape) * theta.reshape(1, C, 1, 1)).astype(np.float32)):
        with np.errstate(invalid="ignore", over="ignore"):
            expected = neuron.if_step(v, z, theta.reshape(C, 1, 1))
        got = channelwise.if_step_channelwise(v, z, parameters)
        for e, g in zip(expected, got, strict=True):
            assert g.dtype == np.float32
            assert np.array_equal(e, g, equal_nan=True)


def _channelwise_model(T: int, parameters: dict[str, np.ndarray]) -> onnx.ModelProto:
    """IFNeuronChannelwise applied T times, v(0) and z_1..z_T as inputs, every out_t and v_t out."""
    shape = ["N", C, 4, 4]
    nodes, v = [], "v0"
    for t in range(1, T + 1):
        nodes.append(
            helper.make_node(
                IF_CHANNELWISE.op_type,
                [v, f"z{t}", *IF_CHANNELWISE.parameters],
                [f"out{t}", f"v{t}"],
                domain=NEURON_DOMAIN,
                channels=C,
            )
        )
        v = f"v{t}"
    graph = helper.make_graph(
        nodes,
        "channelwise",
        [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, shape)
            for n in ["v0"] + [f"z{t}" for t in range(1, T + 1)]
        ],
        [
            helper.make_tensor_value_info(f"{k}{t}", TensorProto.FLOAT, shape)
            for t in range(1, T + 1)
            for k in ("out", "v")
        ],
        [onnx.numpy_helper.from_array(value, name) for name, value in parameters.items()],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(NEURON_DOMAIN, 1)],
        functions=[IF_CHANNELWISE.function_proto(21)],
        ir_version=10,
    )
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize(
    "level", [ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL]
)
def test_channelwise_function_in_onnx_runtime_matches_the_reference(level):
    """With all optimizations (ONNX Runtime's blocked layout and fusions) and with none."""
    rng = np.random.default_rng(1)
    theta = _thresholds(rng)
    T = 5
    z = np.stack([_adversarial_currents(theta, rng) for _ in range(T)])
    z = np.where(np.isfinite(z), z, np.float32(0))  # finite traces: v stays comparable
    v0 = (rng.uniform(0, 1, z.shape[1:]) * theta.reshape(1, C, 1, 1)).astype(np.float32)
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    session = ort.InferenceSession(
        _channelwise_model(T, channelwise.channelwise_parameters(theta)).SerializeToString(),
        options,
        providers=["CPUExecutionProvider"],
    )
    outputs = session.run(None, {"v0": v0, **{f"z{t}": z[t - 1] for t in range(1, T + 1)}})
    with np.errstate(over="ignore"):  # 3e38 + v overflows to inf, in ONNX Runtime too
        trace = neuron.simulate(z, neuron.IFParams(theta.reshape(C, 1, 1), v0))
    assert np.array_equal(np.stack(outputs[0::2]), trace.out)
    assert np.array_equal(np.stack(outputs[1::2]), trace.v[1:])


def test_channelwise_parameters_need_a_representable_scale():
    with pytest.raises(ValueError, match="too small"):
        channelwise.channelwise_parameters(np.array([1.0, 1e-35], np.float32))


def _meta(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def _wide_cnn() -> onnx.ModelProto:
    """Conv(16)-ReLU, a 16-channel residual block, Conv(32)-ReLU, pooled linear head: every site
    fits the channelwise neuron."""
    rng = np.random.default_rng(2)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)

    nodes = [
        helper.make_node("Conv", ["x", "c1", "b1"], ["h1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h1"], ["a1"]),
        helper.make_node("Conv", ["a1", "c2", "b2"], ["h2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h2"], ["a2"]),
        helper.make_node("Add", ["a1", "a2"], ["r"]),
        helper.make_node("Conv", ["r", "c3", "b3"], ["h3"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["h3"], ["a3"]),
        helper.make_node("GlobalAveragePool", ["a3"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], transB=1),
    ]
    inits = {
        "c1": w(16, 1, 3, 3),
        "b1": w(16) * 0.1,
        "c2": w(16, 16, 3, 3),
        "b2": w(16) * 0.1,
        "c3": w(32, 16, 3, 3),
        "b3": w(32) * 0.1,
        "fc": w(10, 32),
        "fcb": w(10) * 0.1,
    }
    return models.make_model(nodes, inits, ["N", 1, 8, 8], ["N", 10])


@pytest.mark.parametrize("layout", ["step-major", "time-batched"])
@pytest.mark.parametrize(
    "settings",
    [{}, {"channel_wise": True, "init": "calibrated"}, {"per_step": True, "init": "zero"}],
    ids=["defaults", "per-channel-theta-and-v0", "per-step-zero-init"],
)
def test_cpu_target_agrees_with_portable(digits, layout, settings):
    x = digits[0]
    model = _wide_cnn()
    portable = icsnn_onnx.convert(model, x[:200], T=6, layout=layout, **settings)
    cpu = icsnn_onnx.convert(model, x[:200], T=6, layout=layout, target="cpu", **settings)
    meta = _meta(cpu)
    assert meta["icsnn.target"] == "cpu" and meta["icsnn.channelwise_sites"] == "3"
    ops = {n.op_type for n in cpu.graph.node}
    assert IF_CHANNELWISE.op_type in ops and IF.op_type not in ops
    assert {f.name for f in cpu.functions} == {IF_CHANNELWISE.op_type}
    for a, b in zip(run(portable, x[200:328]), run(cpu, x[200:328]), strict=True):
        assert a.shape == b.shape
        # ONNX Runtime fuses z + v into the convolution there, which rounds m differently
        assert np.allclose(a, b, rtol=1e-5, atol=1e-5)


def test_sites_the_channelwise_neuron_does_not_fit_stay_elementwise(digits):
    """8 channels (not a layout block), a rank-2 site: the portable neuron, in the same model."""
    model, x = BUILDERS["helper-opset21-cnn-bn"](digits)  # sites: 8-channel conv, 16-channel conv
    cpu = icsnn_onnx.convert(model, x[:200], T=4, target="cpu")
    assert _meta(cpu)["icsnn.channelwise_sites"] == "1"
    assert {f.name for f in cpu.functions} == {IF.op_type, IF_CHANNELWISE.op_type}
    portable = icsnn_onnx.convert(model, x[:200], T=4)
    assert "icsnn.channelwise_sites" not in _meta(portable)
    assert np.allclose(run(portable, x[:64])[0], run(cpu, x[:64])[0], rtol=1e-5, atol=1e-5)
    mlp, flat = BUILDERS["helper-opset9-mlp"](digits)
    assert _meta(icsnn_onnx.convert(mlp, flat[:200], T=4, target="cpu"))["icsnn.channelwise_sites"] == "0"


def test_target_option_is_validated_and_reaches_the_model(digits, tmp_path, capsys):
    with pytest.raises(ValueError, match="target"):
        icsnn_onnx.convert(_wide_cnn(), digits[0][:50], T=4, target="gpu")
    src, calib, out = tmp_path / "wide.onnx", tmp_path / "calib.npz", tmp_path / "wide.snn.onnx"
    onnx.save(_wide_cnn(), src)
    np.savez(calib, x=digits[0][:100])
    assert (
        main(["convert", str(src), "--calib", str(calib), "-T", "4", "--target", "cpu", "-o", str(out), "-q"])
        == 0
    )
    assert "cpu target" in capsys.readouterr().out
    assert _meta(onnx.load(out))["icsnn.target"] == "cpu"


def test_runtime_warns_when_a_cpu_target_model_runs_elsewhere():
    from icsnn_onnx.contract import SnnMetadata
    from icsnn_onnx.runtime.providers import CPU, CUDA, target_mismatch

    def snn(target: str) -> SnnMetadata:
        return SnnMetadata(T=4, target=target, layout="step-major", converter_version="x")

    assert target_mismatch(snn("cpu"), CPU) is None
    assert target_mismatch(snn("portable"), CUDA) is None
    assert target_mismatch(None, CUDA) is None  # not an SNN icsnn-onnx wrote
    assert "--target portable" in target_mismatch(snn("cpu"), CUDA)


def test_rate_encoder_of_a_wide_input_runs_channelwise_too():
    """A 16-channel image's rate encoder is an IF population like any site (θ = 1)."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["x", "c1", "b1"], ["h1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h1"], ["a1"]),
        helper.make_node("GlobalAveragePool", ["a1"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], transB=1),
    ]
    inits = {
        "c1": (rng.standard_normal((16, 16, 3, 3)) / 12).astype(np.float32),
        "b1": (rng.standard_normal(16) * 0.1).astype(np.float32),
        "fc": (rng.standard_normal((10, 16)) / 4).astype(np.float32),
        "fcb": np.zeros(10, np.float32),
    }
    model = models.make_model(nodes, inits, ["N", 16, 8, 8], ["N", 10])
    x = rng.random((264, 16, 8, 8), dtype=np.float32)
    portable = icsnn_onnx.convert(model, x[:200], T=8, encoding="rate")
    cpu = icsnn_onnx.convert(model, x[:200], T=8, encoding="rate", target="cpu")
    assert _meta(cpu)["icsnn.channelwise_sites"] == "2"  # the encoder and the ReLU site
    assert np.allclose(run(portable, x[200:])[0], run(cpu, x[200:])[0], rtol=1e-5, atol=1e-5)


def test_runtime_orders_a_cpu_target_model_by_priority(digits, tmp_path):
    """Step by step, so each step's tensors are freed (peak memory, see runtime/session.py)."""
    import onnxruntime

    from icsnn_onnx.runtime import Session

    x = digits[0]
    cpu = icsnn_onnx.convert(_wide_cnn(), x[:100], T=4, target="cpu")
    path = tmp_path / "cpu.snn.onnx"
    icsnn_onnx.save_model(cpu, path)
    portable = icsnn_onnx.convert(_wide_cnn(), x[:100], T=4)

    def order(model) -> onnxruntime.ExecutionOrder:
        return Session(model, provider="cpu")._session.get_session_options().execution_order

    for model in (cpu, cpu.SerializeToString(), path, str(path)):
        assert order(model) == onnxruntime.ExecutionOrder.PRIORITY_BASED
    assert order(portable) == onnxruntime.ExecutionOrder.DEFAULT
