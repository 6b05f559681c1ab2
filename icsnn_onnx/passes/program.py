"""The compilation state the passes share: a graphsurgeon graph plus what passes learned.

The records are frozen and validated on construction (real exceptions, not asserts), so a
pass cannot leave a half-formed activation site or neuron behind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from icsnn_onnx import neurons
from icsnn_onnx.contract import NEURON_DOMAIN, NEURON_DOMAIN_VERSION
from icsnn_onnx.neurons import IF, ElementwiseFunction
from icsnn_onnx.neurons.sigma_delta import NAME as SIGMA_DELTA
from icsnn_onnx.ops.elementwise import evaluate
from icsnn_onnx.ops.subgraphs import subgraph_reads
from icsnn_onnx.options import ConversionOptions


class ActivationKind(str, Enum):
    RELU = "relu"  # max(x, 0)
    CLIPPED = "clipped"  # min(max(x, 0), λ)
    QUANTIZED = "quantized"  # (λ/L)·clip(floor(x·L/λ + φ), 0, L)
    GENERIC = "generic"  # any other elementwise f, carried as the graph's own nodes


@dataclass(frozen=True)
class TransferStep:
    """One elementwise op of a transfer function: ``op_type(x, *constants)``, each constant with
    the suffix that names it in the graph."""

    op_type: str
    constants: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class TransferFunction:
    """The scalar function an activation site computes, as recognized from the graph."""

    kind: ActivationKind
    upper_bound: float | None = None  # λ
    levels: int | None = None  # L
    offset: float | None = None  # φ, the rounding offset of a quantized activation
    function: ElementwiseFunction | None = None  # f itself (generic activations)
    nonnegative: bool = True  # f(x) >= 0 for every x (what a padded MaxPool after it needs)

    def __post_init__(self) -> None:
        if self.kind is ActivationKind.GENERIC:
            if self.function is None or self.upper_bound is not None or self.levels is not None:
                raise ValueError("a generic activation is its function, with no bound or levels")
            return
        if self.function is not None or not self.nonnegative:
            raise ValueError(f"a {self.kind.value} activation is >= 0 and defined by its parameters")
        if self.kind is ActivationKind.RELU:
            if self.upper_bound is not None or self.levels is not None or self.offset is not None:
                raise ValueError("an unclipped ReLU has no bound, levels or offset")
            return
        if self.upper_bound is None or not math.isfinite(self.upper_bound) or self.upper_bound <= 0:
            raise ValueError(f"{self.kind.value} activation needs a finite bound λ > 0")
        if self.kind is ActivationKind.CLIPPED:
            if self.levels is not None or self.offset is not None:
                raise ValueError("a continuous clipped ReLU has no levels or offset")
            return
        if self.levels is None or self.levels < 1:
            raise ValueError("a quantized activation needs levels L >= 1")
        if self.offset is None or not 0.0 <= self.offset < 1.0:
            raise ValueError("a quantized activation needs an offset φ in [0, 1)")

    def equations(self) -> tuple[TransferStep, ...]:
        """The function as elementwise ONNX ops applied in turn to ``x``: the one definition that
        :meth:`__call__` evaluates in numpy and the read-out (``passes/unroll``) emits as nodes
        (a generic activation is its :attr:`function`, evaluated inside its neuron)."""
        if self.kind is ActivationKind.GENERIC:
            raise ValueError("a generic activation has no chain of ops: it is its function")
        if self.kind is ActivationKind.RELU:
            return (TransferStep("Relu"),)
        lam = float(self.upper_bound)
        if self.kind is ActivationKind.CLIPPED:
            return (TransferStep("Clip", ((".lo", 0.0), (".hi", lam))),)
        L = int(self.levels)
        return (
            TransferStep("Mul", ((".scale", L / lam),)),
            TransferStep("Add", ((".offset", float(self.offset)),)),
            TransferStep("Floor"),
            TransferStep("Clip", ((".lo", 0.0), (".hi", float(L)))),
            TransferStep("Mul", ((".step", lam / L),)),
        )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Evaluate the recognized function in numpy, as the ONNX read-out computes it."""
        if self.function is not None:
            return self.function(x)
        value = np.asarray(x)
        for step in self.equations():
            constants = [
                np.asarray(c, value.dtype if value.dtype.kind == "f" else np.float64)
                for _, c in step.constants
            ]
            value = evaluate(step.op_type, [value, *constants], {})
        return value

    def describe(self) -> str:
        if self.function is not None:
            return self.function.description
        if self.kind is ActivationKind.RELU:
            return "relu"
        if self.kind is ActivationKind.CLIPPED:
            return f"clip(0, {self.upper_bound:g})"
        return f"quantized(λ={self.upper_bound:g}, L={self.levels}, φ={self.offset:g})"


