"""Graded spikes (--levels K): the neuron against its reference and ONNX Runtime, the identity and
no-lag bound it obeys, Alg 2's one-run analysis of it, and the exact b-bit equivalence at T = 1."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import icsnn_onnx
from icsnn_onnx.contract import NEURON_DOMAIN
from icsnn_onnx.neurons import count_breakpoint, graded_if, kind_of, sigma_delta
from icsnn_onnx.neurons.graded import graded_signed
from icsnn_onnx.runtime.instrument import expose
from tests import models
from tests.conftest import run, unrolled_kind
from tests.test_sigma_delta import SILU

S = lambda v: np.asarray(v, np.float32)  # noqa: E731 - scalar constant


def _reference(kind, z: np.ndarray, theta, v0) -> tuple[np.ndarray, np.ndarray]:
    steps = list(kind.steps(z, {"theta": np.asarray(theta, z.dtype)}, {"v": np.asarray(v0, z.dtype)}))
    return np.stack([s["out"] for s in steps]), np.stack([s["v_next"] for s in steps])


KINDS = {
    "if K=3": lambda: graded_if(3),
    "if K=15": lambda: graded_if(15),
    "signed K=4": lambda: graded_signed(4),
}


@pytest.mark.parametrize("name", sorted(KINDS))
def test_the_reference_is_what_onnx_runtime_computes(name):
    kind, T, theta, v0 = KINDS[name](), 6, 0.25, 0.125
    z = np.random.default_rng(0).normal(0.3, 0.8, (T, 500)).astype(np.float32)
    outs = run(
        unrolled_kind(kind, T, [500]), {f"z{t}": z[t] for t in range(T)} | {"theta": S(theta), "v0": S(v0)}
    )
    out, v = _reference(kind, z, theta, v0)
    np.testing.assert_array_equal(np.stack(outs[:T]), out)
    np.testing.assert_allclose(np.stack(outs[T:]), v, atol=1e-6)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_levels_are_bounded_and_the_identity_holds(name):
    """s(t) ∈ {lo … hi} and θ·Σs = Σz − (v(t) − v(0)) at every step (reset by what was emitted)."""
    kind = KINDS[name]()
    lo, hi = (float(dict(kind.constants)[b]) for b in ("lo", "hi"))
    z = np.random.default_rng(1).normal(0.2, 2.0, (20, 2000))
    theta, v0 = 0.3, 0.15
    steps = list(kind.steps(z, {"theta": theta}, {"v": v0}))
    s, out, v = (np.stack([step[name] for step in steps]) for name in ("s", "out", "v_next"))
    assert np.array_equal(s, np.round(s)) and s.min() >= lo and s.max() <= hi
    np.testing.assert_array_equal(out, s * theta)
    assert s.max() == hi and (lo == 0 or s.min() == lo)  # the range is used
    np.testing.assert_allclose(np.cumsum(out, 0), np.cumsum(z, 0) - (v - v0), atol=1e-12)


@pytest.mark.parametrize("K", [1, 2, 3, 7])
def test_a_current_up_to_K_thresholds_a_step_is_passed_on_without_lag(K):
    """From v(0) = θ/2 and any constant current in [0, Kθ], the count after every step t is
    ⌊(t·z + θ/2)/θ⌋: each prefix is the rounded ideal, no one-spike-per-step lag (binary: only
    for z ≤ θ). K = 1 is the binary IF neuron."""
    theta = 0.5
    z = np.random.default_rng(K).uniform(0, K * theta, 2000)
    kind = graded_if(K) if K > 1 else icsnn_onnx.neurons.IF
    steps = list(kind.steps(np.broadcast_to(z, (9, z.size)), {"theta": theta}, {"v": theta / 2}))
    counts = np.cumsum([np.round(np.asarray(s["out"]) / theta) for s in steps], axis=0)
    ideal = (np.arange(1, 10)[:, None] * z + theta / 2) / theta
    clear = np.abs(ideal - np.round(ideal)) > 1e-9  # away from a rounding edge
    np.testing.assert_array_equal(counts[clear], np.floor(ideal)[clear])


@pytest.mark.parametrize("name", sorted(KINDS))
@pytest.mark.parametrize("T", [1, 3, 8])
def test_one_run_gives_the_count_for_every_initial_potential(name, T):
    """Alg 2's analysis of the graded neuron (docs/method.md §16): started at δ ∈ [0, θ), the
    count is n + [δ ≥ v*] — against a simulation from each of 16 starts."""
    kind, theta = KINDS[name](), np.float64(0.5)
    z = np.random.default_rng(T).normal(0.3, 1.2, (T, 5000))
    n, v_star = count_breakpoint(kind, z, {"theta": theta})
    for k in range(16):
        start = k / 16 * theta
        simulated = np.sum([s["s"] for s in kind.steps(z, {"theta": theta}, {"v": start})], axis=0)
        assert np.array_equal(simulated, n + (start >= v_star)), k


def _quantized_mlp(L: int, phi: float) -> onnx.ModelProto:
    """Two hidden layers quantized to L levels, (λ/L)·clip(⌊x·L/λ + φ⌋, 0, L), as QAT exports."""

    def chain(x: str, y: str, p: str) -> list[onnx.NodeProto]:
        return [
            helper.make_node("Div", [x, p + "lam"], [p + "u"]),
            helper.make_node("Mul", [p + "u", p + "L"], [p + "v"]),
            helper.make_node("Add", [p + "v", p + "phi"], [p + "w"]),
            helper.make_node("Floor", [p + "w"], [p + "f"]),
            helper.make_node("Clip", [p + "f", p + "zero", p + "L"], [p + "c"]),
            helper.make_node("Div", [p + "c", p + "L"], [p + "d"]),
            helper.make_node("Mul", [p + "d", p + "lam"], [y]),
        ]

    nodes = [
        helper.make_node("Gemm", ["x", "w1"], ["h1"], transB=1),
        *chain("h1", "a1", "q1_"),
        helper.make_node("Gemm", ["a1", "w2"], ["h2"], transB=1),
        *chain("h2", "a2", "q2_"),
        helper.make_node("Gemm", ["a2", "w3"], ["y"], transB=1),
    ]
    rng = np.random.default_rng(0)  # the same weights whatever L and φ
    inits = {
        "w1": models._w(48, 64, rng=rng),
        "w2": models._w(32, 48, rng=rng),
        "w3": models._w(10, 32, rng=rng),
    }
    for p, lam in (("q1_", 1.5), ("q2_", 2.0)):
        inits |= {p + "lam": S(lam), p + "L": S(float(L)), p + "phi": S(phi), p + "zero": S(0.0)}
    return models.make_model(nodes, inits, ["N", 64], ["N", 10])


@pytest.mark.parametrize("bits,phi", [(2, 0.5), (4, 0.5), (4, 0.0), (7, 0.5)])
def test_t1_with_2b_minus_1_levels_is_the_b_bit_quantized_ann(digits, bits, phi):
    """With K = L = 2^b − 1, T = 1, θ = λ/L and v(0) = φ·θ every neuron is its layer's quantizer:
    the SNN is the quantized ANN, data-free, whatever φ (rounding 0.5, flooring 0) and with or
    without read-out compensation. Binary spikes at T = 1 are not."""
    L = 2**bits - 1
    model = _quantized_mlp(L, phi)
    x = digits[0].reshape(len(digits[0]), -1)
    (ann,) = run(model, x)
    for compensation in (False, True):
        snn = icsnn_onnx.convert(model, None, T=1, levels=L, compensation=compensation)
        assert {f.name for f in snn.functions} == {f"IFNeuron_K{L}"}
        (out,) = run(snn, x)
        np.testing.assert_allclose(out, ann, atol=1e-5 * np.abs(ann).max())
    (binary,) = run(icsnn_onnx.convert(model, None, T=1, compensation=False), x)
    assert not np.allclose(binary, ann, atol=1e-2 * np.abs(ann).max())


def test_where_t_times_k_is_l_the_first_layer_is_its_quantizer_from_phi_theta(digits):
    """T·K = L matches the ANN's grid too (T = 3, K = 5, L = 15): the first layer, a constant
    current, is its floor quantizer (φ = 0) exactly over the T steps, from v(0) = φ·θ = 0 (Alg 1
    takes the ANN's own offset there); from θ/2 it would round instead and is not."""
    model = _quantized_mlp(15, 0.0)
    x = digits[0].reshape(len(digits[0]), -1)
    (a1,) = run(expose(model, ["a1"]), x, ["a1"])
    steps = [f"a1@{t}" for t in (1, 2, 3)]
    snn = icsnn_onnx.convert(model, None, T=3, levels=5)
    arrays = {i.name: onnx.numpy_helper.to_array(i) for i in snn.graph.initializer}
    theta, v0 = (_find(arrays, f"{site}.{what}") for site in ["Floor_4"] for what in ("threshold", "v_init"))
    assert np.isclose(theta, 1.5 / 5) and v0 == 0
    assert {p.key: p.value for p in snn.metadata_props}["icsnn.levels"] == "5"
    np.testing.assert_allclose(np.mean(run(expose(snn, steps), x, steps), axis=0), a1, atol=1e-6)
    rounding = icsnn_onnx.convert(_quantized_mlp(15, 0.5), None, T=3, levels=5)
    (a1_rounded,) = run(expose(_quantized_mlp(15, 0.5), ["a1"]), x, ["a1"])
    np.testing.assert_allclose(np.mean(run(expose(rounding, steps), x, steps), axis=0), a1_rounded, atol=1e-6)
    assert not np.allclose(a1_rounded, a1, atol=1e-3)  # the two offsets differ: each start matters


def _find(arrays: dict, name: str) -> np.ndarray:
    return arrays[name]


def test_a_graded_sigma_delta_neuron_tracks_its_function_faster(digits):
    """The signed graded quantizer under a SiLU front: the running sum tracks t·f(x̄_t) within θ
    while increments stay within Kθ; binary spikes lag behind on the same drive."""
    theta, T = 0.1, 8
    z = np.random.default_rng(3).normal(1.0, 0.3, (T, 1000))
    target = np.cumsum(z, 0) / np.arange(1, T + 1)[:, None]
    ideal = np.arange(1, T + 1)[:, None] * target / (1 + np.exp(-target))
    errors = {}
    for K in (1, 31):
        kind = sigma_delta(SILU, np.float64, K)
        steps = list(kind.steps(z, {"theta": theta}, {"v": theta / 2, "acc": 0.0, "d": 0.0}))
        running = np.cumsum([s["out"] for s in steps], axis=0)
        errors[K] = np.abs(running - ideal).max()
        assert K == 1 or np.abs(np.stack([s["drive"] for s in steps])).max() < K * theta
    assert errors[31] <= theta / 2 + 1e-9
    assert errors[1] > 10 * theta


def test_a_file_from_another_process_finds_its_graded_kind():
    kind = kind_of(NEURON_DOMAIN, "IFNeuron_K9")
    assert kind is graded_if(9) and kind_of(NEURON_DOMAIN, "IFNeuron_K1") is None
    with pytest.raises(ValueError, match="levels"):
        graded_if(1)
    with pytest.raises(ValueError, match="at most 127"):
        icsnn_onnx.ConversionOptions(levels=128)


def _digits_cnn():
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3),
        nn.SiLU(),
        nn.Flatten(),
        nn.Linear(288, 10),
    )
    return models.torch_export(net.eval(), np.zeros((1, 1, 8, 8), np.float32), dynamo=False)


