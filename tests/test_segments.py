"""Segments: a network computed piecewise from stored cut tensors equals the whole network."""

from __future__ import annotations

import os

import numpy as np

from icsnn_onnx.runtime.instrument import expose
from icsnn_onnx.segments import SpillStore, extract
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
