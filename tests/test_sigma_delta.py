"""The sigma-delta neuron: its reference against ONNX Runtime, the identity and bound its spike
train obeys, the closed form for a constant current, and Alg 2's one-run analysis of it."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import icsnn_onnx
from icsnn_onnx.neurons import ElementwiseFunction, count_breakpoint, sigma_delta
from icsnn_onnx.neurons.equations import Equation
from tests import models
from tests.conftest import run, unrolled_kind

SILU = ElementwiseFunction((Equation("s", "Sigmoid", ("x",)), Equation("y", "Mul", ("x", "s"))), (), "silu")
HARDSWISH = ElementwiseFunction(
    (
        Equation("a", "Add", ("x", "three")),
        Equation("c", "Clip", ("a", "zero", "six")),
        Equation("d", "Div", ("c", "six")),
        Equation("y", "Mul", ("x", "d")),
    ),
    (("three", np.float32(3)), ("zero", np.float32(0)), ("six", np.float32(6))),
    "hardswish",
)
GELU = ElementwiseFunction((Equation("y", "Gelu", ("x",)),), (), "gelu")
FUNCTIONS = {"silu": SILU, "hardswish": HARDSWISH, "gelu": GELU}


def _reference(kind, z: np.ndarray, theta: float, v0: float) -> tuple[np.ndarray, np.ndarray]:
    steps = list(
        kind.steps(
            z, {"theta": np.float32(theta)}, {"v": np.float32(v0), "acc": np.float32(0), "d": np.float32(0)}
        )
    )
    return np.stack([s["out"] for s in steps]), np.stack([s["v_next"] for s in steps])


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_the_reference_is_what_onnx_runtime_computes(name):
    """The numpy reference and the ONNX function come from one table: the same spikes (exactly
    for HardSwish's rational ops; to a rare flip for transcendental f, whose kernels round in the
    last bit) and the same potentials to rounding."""
    kind = sigma_delta(FUNCTIONS[name], np.float32)
    T, rng = 12, np.random.default_rng(0)
    z = rng.normal(0.3, 1.5, (T, 256)).astype(np.float32)
    out, v = _reference(kind, z, 0.75, 0.375)
    scalar = lambda value: np.array(value, np.float32)  # noqa: E731
    feeds = {f"z{t}": z[t] for t in range(T)} | {"theta": scalar(0.75), "v0": scalar(0.375)}
    feeds |= {"acc0": scalar(0), "d0": scalar(0)}
    got = run(unrolled_kind(kind, T, [256]), feeds)
    got_out, got_v = np.stack(got[:T]), np.stack(got[T:])
    flips = np.count_nonzero(got_out != out)
    if name == "hardswish":
        np.testing.assert_array_equal(got_out, out)
    else:
        assert flips <= 2, flips
    np.testing.assert_allclose(got_v[got_out == out], v[got_out == out], atol=1e-5)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_the_spike_train_sums_to_t_f_of_the_mean_input_less_the_residual(name):
    """θ·Σ_{k≤t} s(k) = t·f(x̄_t) − (v(t) − v(0)) at every t (the IF identity with f(x̄)); from
    v(0) = θ/2 the error is at most θ/2 plus what increments larger than θ push the membrane out
    of [0, θ): a(t) = max(0, a(t−1) + |Δ(t)| − θ)."""
    f, theta, v0, T = FUNCTIONS[name], np.float32(0.5), np.float32(0.25), 40
    kind = sigma_delta(f, np.float64)
    rng = np.random.default_rng(1)
    z = rng.normal(0.2, 1.0, (T, 2000))
    total, excess, d_before = 0.0, np.zeros(2000), np.zeros(2000)
    for t, step in enumerate(
        kind.steps(z, {"theta": np.float64(theta)}, {"v": np.float64(v0), "acc": 0.0, "d": 0.0}), start=1
    ):
        total = total + step["out"]
        target = t * f(z[:t].mean(axis=0))
        np.testing.assert_allclose(total, target - (step["v_next"] - v0), atol=1e-9)
        excess = np.maximum(0, excess + np.abs(target - d_before) - theta)
        assert np.all(np.abs(total - target) <= theta / 2 + excess + 1e-9)
        d_before = target


def test_within_theta_the_error_is_at_most_half_a_threshold():
    """Increments within [−θ, θ] keep the membrane in [0, θ): |Σ out − t·f(x̄_t)| ≤ θ/2 always."""
    kind = sigma_delta(SILU, np.float64)
    T, theta = 64, 1.0
    rng = np.random.default_rng(2)
    z = np.clip(rng.normal(0.0, 0.3, (T, 5000)) + rng.normal(0, 0.3, 5000), -0.8, 0.8)
    total = 0.0
    for t, step in enumerate(
        kind.steps(z, {"theta": theta}, {"v": theta / 2, "acc": 0.0, "d": 0.0}), start=1
    ):
        total = total + step["out"]
        assert np.max(np.abs(total - t * SILU(z[:t].mean(axis=0)))) <= theta / 2 + 1e-9


def test_a_constant_current_is_rounded_like_the_if_neuron():
    """For z(t) = z: N_T = clip(⌊(T·f(z) + v(0))/θ⌋, −T, T) signed spikes (docs/method.md §14)."""
    kind = sigma_delta(HARDSWISH, np.float64)
    z = np.linspace(-6, 8, 2801)
    theta = 2.0
    for T in (1, 3, 8):
        for v0 in (0.0, theta / 2, 0.3 * theta):
            out, _ = _reference_f64(kind, np.broadcast_to(z, (T, z.size)), theta, v0)
            count = out.sum(axis=0) / theta
            expected = np.clip(np.floor((T * HARDSWISH(z) + v0) / theta), -T, T)
            assert np.array_equal(count, expected)


def _reference_f64(kind, z, theta, v0):
    steps = list(kind.steps(np.asarray(z, np.float64), {"theta": theta}, {"v": v0, "acc": 0.0, "d": 0.0}))
    return np.stack([s["out"] for s in steps]), np.stack([s["v_next"] for s in steps])


@pytest.mark.parametrize("T", [1, 4, 9])
def test_one_run_gives_the_count_for_every_initial_potential(T):
    """Alg 2's analysis: started at δ ∈ [0, θ), the signed count is n + [δ ≥ v*] — against a
    simulation from each of 16 starts."""
    kind = sigma_delta(SILU, np.float32)
    theta = np.float32(0.5)
    rng = np.random.default_rng(T)
    z = rng.normal(0.1, 0.8, (T, 4000)).astype(np.float32)
    n, v_star = count_breakpoint(kind, z, {"theta": theta})
    for k in range(16):
        start = np.float32(k / 16 * theta)
        steps = list(kind.steps(z, {"theta": theta}, {"v": start, "acc": np.float32(0), "d": np.float32(0)}))
        simulated = np.sum([s["s"] for s in steps], axis=0)
        assert np.array_equal(simulated, n + (start >= v_star)), k


def test_a_silu_net_converts_and_every_layout_computes_the_same():
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.SiLU(),
        nn.Conv2d(8, 8, 3),
        nn.Hardswish(),
        nn.Flatten(),
        nn.Linear(288, 5),
    )
    x = np.random.default_rng(0).normal(size=(16, 1, 8, 8)).astype(np.float32)
    model = models.torch_export(net.eval(), x, dynamo=False)
    outs = {
        layout: run(icsnn_onnx.convert(model, x, T=8, init="half", layout=layout), x)[0]
        for layout in ("step-major", "time-batched", "loop")
    }
    np.testing.assert_allclose(outs["time-batched"], outs["step-major"], atol=1e-4)
    np.testing.assert_allclose(outs["loop"], outs["step-major"], atol=1e-4)


def test_nir_export_refuses_a_sigma_delta_neuron_by_name():
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["h"], ["s"], name="gate"),
        helper.make_node("Flatten", ["s"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
    ]
    model = models.make_model(
        nodes, {"w": models._w(4, 1, 3, 3), "fc": models._w(10, 256)}, ["N", 1, 8, 8], ["N", 10]
    )
    x = np.random.default_rng(0).random((8, 1, 8, 8)).astype(np.float32)
    snn = icsnn_onnx.convert(model, x, T=4, init="zero", compensation=False)
    pytest.importorskip("nir")
    from icsnn_onnx.errors import UnexportableError
    from icsnn_onnx.export import to_nir

    with pytest.raises(UnexportableError, match=r"gate \(SigmaDelta_\w+\): NIR has no neuron"):
        to_nir(snn)