def test_every_layout_target_and_alg_2_run_graded_neurons(digits):
    """IF and sigma-delta sites both graded; Alg 2 (calibrated for T and K) never worse than θ/2
    on its data; the layouts and the cpu target (which keeps graded IF in portable form) agree."""
    model, x = _digits_cnn(), digits[0][:256]
    (ann,) = run(model, x)
    outs = {}
    for layout, target in (
        ("step-major", "portable"),
        ("time-batched", "portable"),
        ("loop", "portable"),
        ("step-major", "cpu"),
    ):
        snn = icsnn_onnx.convert(model, x, T=2, levels=3, init="half", layout=layout, target=target)
        assert {f.name for f in snn.functions} >= {"IFNeuron_K3"}
        assert any(f.name.startswith("SigmaDelta_") and f.name.endswith("_K3") for f in snn.functions)
        outs[(layout, target)] = run(snn, x)[0]
    for out in outs.values():
        np.testing.assert_allclose(out, outs[("step-major", "portable")], atol=1e-4)
    calibrated = run(icsnn_onnx.convert(model, x, T=2, levels=3, init="calibrated"), x)[0]
    binary = run(icsnn_onnx.convert(model, x, T=2, init="calibrated"), x)[0]
    half = outs[("step-major", "portable")]
    error = lambda out: float(np.mean((out - ann) ** 2))  # noqa: E731
    assert error(calibrated) <= error(half) and error(half) < error(binary)


