"""The public ``inspect_model``: what a model would become, without calibration data — which
activations become which neurons, which ops stay dense (compensated units, side computations),
which run once, and what cannot be converted — with the share of activations that would spike."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from icsnn_onnx.converter import ModelSource, front_end, with_constants
from icsnn_onnx.data import InputSpec, fixed_values, input_specs
from icsnn_onnx.errors import UnsupportedNode
from icsnn_onnx.model_io import load_model
from icsnn_onnx.options import DEFAULT_MAXPOOL, ConversionOptions
from icsnn_onnx.passes import PassManager
from icsnn_onnx.passes.canonicalize import default_opset, import_model
from icsnn_onnx.passes.compensate import activation_nodes, plan_units
from icsnn_onnx.passes.program import ActivationKind, ActivationSite, CompensatedUnit
from icsnn_onnx.passes.temporal import analyze_program, branch_hint, nonlinear_nodes
from icsnn_onnx.quiet import quiet_dependencies

#: How each kind of node behaves over time, as ``inspect`` says it.
NEURON = "activation → {kind} neuron"
GATE = "spike gate (max accumulated input)"
UNIT = "compensated unit (dense, per step)"
SIDE = "side computation (dense)"
BLOCKS = "BLOCKS conversion"
HEAD = "once, on the read-out"
BODY = "per step (affine)"
STRUCTURAL = "once (shape only)"
ONCE = "once (time-invariant)"


@dataclass(frozen=True)
class Inspection:
    """What :func:`inspect_model` found."""

    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...]
    source_opset: int
    producer: str
    sites: tuple[ActivationSite, ...]
    op_behaviour: tuple[tuple[str, str, int], ...]  # (op type, behaviour over time, count)
    blockers: tuple[UnsupportedNode, ...]
    maxpools: tuple[tuple[str, str], ...] = ()  # (MaxPool node, policy applied or "read-out")
    units: tuple[CompensatedUnit, ...] = ()  # what stays dense between neurons
    side: tuple[tuple[str, str], ...] = ()  # (node, why it is a dense side computation)
    activations: int = 0  # nonlinear nodes of the elementwise activations (side computations apart)
    spiking_activations: int = 0  # of those, in neuron sites
    notes: tuple[str, ...] = ()  # what stays dense that fixing an input would convert

    @property
    def convertible(self) -> bool:
        return bool(self.sites) and not self.blockers

    @property
    def needs_calibration(self) -> bool:
        return any(s.transfer.kind in (ActivationKind.RELU, ActivationKind.GENERIC) for s in self.sites)

    @property
    def spiking_share(self) -> float:
        """The share of the elementwise activations that become spiking neurons."""
        return self.spiking_activations / self.activations if self.activations else 1.0

    def summary(self) -> str:
        """One line: what spikes, what stays dense."""
        kinds = Counter(s.neuron for s in self.sites)
        neurons = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "none"
        line = (
            f"{len(self.sites)} neuron site(s) ({neurons}); {self.spiking_activations} of "
            f"{self.activations} elementwise activation node(s) spike ({100 * self.spiking_share:.0f}%); "
            f"{len(self.units)} compensated unit(s) and {len(self.side)} side-computation node(s) stay dense"
        )
        if self.units and len(self.units) >= len(self.sites):
            line += " — mostly dense: as many compensated units as neurons"
        return line


@quiet_dependencies()
def inspect_model(
    model: ModelSource,
    *,
    maxpool: str = DEFAULT_MAXPOOL,
    encoding: str = "direct",
    fixed: Mapping[str, object] | None = None,
) -> Inspection:
    """Analyse a model without converting it (no calibration needed), for these options and
    fixed inputs (compiled in as :func:`~icsnn_onnx.convert` would)."""
    source = load_model(model)
    values = fixed_values(fixed, input_specs(source))
    program = import_model(
        with_constants(source, values), ConversionOptions(maxpool=maxpool, encoding=encoding)
    )
    PassManager(front_end())(program)
    refused = plan_units(program) if program.sites else nonlinear_nodes(program)
    in_sites = {n: s for s in program.sites.values() for n in s.nodes}
    in_units = program.unit_nodes
    gates = program.gates
    plan, _ = analyze_program(program)
    refused_names = {b.name for b in refused}
    counts: Counter[tuple[str, str]] = Counter()
    for node in program.graph.nodes:
        if node.name in in_sites:
            behaviour = NEURON.format(kind=in_sites[node.name].neuron)
        elif node.name in gates:
            behaviour = GATE
        elif node.name in refused_names:
            behaviour = BLOCKS
        elif node.name in in_units:
            behaviour = UNIT
        elif node.name in program.side:
            behaviour = SIDE
        elif node.name in plan.head:
            behaviour = HEAD
        elif node.name in plan.body:
            behaviour = BODY
        elif node.name in plan.structural:
            behaviour = STRUCTURAL
        else:
            behaviour = ONCE
        counts[(node.op, behaviour)] += 1
    activations, spiking = activation_nodes(program)
    notes = tuple(
        f"{node.name} ({node.op}): {branch_hint(program.graph, node)}"
        for node in program.graph.nodes
        if node.op == "If" and node.name not in plan.body and node.name not in plan.head
    )
    return Inspection(
        inputs=tuple(input_specs(source)),
        outputs=tuple(o.name for o in source.graph.output),
        source_opset=default_opset(source),
        producer=f"{source.producer_name} {source.producer_version}".strip(),
        sites=tuple(program.sites.values()),
        op_behaviour=tuple((op, b, n) for (op, b), n in sorted(counts.items())),
        blockers=tuple(refused),
        maxpools=tuple(program.maxpools.items()),
        units=tuple(program.units.values()),
        side=tuple(program.side.items()),
        activations=activations,
        spiking_activations=spiking,
        notes=notes,
    )
