"""Segments: a network computed piecewise from stored cut tensors equals the whole network."""

from __future__ import annotations

import os

import numpy as np
import onnx

from icsnn_onnx.calibration.segments import SpillStore, extract, merge
from icsnn_onnx.runtime.instrument import expose
from tests import models
from tests.conftest import run


def test_a_segment_fed_its_cuts_computes_what_the_whole_network_does(digits):
    model = models.routes_net()  # branches, a residual Add and a Concat
    x = digits[0][:16]
    cuts = {"a1", "a3"}
    full = dict(zip(["a1", "a3", "y"], run(expose(model, ["a1", "a3", "y"]), x), strict=True))
    segment, read = extract(model, ["y"], cuts)
    assert sorted(read) == ["a1", "a3"]  # a2 is computed from a1; a3 is cut
    assert "x" not in {i.name for i in segment.graph.input}  # nothing reads the input any more
    (y,) = run(segment, {"a1": full["a1"], "a3": full["a3"]})
    np.testing.assert_array_equal(y, full["y"])
    first, read_first = extract(model, ["a1"], cuts - {"a1"})
    assert read_first == [] and [i.name for i in first.graph.input] == ["x"]


def test_two_segments_merge_into_one_model_that_computes_both(digits):
    """Alg 2 loads one session per site for its ANN and SNN segments: the merged model computes
    both segments' outputs; a name the two disagree on keeps them apart."""
    model = models.routes_net()
    x = digits[0][:16]
    full = dict(zip(["a1", "a3", "y"], run(expose(model, ["a1", "a3", "y"]), x), strict=True))
    first, _ = extract(model, ["a1"], set())
    second, _ = extract(model, ["y"], {"a3"})  # shares the nodes up to a1 with the first
    both = merge(first, second)
    assert both is not None
    assert len(both.graph.node) < len(first.graph.node) + len(second.graph.node)  # shared once
    a1, y = run(both, {"x": x, "a3": full["a3"]}, ["a1", "y"])
    np.testing.assert_array_equal(a1, full["a1"])
    np.testing.assert_array_equal(y, full["y"])
    other = onnx.ModelProto()
    other.CopyFrom(second)
    shared = {t.name for t in first.graph.initializer} & {t.name for t in other.graph.initializer}
    weight = next(t for t in other.graph.initializer if t.name in shared)
    weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight) + 1, weight.name))
    assert merge(first, other) is None  # a constant of the same name with other values
    reads_a1 = onnx.ModelProto()
    reads_a1.CopyFrom(extract(model, ["y"], {"a1"})[0])
    assert merge(first, reads_a1) is None  # one computes the tensor the other reads


def test_spill_store_keeps_arrays_in_memory_within_its_budget_then_on_disk():
    with SpillStore(memory_bytes=64) as store:
        small = store.create("small", (3, 4), np.float32)  # 48 bytes: in memory
        small[:] = np.arange(12).reshape(3, 4)
        large = store.create("large", (3, 4), np.float32)  # 96 > 64 together: on disk
        large[:] = small * 2
        assert not isinstance(small, np.memmap) and isinstance(large, np.memmap)
        assert np.array_equal(np.asarray(store["large"]), np.arange(12).reshape(3, 4) * 2)
        path = large.filename
        store.drop("large")
        store.drop("small")
        assert "large" not in store and "small" not in store
        assert not os.path.exists(path)
        again = store.create("again", (3, 4), np.float32)  # the budget is free again
        assert not isinstance(again, np.memmap)
    assert not os.path.exists(os.path.dirname(path))