@dataclass(frozen=True)
class ActivationSite:
    """An elementwise region (or a span of one) ``input → … → output``: an activation, made a
    neuron of the kind its transfer function calls for (:attr:`neuron`)."""

    name: str
    input: str  # pre-activation tensor name
    output: str  # activation tensor name
    nodes: tuple[str, ...]  # names of the chain's nodes, input to output
    transfer: TransferFunction
    note: str = ""  # why a generic activation is not the IF neuron's (its transfer is not ReLU-like)

    @property
    def neuron(self) -> str:
        """The neuron kind's name: the IF neuron for the ReLU family, else sigma-delta."""
        return SIGMA_DELTA if self.transfer.kind is ActivationKind.GENERIC else IF.name

    def __post_init__(self) -> None:
        if not self.nodes:
            raise ValueError(f"activation site {self.name!r} has no nodes")
        if self.input == self.output:
            raise ValueError(f"activation site {self.name!r} maps a tensor onto itself")


@dataclass(frozen=True)
class CompensatedUnit:
    """Nodes that are not affine in their time-varying inputs, between neurons, computed at every
    step on the running means of those inputs and emitting the change of ``t·f(means)``
    (expectation compensation, docs/method.md §15): dense work, no spikes. One node, or several
    joined where an integer tensor runs between them (a quantizer and the op that reads it)."""

    name: str
    nodes: tuple[str, ...]  # topological order
    op_types: tuple[str, ...]
    reason: str  # why its first node is not affine in its time-varying inputs

    def __post_init__(self) -> None:
        if not self.nodes or len(self.nodes) != len(self.op_types):
            raise ValueError(f"compensated unit {self.name!r} needs its nodes and their op types")


class EncodingKind(str, Enum):
    RATE = "rate"  # an IF encoder neuron (θ = 1) fed the normalized input as constant current
    POISSON = "poisson"  # Bernoulli spikes with p = normalized input, fixed seeded noise


@dataclass(frozen=True)
class InputEncoder:
    """How a graph input becomes a spike train (rate or Poisson coding).

    The input ``x`` is normalized to ``c = (x − low)/(high − low)`` ∈ [0, 1] and encoded into
    spikes ``s(t)``; the network receives ``low + (high − low)·s(t)``, whose mean over T steps
    approximates ``x``. ``v_init`` is the rate encoder's initial potential (θ = 1): 1/2 rounds
    the spike count ``floor(c·T + v_init)``, 0 floors it. ``seed`` fixes the Poisson noise.
    """

    input: str
    kind: EncodingKind
    low: float
    high: float
    v_init: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.high <= self.low:
            raise ValueError(
                f"encoder for {self.input!r} needs finite low < high, got {self.low}, {self.high}"
            )
        if not 0.0 <= self.v_init < 1.0:
            raise ValueError(f"encoder initial potential must be in [0, 1), got {self.v_init}")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")

    def describe(self) -> str:
        what = f"v0={self.v_init:g}" if self.kind is EncodingKind.RATE else f"seed={self.seed}"
        return f"{self.kind.value} low={self.low:.6g} high={self.high:.6g} {what}"


