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


def test_spill_store_keeps_arrays_on_disk_and_forgets_them(tmp_path):
    with SpillStore() as store:
        a = store.create("a", (3, 4), np.float32)
        a[:] = np.arange(12).reshape(3, 4)
        assert "a" in store and np.array_equal(np.asarray(store["a"]), np.arange(12).reshape(3, 4))
        path = a.filename
        store.drop("a")
        assert "a" not in store

        assert not os.path.exists(path)
    assert not os.path.exists(os.path.dirname(path))
