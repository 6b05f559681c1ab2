"""The defaults chosen by measurement (docs/method.md §13): ``--init auto`` and what it resolves
to, mse thresholds at every T, channel-wise thresholds, clipped activations fitted below λ."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import icsnn_onnx
from icsnn_onnx.contract import INIT_METHOD_KEY, THRESHOLD_METHOD_KEY, metadata_key
from icsnn_onnx.options import AUTO_CALIBRATED_MAX_T, ConversionOptions, InitPolicy, resolve_init
from icsnn_onnx.passes import PassManager, PreconditionError
from icsnn_onnx.passes.activations import RecognizeActivations
from icsnn_onnx.passes.canonicalize import Canonicalize, import_model
from icsnn_onnx.passes.initial_potential import InitialPotential
from icsnn_onnx.passes.thresholds import NormalizeThresholds

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits"


def _meta(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


@pytest.mark.parametrize(
    ("fields", "has_data", "expected"),
    [
        ({}, True, "calibrated"),
        ({}, False, "half"),
        ({"T": AUTO_CALIBRATED_MAX_T}, True, "calibrated"),
        ({"T": AUTO_CALIBRATED_MAX_T + 1}, True, "half"),
        ({"T": 8, "layout": "loop"}, True, "calibrated"),  # the layout does not enter
        ({"init": "zero"}, True, "zero"),
        ({"init": "half"}, True, "half"),
        ({"init": "calibrated"}, False, "calibrated"),  # asked for: the pass says what is missing
    ],
)
def test_auto_init_resolves_by_data_and_T(fields: dict, has_data: bool, expected: str) -> None:
    assert resolve_init(ConversionOptions(**fields), has_data) is InitPolicy(expected)


def test_auto_init_takes_half_where_alg2s_unrolled_trial_would_not_fit() -> None:
    assert resolve_init(ConversionOptions(T=8), True, trial_fits=False) is InitPolicy.HALF
    assert (
        resolve_init(ConversionOptions(T=8, init="calibrated"), True, trial_fits=False)
        is InitPolicy.CALIBRATED
    )


def test_defaults_are_auto_init_mse_channel_wise() -> None:
    options = ConversionOptions()
    assert options.init is InitPolicy.AUTO and options.channel_wise and options.compensation
    assert all(ConversionOptions(T=T).threshold_method == "mse" for T in (1, 16, 32, 1024))


@pytest.mark.parametrize(("T", "method"), [(8, "calibrated"), (AUTO_CALIBRATED_MAX_T + 1, "half")])
def test_metadata_records_what_auto_resolved_to_whatever_the_layout(T: int, method: str) -> None:
    calib = np.load(EXAMPLE / "calib.npz")["x"][:64]
    x = np.load(EXAMPLE / "test.npz")["x"][:50]
    outputs = []
    for layout in ("loop", "step-major") if T <= 8 else ("loop",):
        snn = icsnn_onnx.convert(EXAMPLE / "digits_cnn.onnx", calib, T=T, layout=layout)
        meta = _meta(snn)
        assert meta[metadata_key("init")] == "auto" and meta[INIT_METHOD_KEY] == method
        assert meta[THRESHOLD_METHOD_KEY] == "mse" and meta[metadata_key("channel_wise")] == "True"
        outputs.append(icsnn_onnx.Session(snn, provider="cpu").run(x))
    # The same potentials in every layout: the same function (to float32 summation order).
    assert all(np.allclose(o[k], outputs[0][k], atol=1e-5) for o in outputs for k in o)


def test_unresolved_auto_init_is_refused_by_the_pass_that_needs_it() -> None:
    program = import_model(_clipped_mlp(6.0), ConversionOptions(init="auto"))
    with pytest.raises(PreconditionError, match=r"InitialPotential.*resolved first"):
        PassManager([Canonicalize(), RecognizeActivations(), NormalizeThresholds(None), InitialPotential()])(
            program
        )


def _clipped_mlp(bound: float, op: str = "Clip") -> onnx.ModelProto:
    """x[N,8] → MatMul → Clip(0, bound) (or QCFS-like quantizer) → MatMul → y[N,3]."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 6)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.5, (6, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(bound, np.float32), "bound"),
    ]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["z"], name="fc1")]
    if op == "Clip":
        nodes.append(helper.make_node("Clip", ["z", "zero", "bound"], ["a"], name="act"))
    else:  # λ/L · clip(floor(z·L/λ + 1/2), 0, L) with L = 4
        inits += [
            numpy_helper.from_array(np.array(4.0 / bound, np.float32), "scale"),
            numpy_helper.from_array(np.array(0.5, np.float32), "half"),
            numpy_helper.from_array(np.array(4.0, np.float32), "levels"),
            numpy_helper.from_array(np.array(bound / 4.0, np.float32), "step"),
        ]
        nodes += [
            helper.make_node("Mul", ["z", "scale"], ["zs"]),
            helper.make_node("Add", ["zs", "half"], ["zh"]),
            helper.make_node("Floor", ["zh"], ["zf"]),
            helper.make_node("Clip", ["zf", "zero", "levels"], ["zc"]),
            helper.make_node("Mul", ["zc", "step"], ["a"], name="act"),
        ]
    nodes.append(helper.make_node("MatMul", ["a", "w2"], ["y"], name="fc2"))
    graph = helper.make_graph(
        nodes,
        "clipped",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _thresholds(model: onnx.ModelProto, calib: np.ndarray | None, **fields: object) -> np.ndarray:
    from icsnn_onnx.data import Dataset

    program = import_model(model, ConversionOptions(**fields))
    data = Dataset({"x": calib}) if calib is not None else None
    PassManager([Canonicalize(), RecognizeActivations(), NormalizeThresholds(data)])(program)
    (theta,) = program.thresholds.values()
    return np.asarray(theta)


def test_clipped_threshold_is_fitted_below_its_bound_with_data() -> None:
    model = _clipped_mlp(6.0)
    calib = np.random.default_rng(1).normal(0, 1, (512, 8)).astype(np.float32)
    z = np.maximum(calib @ numpy_helper.to_array(model.graph.initializer[0]), 0)
    assert z.max() < 6.0  # the ReLU6 never reaches its bound on these data
    assert np.all(_thresholds(model, None) == 6.0)  # no data: θ = λ
    maxed = _thresholds(model, calib, threshold="max")
    np.testing.assert_allclose(maxed.ravel(), z.max(axis=0), rtol=1e-6)  # per channel, below λ
    fitted = _thresholds(model, calib, T=2)
    assert np.all(fitted <= maxed.ravel() + 1e-6) and np.all(fitted < 6.0)


def test_clipped_threshold_never_exceeds_its_bound() -> None:
    model = _clipped_mlp(0.5)  # most activations saturate at λ = 0.5
    calib = np.random.default_rng(1).normal(0, 3, (512, 8)).astype(np.float32)
    theta = _thresholds(model, calib, threshold="max")
    assert np.all(theta <= 0.5) and np.any(theta == np.float32(0.5))


def test_quantized_threshold_keeps_its_bound_with_data() -> None:
    model = _clipped_mlp(2.0, op="quantized")
    calib = np.random.default_rng(1).normal(0, 1, (256, 8)).astype(np.float32)
    assert np.all(_thresholds(model, calib) == 2.0)  # its L levels are what the SNN reproduces


def test_clipped_net_with_data_converts_closer_at_small_T() -> None:
    """The point of fitting: at T = 2 a ReLU6 whose activations stay near 1 loses its signal to
    levels of 3 with θ = 6; a fitted θ keeps it."""
    model = _clipped_mlp(6.0)
    rng = np.random.default_rng(2)
    calib, x = (rng.normal(0, 1, (n, 8)).astype(np.float32) for n in (512, 256))
    import onnxruntime as ort

    ann = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]

    def error(calib_data: np.ndarray | None) -> float:
        snn = icsnn_onnx.convert(model, calib_data, T=2, init="half")
        out = icsnn_onnx.Session(snn, provider="cpu").run({"x": x})["y"]
        return float(np.abs(out - ann).mean())

    assert error(calib) < 0.7 * error(None)
