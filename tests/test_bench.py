"""Timing harness and the CUDA code paths' behaviour on machines without CUDA."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import onnx
import pytest

import icsnn_onnx
from icsnn_onnx.cli import main
from icsnn_onnx.runtime import Session, cuda_available
from icsnn_onnx.runtime.bench import bench, random_feeds
from tests import models


@pytest.fixture(scope="module")
def pair(tmp_path_factory, digits):
    tmp = tmp_path_factory.mktemp("bench")
    ann = models.cnn_bn()
    onnx.save(ann, tmp / "ann.onnx")
    icsnn_onnx.save_model(icsnn_onnx.convert(ann, digits[0][:100], T=4), tmp / "snn.onnx")
    return tmp / "ann.onnx", tmp / "snn.onnx"


def test_bench_reports_ratio_to_dense_bound(pair):
    result = bench(*pair, batch=8, repeats=3, warmup=1)
    assert result.T == 4 and result.batch == 8
    assert len(result.ann.runs_s) == len(result.snn.runs_s) == 3
    assert result.ratio_to_dense_bound == pytest.approx(result.snn.median_s / (4 * result.ann.median_s))
    assert result.snn.images_per_s == pytest.approx(8 / result.snn.median_s)
    assert 0 < result.snn_peak_rss_mib <= result.peak_rss_mib


def test_bench_refuses_a_model_that_is_not_an_snn(pair):
    ann, _ = pair
    with pytest.raises(icsnn_onnx.DataError, match="not an icsnn-onnx SNN"):
        bench(ann, ann, batch=2, repeats=1)


def test_bench_cli(pair, capsys):
    assert main(["bench", str(pair[0]), str(pair[1]), "--batch", "4", "--repeats", "2", "--json", "-q"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["T"] == 4 and result["ratio_to_dense_bound"] > 0
    assert main(["bench", str(pair[0]), str(pair[1]), "--batch", "4", "--repeats", "2", "-q"]) == 0
    assert "SNN / (T × ANN)" in capsys.readouterr().out


def test_cuda_graph_request_falls_back_without_cuda(pair, caplog):
    if cuda_available():
        pytest.skip("CUDA works here: the graph path is exercised for real")
    with caplog.at_level(logging.INFO, logger="icsnn_onnx"):
        session = Session(pair[1], cuda_graph=True)
    assert not session.cuda_graph and session.provider == "CPUExecutionProvider"
    assert "CUDA graphs need the CUDA provider" in caplog.text
    feeds = random_feeds(session.inputs, 3)
    run = session.runner(feeds)
    run()  # the CPU runner works the same way
    assert session.run(feeds)["y"].shape == (3, 10)


def test_bound_runner_preallocates_outputs_and_matches_a_plain_run(pair):
    """The IO-binding path CUDA uses (and a CUDA graph replays), exercised on the CPU."""
    session = Session(pair[1], provider="cpu")
    feeds = random_feeds(session.inputs, 3)
    assert session.output_shapes(feeds) == {"y": [3, 10]}
    run = session.bound_runner(feeds, "cpu")
    run()
    run()  # the same buffers again
    np.testing.assert_allclose(run.outputs()["y"], session.run(feeds)["y"], rtol=1e-6)


def test_bound_runner_lets_onnx_runtime_allocate_outputs_of_data_dependent_shape():
    from onnx import TensorProto, helper

    graph = helper.make_graph(  # NonZero: the output's size depends on the values
        [helper.make_node("NonZero", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    session = Session(model, provider="cpu")
    feeds = {"x": np.array([[-1.0, 0.0, 2.0, -3.0]] * 2, np.float32)}
    assert session.output_shapes(feeds) is None
    run = session.bound_runner(feeds, "cpu")
    run()
    np.testing.assert_array_equal(run.outputs()["y"], np.array(np.nonzero(feeds["x"])))


def test_random_feeds_follow_the_input_specs(pair):
    feeds = random_feeds(Session(pair[0]).inputs, 5)
    assert feeds["x"].shape == (5, 1, 8, 8) and feeds["x"].dtype == np.float32


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss survives exec on Linux")
def test_peak_memory_of_a_fresh_process_is_its_own():
    """A benchmark worker started from a big parent must not report the parent's peak."""
    ballast = np.ones(300 * 2**20, np.uint8)  # the parent's peak: >= 300 MiB
    code = "from icsnn_onnx.runtime.bench import peak_rss_mib; print(peak_rss_mib())"
    child = float(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )
    assert ballast.sum() > 0 and child < 250


