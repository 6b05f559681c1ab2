"""What a converted SNN computes densely, every step: its compensated units (docs/method.md §15).

A unit's work per step and sample is its ANN op's (a product of two activations: its
multiply-accumulates; a Softmax, a LayerNorm, an elementwise op: one operation per output
element) plus the running means it keeps (an add and a multiply per input element, a multiply and
a subtraction per output element). It is found in any file by its clones' names (``node.ecm@1``
at step 1, ``node.ecm@T`` stacked) and measured on the report's probe run; the energy estimate
counts every such operation as a multiply-accumulate, the cost of dense arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import onnx

from icsnn_onnx.contract import SnnMetadata, stacked_name, step_name

#: What the clones of a unit's node are named after (passes/unroll/compensated.py writes them so).
ECM = ".ecm"

#: Ops whose work is multiply-accumulates: output elements × the products each sums.
_PRODUCTS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose", "MatMulInteger", "ConvInteger", "Einsum"})
_RECURRENT = frozenset({"LSTM", "GRU", "RNN", "DynamicQuantizeLSTM"})
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1, "DynamicQuantizeLSTM": 4}


@dataclass(frozen=True)
class CompensatedCost:
    """One compensated unit's dense work per sample (over every step)."""

    name: str
    ops: tuple[str, ...]
    macs_per_step: float  # its products' multiply-accumulates, per sample and step
    other_per_step: float  # its other ops' outputs and the running means' bookkeeping
    per_sample: float  # T × both: what the energy estimate counts at e_mac


def clone_nodes(model: onnx.ModelProto, meta: SnnMetadata) -> dict[str, list[onnx.NodeProto]]:
    """Each unit's step-1 (or stacked) clones in the file, by unit name."""
    by_name = {n.name: n for n in model.graph.node}
    found: dict[str, list[onnx.NodeProto]] = {}
    for unit in meta.compensated:
        clones = []
        for node in unit["nodes"]:
            clone = by_name.get(step_name(f"{node}{ECM}", 1)) or by_name.get(stacked_name(f"{node}{ECM}"))
            if clone is not None:
                clones.append(clone)
        found[str(unit["unit"])] = clones
    return found


def probe_names(clones: Mapping[str, list[onnx.NodeProto]]) -> list[str]:
    """The tensors whose shapes the costs need (the clones' inputs and outputs)."""
    return list(
        dict.fromkeys(t for nodes in clones.values() for n in nodes for t in [*n.input, *n.output] if t)
    )


def compensated_costs(
    model: onnx.ModelProto,
    meta: SnnMetadata,
    clones: Mapping[str, list[onnx.NodeProto]],
    shapes: Mapping[str, tuple[int, ...]],
    batch: int,
) -> list[CompensatedCost]:
    """Every unit's cost per sample, from the probe run's ``shapes`` (a batch of ``batch``
    samples; stacked tensors hold T of them)."""
    constants = {t.name: tuple(t.dims) for t in model.graph.initializer}
    every = {**constants, **shapes}
    found = []
    for unit in meta.compensated:
        nodes = clones.get(str(unit["unit"]), [])
        samples = batch * (meta.T if nodes and nodes[0].name.endswith(stacked_name("")) else 1)
        macs = other = 0.0
        internal = {o for n in nodes for o in n.output}
        for node in nodes:
            out = every.get(node.output[0], ())
            per_output = _products(node, every)
            if per_output:
                macs += math.prod(out) * per_output / samples
            else:
                other += sum(math.prod(every.get(o, ())) for o in node.output if o) / samples
        inputs = {i for n in nodes for i in n.input if i and i not in internal and i not in constants}
        other += 2 * sum(math.prod(every.get(i, ())) for i in inputs) / samples
        other += 2 * sum(math.prod(every.get(o, ())) for o in _read_outside(model, nodes)) / samples
        found.append(
            CompensatedCost(str(unit["unit"]), tuple(unit["ops"]), macs, other, meta.T * (macs + other))
        )
    return found


def _products(node: onnx.NodeProto, shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Products each output element of ``node`` sums (0: it is no product)."""
    if node.op_type in _PRODUCTS:
        a = shapes.get(node.input[0], ())
        if node.op_type in ("Conv", "ConvTranspose", "ConvInteger"):
            w = shapes.get(node.input[1], ())
            return math.prod(w[1:]) if w else 0
        return a[-1] if a else 0
    if node.op_type in _RECURRENT:
        x, w = shapes.get(node.input[0], ()), shapes.get(node.input[1], ())
        if len(x) == 3 and len(w) == 3:  # Y [seq, dirs, batch, H]: each element sums the gates' products
            hidden = w[1] // _GATES[node.op_type]
            return _GATES[node.op_type] * (x[2] + hidden)
    return 0


def _read_outside(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> list[str]:
    """The unit's outputs the rest of the network reads (the changes of t·g it emits)."""
    internal = {id(n) for n in nodes}
    produced = {o for n in nodes for o in n.output}
    read = {i for n in model.graph.node if id(n) not in internal for i in n.input}
    return sorted(produced & (read | {o.name for o in model.graph.output}))
