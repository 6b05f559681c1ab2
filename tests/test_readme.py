"""README commands run as written; CI runs README's test command; README's figures are measured."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def block(name: str) -> str:
    """The fenced code block right after ``<!-- readme-test: name -->``."""
    match = re.search(rf"<!-- readme-test: {name} -->\s*```\w*\n(.*?)```", README, re.S)
    assert match, f"README has no block marked readme-test: {name}"
    return match.group(1).strip()


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    """A scratch directory that sees the repository's examples/ at the same relative path."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    return tmp_path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_ci_runs_the_readme_test_command():
    command = block("test-command")
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in lines


def test_main_job_runs_as_written(workdir):
    """The set-up command, minus its `pip install .` (this environment has the package installed;
    CI installs it exactly as written)."""
    steps = block("main-job").split(" && ")
    assert steps[0] == "pip install ."
    done = subprocess.run(
        " && ".join(steps[1:]),
        shell=True,
        cwd=workdir,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert (workdir / "digits.snn.onnx").exists()
    ann = float(re.search(r"ANN .*accuracy ([\d.]+)%", done.stdout).group(1))
    snn = float(re.search(r"SNN .*accuracy ([\d.]+)%", done.stdout).group(1))
    assert snn >= ann - 1.0, done.stdout


def test_python_api_example_runs(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    exec(compile(block("python"), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "SNN accuracy at T=16:" in out


def test_results_table_is_the_committed_measurement():
    path = ROOT / "benchmarks" / "results" / "mnist_convert.json"
    results = json.loads(path.read_text())
    table = re.search(r"<!-- results: mnist_convert -->\n(.*?)\n\n", README, re.S).group(1).splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    ts = [h.removeprefix("SNN T=") for h in header[2:]]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    assert [r[0].split("`")[1] for r in rows] == [
        "--init half",
        "--init zero",
        "--init calibrated",
        "-T N",
    ]
    for row, run in zip(rows, ("half", "zero", "calibrated", "default"), strict=True):
        snn = results["snn"][run]
        values = snn.get("accuracy_at_T") or snn["accuracy_per_T"]
        expected = [f"{100 * results['ann_accuracy']:.2f}%"] + [f"{100 * values[t]:.2f}%" for t in ts]
        assert row[1:] == expected


@pytest.mark.parametrize(
    "benchmark",
    [
        "throughput",
        "mnist_fidelity",
        "architectures",
        "nir_fidelity",
        "alg2_scale",
        "ray_eval",
        "layout_scale",
        "low_latency",
        "coverage",
    ],
)
def test_benchmark_table_is_the_committed_measurement(benchmark):
    """Each README results table is what `python benchmarks/<benchmark>.py --table` prints from
    the committed JSON."""
    module = load_benchmark(benchmark)
    report = json.loads((ROOT / "benchmarks" / "results" / f"{benchmark}.json").read_text())
    table = re.search(rf"<!-- results: {benchmark} -->\n(.*?)\n\n", README, re.S).group(1)
    assert table == module.table(report)
