"""Bounded-memory activation statistics against numpy on the full data."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from icsnn_onnx.calibration.statistics import BINS, _least_squares_threshold, activation_thresholds
from icsnn_onnx.data import Dataset
from tests import models


def _identity_model(channels: int):
    # Pre-activation z = x·scale (a per-channel Mul), exposed by name.
    nodes = [helper.make_node("Mul", ["x", "scale"], ["z"]), helper.make_node("Relu", ["z"], ["y"])]
    scale = np.linspace(0.5, 3.0, channels).astype(np.float32).reshape(channels, 1, 1)
    return models.make_model(nodes, {"scale": scale}, ["N", channels, 4, 4], ["N", channels, 4, 4]), scale


@pytest.mark.parametrize("channel_wise", [False, True])
@pytest.mark.parametrize("q", [None, 99.0, 99.99])
def test_statistics_match_numpy(channel_wise, q):
    model, scale = _identity_model(3)
    x = np.random.default_rng(0).standard_normal((500, 3, 4, 4)).astype(np.float32)
    got = activation_thresholds(
        model, ["z"], Dataset({"x": x}), percentile=q, channel_wise=channel_wise, batch_size=64
    )["z"]
    a = np.maximum(x * scale, 0)
    values = np.moveaxis(a, 1, 0).reshape(3, -1) if channel_wise else a.reshape(1, -1)
    want = values.max(axis=1) if q is None else np.percentile(values, q, axis=1)
    resolution = values.max(axis=1) / BINS
    assert got.shape == want.shape
    assert np.all(np.abs(got - want) <= resolution + 1e-6), (got, want)


def test_batching_does_not_change_the_result():
    model, _ = _identity_model(2)
    x = np.random.default_rng(1).standard_normal((130, 2, 4, 4)).astype(np.float32)
    a = activation_thresholds(
        model, ["z"], Dataset({"x": x}), percentile=99.9, channel_wise=True, batch_size=7
    )
    b = activation_thresholds(
        model, ["z"], Dataset({"x": x}), percentile=99.9, channel_wise=True, batch_size=130
    )
    assert np.allclose(a["z"], b["z"])


@pytest.mark.parametrize("T", [1, 2, 4, 16])
def test_least_squares_threshold_minimizes_the_rounding_error_of_T_levels(T):
    """``--threshold mse``: θ is (to a candidate step) the best θ for rounding to T levels."""
    model, scale = _identity_model(2)
    x = np.random.default_rng(2).standard_normal((400, 2, 4, 4)).astype(np.float32)
    got = activation_thresholds(
        model, ["z"], Dataset({"x": x}), percentile=None, channel_wise=True, levels=T
    )["z"]
    values = np.moveaxis(np.maximum(x * scale, 0), 1, 0).reshape(2, -1).astype(np.float64)

    def error(theta: float, a: np.ndarray) -> float:
        q = theta / T * np.minimum(np.floor(a * T / theta + 0.5), T)
        return float(np.mean((q - a) ** 2))

    for channel, theta in enumerate(got):
        a = values[channel]
        grid = np.linspace(0.01, 1.0, 400) * a.max()
        best = min(error(t, a) for t in grid)
        assert 0 < theta < a.max()
        assert error(theta, a) <= best * 1.02 + 1e-12, (theta, error(theta, a), best)
        assert error(theta, a) < error(a.max(), a)  # better than θ = max
    # More levels make finer steps, so a wider range pays: θ grows with T.
    finer = activation_thresholds(
        model, ["z"], Dataset({"x": x}), percentile=None, channel_wise=True, levels=T * 8
    )["z"]
    assert np.all(finer > got)


@pytest.mark.parametrize("T", [1, 3, 4, 64])
def test_least_squares_threshold_equals_the_direct_search_over_bins(T):
    """The prefix-sum search picks the θ that scoring every bin centre for every candidate picks."""
    rng = np.random.default_rng(T)
    values = np.abs(rng.standard_normal((40, 3000))) * rng.uniform(0.1, 3.0, (40, 1))
    values[::5] *= rng.uniform(size=(8, 3000)) > 0.8  # sparse channels
    values[3] = 0.0  # a dead channel: θ = 0
    top = values.max(axis=1)
    scaled = values / np.where(top > 0, top, 1.0)[:, None] * BINS
    hist = np.stack([np.bincount(np.minimum(r.astype(np.int64), BINS - 1), minlength=BINS) for r in scaled])
    expected = np.zeros(len(hist))
    for row, (h, m) in enumerate(zip(hist, top, strict=True)):
        if m <= 0:
            continue
        centres = (np.arange(BINS) + 0.5) / BINS * m
        thetas = np.arange(1, 257) / 256 * m
        step = thetas[:, None] / T
        quantized = step * np.minimum(np.floor(centres / step + 0.5), T)
        expected[row] = thetas[np.argmin((((quantized - centres) ** 2) * h).sum(axis=1))]
    assert np.array_equal(_least_squares_threshold(hist, top, T), expected)
