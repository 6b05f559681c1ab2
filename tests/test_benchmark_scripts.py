"""The GPU benchmark runs blind on a lent GPU whose minutes are few: its code path is run here,
on the CPU provider, so that it cannot break unnoticed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_throughput", ROOT / "benchmarks" / "gpu_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
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
