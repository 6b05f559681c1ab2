"""Where one SNN time step goes: the MNIST CNN's ANN pass vs one SNN step, by operator, on the CPU.

Explains the MNIST row of benchmarks/throughput.py: ONNX Runtime's profiler splits the ANN pass and
the T=32 step-major SNN (per step; portable and ``--target cpu``) into operator types — the cpu
target's neuron convolutions (1×1 depthwise) counted apart from the layers' — and a micro-benchmark
prices each operator an IF neuron can be built from on a tensor the size of the network's first IF
layer at batch 64 (64 × 32 × 28 × 28 floats). Same models and weights as throughput.py, 2 threads,
no spinning.

It also measures a floor: the same compiled SNNs with every neuron's body (the model-local
``icsnn`` function each neuron calls) replaced by one ``Add`` of its state and its input — less
work than any IF neuron can do, fused kernel or not, since one must at least read both and write
its state — timed against the ANN pass, interleaved, median of several rounds. What that floor
costs per step over one ANN pass bounds, from below, every neuron implementation on these kernels.

    pip install -e ".[bench]"
    python benchmarks/step_cost.py           # ~40 s on 2 CPU cores

Writes benchmarks/results/step_cost.{json,png}.
"""

from __future__ import annotations

import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import RESULTS, TIMED, save_json  # noqa: E402 - the folder is on the path from here

T = 32
BATCH = 64
LAYER = [BATCH, 32, 28, 28]  # the MNIST CNN's first IF layer
CHAIN = 32  # operators per micro-benchmark graph
PROFILED_RUNS = 10


