"""The CUDA provider for real: run where CUDA works (benchmarks/device/h200.sh runs them on the
lent H200); skipped elsewhere. What CPU-only machines can check of the CUDA path (quiet probing,
fallbacks, IO binding) is in test_bench.py and test_runtime.py."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest

import icsnn_onnx
from icsnn_onnx.runtime import Session, cuda_available
from icsnn_onnx.runtime.bench import bench, random_feeds
from tests import models

pytestmark = pytest.mark.skipif(not cuda_available(), reason="needs a working CUDA provider")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, digits):
    tmp = tmp_path_factory.mktemp("gpu")
    ann = models.cnn_bn()
    onnx.save(ann, tmp / "ann.onnx")
    paths = {"ann": tmp / "ann.onnx"}
    for layout in ("step-major", "time-batched"):
        snn = icsnn_onnx.convert(ann, digits[0][:100], T=8, layout=layout)
        paths[layout] = tmp / f"{layout}.onnx"
        icsnn_onnx.save_model(snn, paths[layout])
    return paths


@pytest.mark.parametrize("layout", ["step-major", "time-batched"])
def test_snn_on_cuda_computes_what_it_computes_on_the_cpu(compiled, digits, layout):
    # Without TF32 (ONNX Runtime's default for CUDA convolutions: 10-bit significands) only the
    # summation order differs, which moves a potential across θ now and then: a spike, not a drift.
    gpu = Session(compiled[layout], provider="cuda", cuda_options={"use_tf32": "0"})
    cpu = Session(compiled[layout], provider="cpu")
    assert gpu.provider == "CUDAExecutionProvider"
    x = digits[0][:256]
    a, b = gpu.run(x)["y"], cpu.run(x)["y"]
    assert np.mean(a.argmax(1) == b.argmax(1)) >= 0.99
    assert np.median(np.abs(a - b)) <= 1e-2 * np.abs(b).max()


def test_cuda_graph_is_captured_and_replays_the_plain_run(compiled, caplog):
    with caplog.at_level(logging.WARNING, logger="icsnn_onnx"):
        session = Session(compiled["step-major"], provider="cuda", cuda_graph=True)
    assert session.cuda_graph, caplog.text  # every node of the unrolled graph runs on CUDA
    plain = Session(compiled["step-major"], provider="cuda")
    feeds = random_feeds(session.inputs, 16)
    run = session.bound_runner(feeds, "cuda")
    run()  # capture
    first = run.outputs()["y"]
    run()  # replay
    np.testing.assert_array_equal(run.outputs()["y"], first)
    np.testing.assert_allclose(first, plain.run(feeds)["y"], rtol=1e-5, atol=1e-5)


def test_bench_on_cuda_keeps_batches_on_the_device(compiled):
    result = bench(compiled["ann"], compiled["step-major"], batch=64, provider="cuda", repeats=5)
    assert result.provider == "CUDAExecutionProvider" and result.T == 8
    graph = bench(
        compiled["ann"], compiled["step-major"], batch=64, provider="cuda", cuda_graph=True, repeats=5
    )
    assert graph.cuda_graph and graph.snn.median_s > 0


def test_graphs_of_two_batch_sizes_on_one_session_each_replay_their_own(compiled):
    session = Session(compiled["step-major"], provider="cuda", cuda_graph=True)
    plain = Session(compiled["step-major"], provider="cuda")
    runs = {n: session.bound_runner(random_feeds(session.inputs, n, seed=n), "cuda") for n in (8, 24)}
    for _ in range(3):  # captures, then replays, alternating
        for n, run in runs.items():
            run()
            expected = plain.run(random_feeds(session.inputs, n, seed=n))["y"]
            np.testing.assert_allclose(run.outputs()["y"], expected, rtol=1e-5, atol=1e-5)
    assert session.cuda_graph