def test_nir_export_refuses_graded_neurons_by_name(digits):
    pytest.importorskip("nir")
    from icsnn_onnx.errors import UnexportableError
    from icsnn_onnx.export import to_nir

    nodes = [
        helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["a"], name="hidden"),
        helper.make_node("Gemm", ["a", "w2"], ["y"], transB=1),
    ]
    model = models.make_model(nodes, {"w1": models._w(16, 64), "w2": models._w(10, 16)}, ["N", 64], ["N", 10])
    x = digits[0].reshape(len(digits[0]), -1)[:64]
    to_nir(icsnn_onnx.convert(model, x, T=4, compensation=False))  # binary: exports
    with pytest.raises(UnexportableError, match=r"hidden \(IFNeuron_K3\): NIR's IF neuron fires one spike"):
        to_nir(icsnn_onnx.convert(model, x, T=4, levels=3, compensation=False))


def test_the_report_counts_a_graded_spike_as_one_event_with_its_level(digits):
    """Events are steps with a nonzero output; the level is |out|/θ summed per event (by hand
    here); SOPs they drive are graded and priced at e_mac, binary ones at e_ac."""
    from icsnn_onnx.analysis.report import EnergyModel, report
    from icsnn_onnx.data import Dataset
    from icsnn_onnx.runtime.instrument import neuron_layers

    model, x = _digits_cnn(), digits[0][:128]
    snn = icsnn_onnx.convert(model, x, T=2, levels=3, init="half")
    r = report(snn, Dataset({"x": x}), model, batch_size=32, provider="cpu")
    for layer, activity in zip(neuron_layers(snn), r.layers, strict=True):
        outs = run(expose(snn, list(layer.outputs)), x, list(layer.outputs))
        levels = np.abs(np.stack(outs)) / layer.threshold
        events = np.count_nonzero(levels)
        assert activity.firing_rate == pytest.approx(events / (levels[0].size * 2))
        assert activity.mean_level == pytest.approx(levels.sum() / events, rel=1e-5)
        assert 1 < activity.mean_level <= 3
    energy, prices = r.energy, EnergyModel()
    assert energy["sops_per_sample"] > 0
    assert energy["graded_sops_per_sample"] == pytest.approx(energy["sops_per_sample"])
    assert energy["snn_joules_per_sample"] == pytest.approx(
        prices.e_mac * (energy["sops_per_sample"] + energy["snn_macs_per_sample"])
    )
    binary = report(
        icsnn_onnx.convert(model, x, T=2, init="half"), Dataset({"x": x}), batch_size=32, provider="cpu"
    )
    assert binary.energy["graded_sops_per_sample"] == 0 and all(a.mean_level == 1 for a in binary.layers)
