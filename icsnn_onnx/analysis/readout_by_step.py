"""The SNN's outputs after every t = 1…T, for a file compiled without ``--per-step``.

The head (the layers after the last neurons) runs once, on each cut's read-out: the mean
``Σ_{k≤T} out(k) / T``, or for a compensated cut its transfer function of
``(Σ out + v(T) − v(0)) / T`` (docs/method.md §5). The output after t steps is the same head on
the same read-out after t steps. :class:`StepReadout` finds, from the file alone, each cut's
per-step values and membranes and the head, exposes the former from the instrumented SNN
(Loop layouts: as extra scan outputs) and runs the head — extracted as its own small model —
on the read-out after each t. Memory: T × one batch of each cut.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from icsnn_onnx.analysis.accumulate import expose_also
from icsnn_onnx.contract import loop_step_name, readout_name, stacked_name, step_name
from icsnn_onnx.errors import ModelLoadError
from icsnn_onnx.runtime.instrument import NeuronLayer


@dataclass(frozen=True)
class _Cut:
    name: str
    total: str  # Σ of the cut over the T steps, as the head's read-out reads it
    inv: str  # the constant 1/T
    v_T: str | None  # compensated: v(T) of the cut's neuron
    layer: NeuronLayer | None  # compensated: that neuron layer


class StepReadout:
    """Finds the head and each cut's per-step values in ``model`` (an SNN without per-step
    outputs) and computes the outputs after every t."""

    def __init__(self, model: onnx.ModelProto, layers: Sequence[NeuronLayer], T: int) -> None:
        self.T = T
        nodes = {n.name: n for n in model.graph.node}
        tensors = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
        by_membrane = {layer.membranes[-1]: layer for layer in layers}
        by_membrane |= {layer.loop.final_membrane: layer for layer in layers if layer.loop is not None}
        self.cuts: list[_Cut] = []
        for cut in sorted(tensors):
            integrated = nodes.get(step_name(readout_name(cut, "integrated"), T))
            mean = nodes.get(step_name(readout_name(cut, "mean"), T))
            if integrated is not None:
                residual = nodes[step_name(readout_name(cut, "residual"), T)]
                scale = nodes[step_name(readout_name(cut, "membrane_mean"), T)]
                layer = by_membrane.get(residual.input[0])
                if layer is None:
                    raise ModelLoadError(f"read-out of {cut}: no neuron has membrane {residual.input[0]}")
                self.cuts.append(_Cut(cut, integrated.input[0], scale.input[1], residual.input[0], layer))
            elif mean is not None and mean.op_type == "Mul":
                self.cuts.append(_Cut(cut, mean.input[0], mean.input[1], None, None))
        if not self.cuts:
            raise ModelLoadError("found no read-out to evaluate after each step")
        self.head, self.external = _head_model(model, self.cuts)
        self.looped = any(n.op_type == "Loop" for n in model.graph.node)
        self.stacked = stacked_name(self.cuts[0].name) in tensors

    def expose(self, model: onnx.ModelProto) -> list[str]:
        """Make ``model`` (the instrumented copy) return what :meth:`outputs_by_t` reads."""
        names = list(self.external)
        if self.looped:
            loop = next(n for n in model.graph.node if n.op_type == "Loop")
            body = next(a.g for a in loop.attribute if a.name == "body")
            for cut in self.cuts:
                names += [step_name(cut.name, 1), self._scan(loop, body, loop_step_name(cut.name))]
                if cut.layer is not None:
                    names += [cut.layer.membranes[0], self._scan(loop, body, cut.layer.loop.membrane)]
        else:
            for cut in self.cuts:
                steps = range(1, self.T + 1)
                names += [stacked_name(cut.name)] if self.stacked else [step_name(cut.name, t) for t in steps]
                if cut.layer is not None:
                    names += list(cut.layer.membranes)
        expose_also(model, names)
        return list(dict.fromkeys(names))

    def _scan(self, loop: onnx.NodeProto, body: onnx.GraphProto, tensor: str) -> str:
        """Stack ``tensor`` of the Loop body over steps 2…T as a new Loop output."""
        body.output.append(onnx.ValueInfoProto(name=tensor))
        out = f"{tensor}.report_scan"
        loop.output.append(out)
        return out

    def outputs_by_t(
        self, got: Mapping[str, np.ndarray], session_of: object
    ) -> Iterator[dict[str, np.ndarray]]:
        """For one batch's results ``got``: the head's outputs after t = 1…T."""
        per_cut = {}
        for cut in self.cuts:
            steps = self._steps(got, cut.name, None)
            totals = np.cumsum(steps, axis=0, dtype=np.float64).astype(steps.dtype)
            membranes = self._steps(got, None, cut.layer) if cut.layer is not None else None
            per_cut[cut.name] = (totals, membranes)
        for t in range(1, self.T + 1):
            feeds = {name: got[name] for name in self.external}
            for cut in self.cuts:
                totals, membranes = per_cut[cut.name]
                feeds[cut.total] = totals[t - 1]
                feeds[cut.inv] = np.asarray(1.0 / t, totals.dtype)
                if membranes is not None:
                    feeds[cut.v_T] = membranes[t - 1]
            yield session_of.run(feeds)

    def _steps(self, got: Mapping[str, np.ndarray], cut: str | None, layer: NeuronLayer | None) -> np.ndarray:
        """``[T, N, …]``: a cut's values (``cut``) or a neuron layer's membranes at every step."""
        if self.looped:
            first, body = (
                (step_name(cut, 1), f"{loop_step_name(cut)}.report_scan")
                if cut is not None
                else (layer.membranes[0], f"{layer.loop.membrane}.report_scan")
            )
            return np.concatenate([got[first][None], got[body]], axis=0)
        if cut is None:
            return np.stack([got[m] for m in layer.membranes])
        if self.stacked:
            value = got[stacked_name(cut)]
            return value.reshape(self.T, -1, *value.shape[1:])
        return np.stack([got[step_name(cut, t)] for t in range(1, self.T + 1)])


def _head_model(model: onnx.ModelProto, cuts: Sequence[_Cut]) -> tuple[onnx.ModelProto, list[str]]:
    """The nodes from the cuts' read-outs to the outputs, as a model whose inputs are each
    cut's total, v(T) and 1/T, and any other tensor it reads (``external``, fed as is)."""
    seeds = {c.total for c in cuts} | {c.inv for c in cuts} | {c.v_T for c in cuts if c.v_T}
    graph = model.graph
    constants = {t.name: t for t in graph.initializer}
    reached, chosen = set(seeds), []
    for node in graph.node:
        if any(i in reached for i in node.input):
            chosen.append(node)
            reached |= set(node.output)
    needed = {o.name for o in graph.output}
    head = []
    for node in reversed(chosen):  # keep the nodes the outputs need
        if any(o in needed for o in node.output):
            head.append(node)
            needed |= set(node.input)
    head.reverse()
    produced = {o for n in head for o in n.output}
    used = list(dict.fromkeys(i for n in head for i in n.input if i))
    external = [i for i in used if i not in produced and i not in seeds and i not in constants]
    inputs = [onnx.ValueInfoProto(name=n) for n in [*sorted(seeds), *external]]
    types = _elem_types(model, external)
    for value in inputs:  # ONNX Runtime wants typed graph inputs: the read-outs are float, others as they are
        value.type.tensor_type.elem_type = types.get(value.name, onnx.TensorProto.FLOAT)
    initializers = [constants[i] for i in used if i in constants and i not in seeds]
    outputs = [o for o in graph.output if o.name in produced]
    head_graph = helper.make_graph(head, "icsnn_head", inputs, outputs, initializers)
    built = helper.make_model(head_graph, opset_imports=list(model.opset_import))
    built.ir_version = model.ir_version
    built.functions.extend(model.functions)
    return built, external


def _elem_types(model: onnx.ModelProto, names: Sequence[str]) -> dict[str, int]:
    """The element types of ``names`` (a shape computed beside the head is an int64, not a float)."""

    def known(m: onnx.ModelProto) -> dict[str, int]:
        values = [*m.graph.value_info, *m.graph.input, *m.graph.output]
        return {v.name: v.type.tensor_type.elem_type for v in values if v.type.tensor_type.elem_type}

    types = known(model)
    if any(n not in types for n in names):
        try:
            types = known(onnx.shape_inference.infer_shapes(model)) | types
        except Exception:  # no inference: the unknown ones stay float, as before
            pass
    return {n: types[n] for n in names if n in types}