class _CaptureFails:
    """An ONNX Runtime session whose IO-bound runs fail, as a CUDA graph capture can."""

    def __init__(self, session):
        self._session, self.calls = session, 0

    def __getattr__(self, name):
        return getattr(self._session, name)

    def run_with_iobinding(self, binding, options=None):
        self.calls += 1
        raise RuntimeError("CUDA failure 901: operation not permitted when stream is capturing\nmore")


def test_a_cuda_graph_that_fails_at_capture_falls_back_to_plain_runs(pair, caplog):
    """Capture happens at the first runs, after the session was created: exercised on the CPU
    with a session whose bound runs fail, standing in for a graph session."""
    session = Session(pair[1], provider="cpu")
    expected = session.run(random_feeds(session.inputs, 3))["y"]
    failing = _CaptureFails(session._session)
    plain = session._session
    session._session, session.cuda_graph, session._plain_session = failing, True, lambda: plain
    run = session.bound_runner(random_feeds(session.inputs, 3), "cpu")
    with caplog.at_level(logging.WARNING, logger="icsnn_onnx"):
        run()
    assert failing.calls == 1 and not session.cuda_graph and session._session is plain
    assert "CUDA graph capture failed (CUDA failure 901: operation not permitted" in caplog.text
    np.testing.assert_allclose(run.outputs()["y"], expected, rtol=1e-6)
    run()  # bound to the plain session from now on
    np.testing.assert_allclose(run.outputs()["y"], expected, rtol=1e-6)


def test_runners_whose_captures_fail_share_one_plain_session(pair):
    session = Session(pair[1], provider="cpu")
    expected = {n: session.run(random_feeds(session.inputs, n))["y"] for n in (2, 3)}
    plain, built = session._session, []
    session._session, session.cuda_graph = _CaptureFails(plain), True
    session._plain_session = lambda: built.append(1) or plain
    runs = {n: session.bound_runner(random_feeds(session.inputs, n), "cpu") for n in (2, 3)}
    for n, run in runs.items():  # the second runner was bound to the graph session too
        run()
        np.testing.assert_allclose(run.outputs()["y"], expected[n], rtol=1e-6)
    assert built == [1] and session._session is plain and not session.cuda_graph


def test_a_failing_run_without_a_graph_raises(pair):
    session = Session(pair[1], provider="cpu")
    session._session = _CaptureFails(session._session)
    run = session.bound_runner(random_feeds(session.inputs, 3), "cpu")
    with pytest.raises(RuntimeError, match="CUDA failure 901"):
        run()


def test_plain_runs_of_a_graph_session_skip_the_graph(pair):
    """A graph replays the addresses it captured; ``Session.run`` copies feeds anew each time."""
    session = Session(pair[1], provider="cpu")
    seen = []

    class Recording:
        def __getattr__(self, name):
            return getattr(plain, name)

        def run(self, names, feeds, options=None):
            seen.append(None if options is None else options.get_run_config_entry("gpu_graph_id"))
            return plain.run(names, feeds, options)

    plain, feeds = session._session, random_feeds(session.inputs, 2)
    session._session = Recording()
    session.run(feeds)
    session.cuda_graph = True
    session.run(feeds)
    assert seen == [None, "-1"]


def test_the_dense_bound_is_timed_as_t_ann_passes_in_a_row(pair, monkeypatch):
    """Each SNN run alternates with a block of T ANN runs; one sample per block."""
    calls: list[str] = []
    runner = Session.runner

    def counting_runner(self, feeds):
        run, kind = runner(self, feeds), "snn" if "icsnn.T" in self.metadata else "ann"

        def counted():
            calls.append(kind)
            run()

        return counted

    monkeypatch.setattr(Session, "runner", counting_runner)
    result = bench(*pair, batch=4, repeats=3, warmup=1)
    # SNN alone twice (its own peak memory), then warm-up and 3 rounds: [ANN × T, SNN] each.
    assert calls == ["snn", "snn"] + (["ann"] * 4 + ["snn"]) * 4
    assert len(result.ann.runs_s) == len(result.snn.runs_s) == 3


def test_each_bound_runner_of_a_graph_session_replays_a_graph_of_its_own(pair):
    """A CUDA graph is captured for one batch's shapes and buffers; another batch size on the
    same session must not replay it."""
    session = Session(pair[1], provider="cpu")
    session.cuda_graph = True  # stands in for a graph session: only the run options are read
    ids = [
        session.bound_runner(random_feeds(session.inputs, n), "cpu")._options.get_run_config_entry(
            "gpu_graph_id"
        )
        for n in (2, 3, 2)
    ]
    assert ids == ["0", "1", "2"]
    session.cuda_graph = False
    plain = session.bound_runner(random_feeds(session.inputs, 2), "cpu")._options
    with pytest.raises(RuntimeError, match="does not have configuration"):
        plain.get_run_config_entry("gpu_graph_id")
