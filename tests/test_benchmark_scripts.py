"""Benchmark code that must not rot unnoticed: the GPU benchmark runs blind on a lent GPU whose
minutes are few, so its code path is run here on the CPU provider; step_cost's neuron floor is
only a bound if its stand-in neurons are what ONNX Runtime runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_throughput_runs_end_to_end_on_the_cpu_provider(tmp_path):
    out = tmp_path / "gpu.json"
    args = ["--provider", "cpu", "--models", "mnist_cnn", "--ts", "2", "--layouts", "step-major"]
    args += ["--batch", "4", "--min-seconds", "0.05", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_throughput.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    (row,) = report["rows"]
    assert (row["model"], row["T"], row["layout"]) == ("mnist_cnn", 2, "step-major")
    for mode in ("plain", "cuda_graph"):
        assert row[mode]["provider"] == "CPUExecutionProvider" and row[mode]["batch"] == 4
        assert not row[mode]["cuda_graph"] and row[mode]["ratio_to_dense_bound"] > 0
    assert any("CUDA graphs need the CUDA provider" in line for line in row["log"])
    snn = row["agreement"]["snn"]
    assert snn["max_abs_diff"] == 0.0 and snn["same_class"] == 1.0 and snn["output_scale"] > 0
    assert "| mnist_cnn | 2 | step-major |" in done.stdout


def test_gpu_throughput_keeps_cpu_figures_out_of_the_results(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_throughput.py"), "--provider", "cpu"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "--out" in done.stderr


def test_gpu_throughput_reports_a_failed_mode_beside_the_other():
    module = load_benchmark("gpu_throughput")
    plain = {
        "ann": {"median_s": 0.001},
        "snn": {"median_s": 0.0045},
        "ratio_to_dense_bound": 1.125,
        "cuda_graph": False,
    }
    row = {
        "model": "m",
        "T": 4,
        "layout": "step-major",
        "plain": plain,
        "cuda_graph": {"error": "RuntimeError: capture failed"},
        "agreement": {
            "snn": {"same_class": 1.0, "max_abs_diff": 0.0},
            "snn_no_tf32": {"same_class": 0.5, "max_abs_diff": 1.0},
        },
    }
    assert (
        "| 1.00 ms | 4.50 ms | 1.12 (no graph) | failed | failed | failed | 100.0% (max|Δ| 0) / 50.0% (max|Δ| 1) |"
        in module.table({"rows": [row]})
    )
    assert "cuda_graph: RuntimeError: capture failed" in module.summary(row)


@pytest.mark.parametrize("target", ["portable", "cpu"])
def test_step_cost_floor_replaces_every_neuron_by_one_add(tmp_path, target):
    import onnx
    import onnxruntime as ort

    import icsnn_onnx
    from tests.models import cnn_bn

    step_cost = load_benchmark("step_cost")
    ann = cnn_bn()
    x = np.random.default_rng(0).random((64, 1, 8, 8)).astype(np.float32)
    path = tmp_path / "snn.onnx"
    icsnn_onnx.save_model(icsnn_onnx.convert(ann, x, T=4, target=target), path)

    floor = onnx.load_from_string(step_cost.neuron_floor_model(str(path)))
    neurons = [f for f in floor.functions if f.domain == "icsnn"]
    assert neurons and all([n.op_type for n in f.node] == ["Add", "Identity"] for f in neurons)
    onnx.checker.check_model(floor)
    run = {
        name: ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        for name, model in (("real", str(path)), ("floor", floor.SerializeToString()))
    }
    assert not np.allclose(run["real"], run["floor"])  # ONNX Runtime ran the stand-in

    ann_path = tmp_path / "ann.onnx"
    onnx.save(ann, ann_path)
    with pytest.raises(ValueError, match="no icsnn neuron"):
        step_cost.neuron_floor_model(str(ann_path))