def session(model: str | bytes, profile: bool = False, optimized: str | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if optimized:
        options.optimized_model_filepath = optimized
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    options.enable_profiling = profile
    options.profile_file_prefix = str(Path(tempfile.gettempdir()) / "icsnn_step_cost")
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def median_run_s(sess, feeds: dict, repeats: int = 7) -> float:
    sess.run(None, feeds)
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        sess.run(None, feeds)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def _neuron_convs(optimized: Path) -> set[str]:
    """Names of the depthwise convolutions (the cpu target's neurons) in ONNX Runtime's optimized
    graph; the MNIST CNN's own convolutions are dense (group 1)."""
    import onnx

    names = set()
    for node in onnx.load(optimized).graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv" and attrs.get("group", 1) > 1:
            names.add(node.name)
    return names


def by_operator(path: str, feeds: dict) -> dict[str, float]:
    """Milliseconds per run spent in each operator type (ONNX Runtime's profiler)."""
    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        sess = session(path, profile=True, optimized=str(optimized))
        neuron_convs = _neuron_convs(optimized)
    for _ in range(PROFILED_RUNS):
        sess.run(None, feeds)
    trace = Path(sess.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    totals: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            name = event["name"].removesuffix("_kernel_time")
            op = "Conv 1×1 (neurons)" if name in neuron_convs else event["args"]["op_name"]
            totals[op] += event["dur"]
    runs = PROFILED_RUNS + 1  # the session's own warm-up run is profiled too
    return {op: round(us / runs / 1000, 4) for op, us in totals.most_common()}


def chain_model(op: str) -> bytes:
    """CHAIN dependent copies of one neuron building block on a LAYER-sized tensor."""
    import onnx
    from onnx import TensorProto, helper

    nodes, prev = [], "x"
    for k in range(CHAIN):
        out = f"y{k}"
        if op in ("Add", "Sub", "Mul"):
            nodes.append(helper.make_node(op, [prev, "c"], [out]))
        elif op == "GreaterOrEqual+Cast":
            nodes += [
                helper.make_node("GreaterOrEqual", [prev, "c"], [f"{out}.fired"]),
                helper.make_node("Cast", [f"{out}.fired"], [out], to=TensorProto.FLOAT),
            ]
        else:  # unary: an Add first, so that no two nodes compute the same value
            nodes += [
                helper.make_node("Add", [prev, "c"], [f"{out}.in"]),
                helper.make_node(op, [f"{out}.in"], [out]),
            ]
        prev = out
    graph = helper.make_graph(
        nodes,
        op,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, LAYER)],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, LAYER)],
        [helper.make_tensor("c", TensorProto.FLOAT, [], [0.01])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model.SerializeToString()


def operator_costs() -> dict[str, float]:
    """Milliseconds per operator on one LAYER-sized tensor; unary ops net of their Add."""
    x = np.random.default_rng(1).random(LAYER).astype(np.float32)
    per_op = {}
    for op in ("Add", "Sub", "Mul", "GreaterOrEqual+Cast", "Floor", "Relu"):
        per_op[op] = 1000 * median_run_s(session(chain_model(op)), {"x": x}) / CHAIN
    for op in ("Floor", "Relu"):
        per_op[op] -= per_op["Add"]
    return {op: round(ms, 4) for op, ms in per_op.items()}


FLOOR_ROUNDS = 7


def neuron_floor_model(path: str) -> bytes:
    """The model at ``path`` with each ``icsnn`` neuron function's body replaced by
    ``v_next = v + z; out = v_next``: the least any stateful neuron does per step."""
    import onnx
    from onnx import helper

    from icsnn_onnx.contract import NEURON_DOMAIN as DOMAIN
    from icsnn_onnx.neurons import IF

    v, z = IF.inputs[:2]  # every neuron function takes (v, z, …) and returns (out, v_next)
    out, v_next = IF.outputs
    model = onnx.load(path)
    replaced = 0
    for function in model.functions:
        if function.domain != DOMAIN:
            continue
        del function.node[:]
        function.node.extend(
            [
                helper.make_node("Add", [v, z], [v_next], name="integrate_only"),
                helper.make_node("Identity", [v_next], [out], name=out),
            ]
        )
        replaced += 1
    if not replaced:
        raise ValueError(f"{path} calls no {DOMAIN} neuron function")
    return model.SerializeToString()


def neuron_floor(ann: str, snns: dict[str, str], feeds: dict) -> dict:
    """Per-step time of each SNN, real and with :func:`neuron_floor_model`'s neurons, over one
    ANN pass: each round times every model once (ANN first), the median round is reported."""
    ann_session = session(ann)
    snn_sessions = {}
    for name, path in snns.items():
        snn_sessions[name] = session(path)
        snn_sessions[f"{name}, one-Add neurons"] = session(neuron_floor_model(path))
    ann_ms_rounds: list[float] = []
    ratios: dict[str, list[float]] = {name: [] for name in snn_sessions}
    for _ in range(FLOOR_ROUNDS):
        ann_ms = 1000 * median_run_s(ann_session, feeds, 15)
        ann_ms_rounds.append(ann_ms)
        for name, sess in snn_sessions.items():
            ratios[name].append(1000 * median_run_s(sess, feeds, 5) / T / ann_ms)
    return {
        "ann_pass_ms": round(statistics.median(ann_ms_rounds), 3),
        "step_over_ann_pass": {name: round(statistics.median(r), 2) for name, r in ratios.items()},
        "rounds": FLOOR_ROUNDS,
    }


def main() -> None:
    import onnxruntime as ort
    import torch
    import zoo
    from throughput import build, calibration

    import icsnn_onnx

    torch.manual_seed(0)
    x = np.random.default_rng(0).random((BATCH, 1, 28, 28)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        ann = str(Path(tmp) / "mnist_cnn.onnx")
        snn = str(Path(tmp) / "mnist_cnn.snn.onnx")
        snn_cpu = str(Path(tmp) / "mnist_cnn.cpu.snn.onnx")
        zoo.export(build("mnist_cnn"), (1, 28, 28), ann)
        icsnn_onnx.save_model(icsnn_onnx.convert(ann, calibration("mnist_cnn"), T=T, **TIMED), snn)
        icsnn_onnx.save_model(
            icsnn_onnx.convert(ann, calibration("mnist_cnn"), T=T, target="cpu", **TIMED), snn_cpu
        )
        feeds = {session(ann).get_inputs()[0].name: x}
        ann_ms, snn_ms, snn_cpu_ms = (1000 * median_run_s(session(m), feeds, 15) for m in (ann, snn, snn_cpu))
        ann_ops = by_operator(ann, feeds)
        snn_ops = {op: round(ms / T, 4) for op, ms in by_operator(snn, feeds).items()}
        snn_cpu_ops = {op: round(ms / T, 4) for op, ms in by_operator(snn_cpu, feeds).items()}
        floor = neuron_floor(ann, {"portable": snn, "cpu target": snn_cpu}, feeds)
    report = {
        "benchmark": "step_cost",
        "model": "mnist_cnn (throughput.py's, random weights), batch 64",
        "T": T,
        "machine": f"2 ONNX Runtime threads, onnxruntime {ort.__version__} CPU",
        "ann_pass_ms": round(ann_ms, 3),
        "snn_step_ms": round(snn_ms / T, 3),
        "snn_cpu_target_step_ms": round(snn_cpu_ms / T, 3),
        "ann_pass_by_operator_ms": ann_ops,
        "snn_step_by_operator_ms": snn_ops,
        "snn_cpu_target_step_by_operator_ms": snn_cpu_ops,
        "profiler_note": "profiled times include the profiler's own overhead; compare shares",
        "operator_ms_on_first_if_layer": operator_costs(),
        "operator_tensor_shape": LAYER,
        "neuron_floor": floor,
        "neuron_floor_note": (
            "SNN step time over one ANN pass, interleaved, median of rounds; 'one-Add neurons' "
            "replaces each neuron's body by v_next = v + z (less than any IF neuron does)"
        ),
    }
    RESULTS.mkdir(exist_ok=True)
    save_json(RESULTS / "step_cost.json", report)
    plot(report, RESULTS / "step_cost.png")
    print(
        json.dumps(
            {k: report[k] for k in ("ann_pass_ms", "snn_step_ms", "snn_cpu_target_step_ms", "neuron_floor")}
        )
    )


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right, floor) = plt.subplots(1, 3, figsize=(15, 3.8), dpi=110, width_ratios=(1.3, 1, 0.9))
    columns = {
        "ANN pass": report["ann_pass_by_operator_ms"],
        "SNN step": report["snn_step_by_operator_ms"],
        "SNN step,\n--target cpu": report["snn_cpu_target_step_by_operator_ms"],
    }
    ops = sorted(set().union(*columns.values()))
    bottom = np.zeros(len(columns))
    for op in ops:
        heights = np.array([by_op.get(op, 0) for by_op in columns.values()])
        if heights.max() < 0.02:
            continue
        left.bar(list(columns), heights, bottom=bottom, label=op)
        bottom += heights
    left.set_ylabel("ms (profiled)")
    left.set_title(f"MNIST CNN, batch {BATCH}, T={report['T']}")
    left.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars
    costs = report["operator_ms_on_first_if_layer"]
    right.bar(list(costs), list(costs.values()))
    right.set_ylabel("ms per operator")
    right.set_title("one operator on a 64×32×28×28 tensor")
    right.tick_params(axis="x", labelrotation=30, labelsize=7)
    ratios = report["neuron_floor"]["step_over_ann_pass"]
    floor.bar([name.replace(", ", ",\n") for name in ratios], list(ratios.values()))
    floor.axhline(1.0, color="k", linestyle="--", linewidth=1, label="dense bound (T × ANN)")
    floor.set_ylabel("SNN step / ANN pass")
    floor.set_title("real neurons vs one Add per neuron")
    floor.tick_params(axis="x", labelsize=7)
    floor.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    main()
