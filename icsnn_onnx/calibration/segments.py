"""Run a network one segment at a time, from stored cut tensors (Alg 2 in one pass).

:func:`extract` takes the nodes that compute some tensors from the graph inputs and a set of
*cut* tensors, and makes the reached cuts graph inputs: a segment. Run in topological order,
each segment reads the cuts its predecessors stored, so a network is computed once, layer by
layer, instead of from the input for every layer. :class:`SpillStore` keeps the cut tensors of
the calibration samples on disk (memory-mapped) and frees each once its last reader has run, so
memory is bounded by a batch, not by the samples × the network.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from icsnn_onnx.ops.subgraphs import subgraph_reads


def extract(
    model: onnx.ModelProto, outputs: Iterable[str], cuts: set[str]
) -> tuple[onnx.ModelProto, list[str]]:
    """The segment of ``model`` computing ``outputs`` from its graph inputs and ``cuts``; returns
    it and the cuts it reads (its inputs besides the graph's own)."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    constants = {t.name for t in graph.initializer}
    graph_inputs = {i.name for i in graph.input if i.name not in constants}
    kept: list[onnx.NodeProto] = []
    seen: set[int] = set()
    read_cuts: list[str] = []
    read_inputs: set[str] = set()
    stack = list(outputs)
    visited: set[str] = set()
    while stack:
        tensor = stack.pop()
        if tensor in visited or not tensor:
            continue
        visited.add(tensor)
        if tensor in cuts:
            read_cuts.append(tensor)
        elif tensor in graph_inputs:
            read_inputs.add(tensor)
        elif tensor in producer and id(producer[tensor]) not in seen:
            node = producer[tensor]
            seen.add(id(node))
            kept.append(node)
            stack.extend(node.input)
            stack.extend(subgraph_reads(node))  # an If's branches read around it too
    order = {id(n): i for i, n in enumerate(graph.node)}
    kept.sort(key=lambda n: order[id(n)])
    used = {i for n in kept for i in [*n.input, *subgraph_reads(n)]}
    types = {v.name: v for v in [*graph.input, *graph.value_info, *graph.output]}
    inputs = [i for i in graph.input if i.name in read_inputs]
    for cut in read_cuts:
        elem = types[cut].type.tensor_type.elem_type if cut in types else onnx.TensorProto.FLOAT
        inputs.append(helper.make_tensor_value_info(cut, elem, None))
    outs = [helper.make_tensor_value_info(o, _elem(types, o), None) for o in outputs]
    segment_graph = helper.make_graph(
        kept,
        f"{graph.name}.segment",
        inputs,
        outs,
        initializer=[t for t in graph.initializer if t.name in used],
    )
    segment = helper.make_model(segment_graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    segment.functions.extend(model.functions)
    return segment, read_cuts


def rename_outputs(model: onnx.ModelProto, names: Mapping[str, str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs are renamed (``names``: old → new), e.g. to merge
    two segments computing tensors of the same names."""
    renamed = onnx.ModelProto()
    renamed.CopyFrom(model)
    graph = renamed.graph
    produced = {out for node in graph.node for out in node.output}
    for node in graph.node:
        node.output[:] = [names.get(o, o) if o in produced else o for o in node.output]
        node.input[:] = [names.get(i, i) if i in produced else i for i in node.input]
    for output in graph.output:
        if output.name in names:
            if output.name not in produced:  # an input or constant passed through
                graph.node.append(helper.make_node("Identity", [output.name], [names[output.name]]))
            output.name = names[output.name]
    return renamed


def merge(first: onnx.ModelProto, second: onnx.ModelProto) -> onnx.ModelProto | None:
    """One model computing both segments' outputs (one session to load instead of two), or None
    where they disagree on a name: a tensor both compute differently, an input one of them
    computes, a constant of the same name with other values, an opset of another version."""
    g1, g2 = first.graph, second.graph
    made1 = {out: node for node in g1.node for out in node.output}
    made2 = {out: node for node in g2.node for out in node.output}
    constants1 = {t.name: t for t in g1.initializer}
    constants2 = {t.name: t for t in g2.initializer}
    inputs1, inputs2 = {i.name for i in g1.input}, {i.name for i in g2.input}
    opsets = {o.domain: o.version for o in first.opset_import}
    if (
        any(made1[name] != made2[name] for name in made1.keys() & made2.keys())
        or any(constants1[name] != constants2[name] for name in constants1.keys() & constants2.keys())
        or (inputs1 | constants1.keys()) & made2.keys()
        or (inputs2 | constants2.keys()) & made1.keys()
        or any(opsets.get(o.domain, o.version) != o.version for o in second.opset_import)
    ):
        return None
    names1 = {o.name for o in g1.output}
    graph = helper.make_graph(
        [*g1.node, *(n for n in g2.node if not all(made1.get(out) == n for out in n.output))],
        g1.name,
        [*g1.input, *(i for i in g2.input if i.name not in inputs1)],
        [*g1.output, *(o for o in g2.output if o.name not in names1)],
        initializer=[*g1.initializer, *(t for t in g2.initializer if t.name not in constants1)],
    )
    imports = [*first.opset_import, *(o for o in second.opset_import if o.domain not in opsets)]
    merged = helper.make_model(
        graph, opset_imports=imports, ir_version=max(first.ir_version, second.ir_version)
    )
    functions = {(f.domain, f.name) for f in first.functions}
    merged.functions.extend(
        [*first.functions, *(f for f in second.functions if (f.domain, f.name) not in functions)]
    )
    return merged


#: Ops that compute each sample from that sample alone, whatever their attributes: on a batch of
#: N they give every sample what a batch of one gives it (constants broadcast alike). With axes:
#: see :func:`per_sample`.
_PER_SAMPLE_OPS = frozenset(
    {
        "Abs", "Add", "And", "AveragePool", "BatchNormalization", "Cast", "Ceil", "Clip", "Conv",
        "Div", "Dropout", "Equal", "Erf", "Exp", "Floor", "GlobalAveragePool", "GlobalMaxPool",
        "Greater", "GreaterOrEqual", "HardSigmoid", "Identity", "LeakyRelu", "Less", "LessOrEqual",
        "Log", "Max", "MaxPool", "Mean", "Min", "Mul", "Neg", "Not", "Or", "Pow", "Reciprocal",
        "Relu", "Round", "Sigmoid", "Sign", "Sqrt", "Sub", "Sum", "Tanh", "Where",
    }
)  # fmt: skip
#: Ops whose ``axis`` must not be the batch axis (0), and what it defaults to.
_AXIS_OPS = {"Concat": None, "Flatten": 1, "Softmax": 1, "LogSoftmax": 1}


def per_sample(model: onnx.ModelProto) -> bool:
    """Whether every node of ``model`` (and of the functions it calls) provably computes each
    sample alone, so the model may run on more samples than its inputs' fixed batch size. Shape
    inference cannot tell: a Reshape to a hard-coded ``[1, -1]`` runs on a batch of 4 and
    silently mixes the samples. Conservative: an op not listed says no."""
    functions = {(f.domain, f.name): f for f in model.functions}
    constants = {t.name for t in model.graph.initializer}

    def ok(nodes: Iterable[onnx.NodeProto]) -> bool:
        for node in nodes:
            key = (node.domain, node.op_type)
            if key in functions:
                if not ok(functions[key].node):
                    return False
            elif node.op_type in _AXIS_OPS:
                axis = next((a.i for a in node.attribute if a.name == "axis"), _AXIS_OPS[node.op_type])
                if axis is None or axis == 0 or axis < 0:  # a negative axis may be 0 at rank 1
                    return False
            elif node.op_type in ("Gemm", "MatMul"):
                transposed = any(a.name == "transA" and a.i for a in node.attribute)
                if transposed or node.input[1] not in constants:  # row by row of A against weights
                    return False
            elif node.op_type not in _PER_SAMPLE_OPS:
                return False
        return True

    return ok(model.graph.node)


def free_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose inputs' and outputs' first dimension is symbolic (for a model
    :func:`per_sample` accepts): its other shapes, inferred for the fixed batch, are dropped."""
    free = onnx.ModelProto()
    free.CopyFrom(model)
    for value in [*free.graph.input, *free.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if value.name not in {t.name for t in free.graph.initializer} and len(dims):
            dims[0].Clear()
            dims[0].dim_param = "batch"
    del free.graph.value_info[:]
    return free


def _elem(types: Mapping[str, onnx.ValueInfoProto], name: str) -> int:
    value = types.get(name)
    return value.type.tensor_type.elem_type if value is not None else onnx.TensorProto.FLOAT


class SpillStore:
    """Arrays ``[samples, …]`` by name: in memory while they fit ``memory_bytes`` together, else
    memory-mapped in a temporary folder (deleted on close). Small calibration sets stay off the
    disk; large ones cost a budget's worth of memory, whatever the number of samples."""

    def __init__(self, memory_bytes: int = 512 << 20) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="icsnn-segments-"))
        self._arrays: dict[str, np.ndarray] = {}
        self._budget = memory_bytes
        self._lock = threading.Lock()  # Alg 2's reference run stores from its own thread
        self._files = itertools.count()

    def create(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        with self._lock:
            in_memory = sum(a.nbytes for a in self._arrays.values() if not isinstance(a, np.memmap))
            if in_memory + size <= self._budget:
                array: np.ndarray = np.empty(shape, dtype)
            else:
                path = self._dir / f"{next(self._files)}.bin"
                array = np.memmap(path, dtype=dtype, mode="w+", shape=shape)
            self._arrays[name] = array
        return array

    def __getitem__(self, name: str) -> np.ndarray:
        return self._arrays[name]

    def __contains__(self, name: str) -> bool:
        return name in self._arrays

    def drop(self, name: str) -> None:
        with self._lock:
            array = self._arrays.pop(name, None)
        if isinstance(array, np.memmap):
            path = Path(array.filename)
            del array
            path.unlink(missing_ok=True)

    def close(self) -> None:
        self._arrays.clear()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> SpillStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