@dataclass
class Program:
    """Mutable state threaded through the pass pipeline."""

    graph: gs.Graph
    options: ConversionOptions
    opset: int
    extra_opsets: dict[str, int] = field(default_factory=dict)  # e.g. ai.onnx.ml
    sites: dict[str, ActivationSite] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)  # node name → why not an activation
    side: dict[str, str] = field(default_factory=dict)  # node name → why it is a dense side computation
    units: dict[str, CompensatedUnit] = field(default_factory=dict)  # compensated units by name
    thresholds: dict[str, np.ndarray] = field(default_factory=dict)  # site name → θ
    v_init: dict[str, np.ndarray] = field(default_factory=dict)  # site name → v(0)
    current_bias: dict[str, np.ndarray] = field(default_factory=dict)  # site → δ added to its current
    encoders: dict[str, InputEncoder] = field(default_factory=dict)  # graph input → its encoder
    maxpools: dict[str, str] = field(default_factory=dict)  # MaxPool node → policy applied to it
    metadata: dict[str, str] = field(default_factory=dict)
    init_calibration: object | None = None  # what Alg 2 found (passes/initial_potential.InitCalibration)

    def to_onnx(self) -> onnx.ModelProto:
        """Export the current graph as a model ONNX Runtime runs.

        Carries the ``icsnn`` opset and the functions of the neuron kinds the graph uses, and the
        lowest IR version for its opsets (onnx writes its newest IR by default, which an older
        ONNX Runtime refuses).
        """
        model = gs.export_onnx(self.graph.copy(), do_type_check=False)
        _share_outer_initializers(model.graph)
        _sort_with_subgraph_reads(model.graph)
        del model.opset_import[:]
        opsets = {"": self.opset, **self.extra_opsets}
        used = {n.op_type for n in model.graph.node if n.domain == NEURON_DOMAIN}
        if used:
            opsets[NEURON_DOMAIN] = NEURON_DOMAIN_VERSION
        model.functions.extend(neurons.functions(used, self.opset))
        model.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in opsets.items())
        model.ir_version = max(
            8, onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
        )
        return model

    @property
    def unit_nodes(self) -> frozenset[str]:
        """Every node of every compensated unit."""
        return frozenset(n for unit in self.units.values() for n in unit.nodes)

    @property
    def gates(self) -> frozenset[str]:
        """MaxPool nodes realized by the spike gate (stateful over time, like a neuron)."""
        return frozenset(name for name, policy in self.maxpools.items() if policy == "gate")

    def copy(self) -> Program:
        """An independent copy (the graph deep-copied), e.g. to build a trial SNN."""
        return Program(
            graph=self.graph.copy(),
            options=self.options,
            opset=self.opset,
            extra_opsets=dict(self.extra_opsets),
            sites=dict(self.sites),
            rejected=dict(self.rejected),
            side=dict(self.side),
            units=dict(self.units),
            thresholds=dict(self.thresholds),
            v_init=dict(self.v_init),
            current_bias=dict(self.current_bias),
            encoders=dict(self.encoders),
            maxpools=dict(self.maxpools),
            metadata=dict(self.metadata),
        )


def _share_outer_initializers(graph: onnx.GraphProto, outer: frozenset[str] = frozenset()) -> None:
    """graphsurgeon exports a constant used both in a graph and in a subgraph (a ``Loop`` body
    reading the layers' weights) twice; the subgraph reads the outer one by name instead."""
    names = outer | {t.name for t in graph.initializer}
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                body = attribute.g
                kept = [t for t in body.initializer if t.name not in names]
                if len(kept) != len(body.initializer):
                    del body.initializer[:]
                    body.initializer.extend(kept)
                _share_outer_initializers(body, names)


def _sort_with_subgraph_reads(graph: onnx.GraphProto) -> None:
    """Order the nodes so that each comes after whatever it reads, its subgraphs' reads of this
    graph included (graphsurgeon's order sees only listed inputs, and an If reading a read-out
    tensor through its branches would come before it)."""
    nodes = list(graph.node)
    reads = {i: found for i, node in enumerate(nodes) if (found := subgraph_reads(node))}
    if not reads:
        return
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    order, placed, visiting = [], set(), set()

    def place(i: int) -> None:
        if i in placed:
            return
        visiting.add(i)
        node = nodes[i]
        for name in [*node.input, *reads.get(i, ())]:
            j = producer.get(name)
            if j is not None and j not in placed and j not in visiting:
                place(j)
        visiting.discard(i)
        placed.add(i)
        order.append(node)

    for i in range(len(nodes)):
        place(i)
    sorted_nodes = [onnx.NodeProto() for _ in order]
    for copy, node in zip(sorted_nodes, order, strict=True):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(sorted_nodes)
