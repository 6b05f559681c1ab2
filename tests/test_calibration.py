"""Bounded-memory activation statistics against numpy on the full data."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from icsnn_onnx.calibration import BINS, activation_thresholds
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
