"""Names that define the converted model's contract, shared by the compiler and the runtime.

Every metadata key, every generated-name rule the runtime relies on, and the typed view of a
converted model's metadata (:class:`SnnMetadata`) are here: the compiler writes them, the runtime
reads them, and neither spells them on its own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

#: The ONNX domain of every neuron step function a converted model carries (and its version).
NEURON_DOMAIN = "icsnn"
NEURON_DOMAIN_VERSION = 1

#: Every key icsnn-onnx writes to ``metadata_props`` starts with this.
METADATA_PREFIX = "icsnn."


def metadata_key(name: str) -> str:
    """The metadata key of ``name`` (a :class:`~icsnn_onnx.options.ConversionOptions` field or
    one of the keys below)."""
    return f"{METADATA_PREFIX}{name}"


CONVERTER_VERSION_KEY = metadata_key("converter_version")
SITES_KEY = metadata_key("sites")  # number of activation sites made IF neurons
T_KEY = metadata_key("T")  # ConversionOptions.T
TARGET_KEY = metadata_key("target")  # ConversionOptions.target
LAYOUT_KEY = metadata_key("layout")  # the layout emitted (auto resolved)
THRESHOLD_SOURCE_KEY = metadata_key("threshold_source")
THRESHOLD_METHOD_KEY = metadata_key("threshold_method")  # the method at this T (auto resolved)
INIT_METHOD_KEY = metadata_key("init_method")  # the initial potential used (auto resolved)
INIT_CANDIDATES_KEY = metadata_key("init_candidates")
INIT_FALLBACK_KEY = metadata_key("init_fallback")
BIAS_SITES_KEY = metadata_key("bias_sites")  # sites whose current bias calibration corrected
CHANNELWISE_SITES_KEY = metadata_key("channelwise_sites")
#: What spikes and what does not, as JSON: every neuron site ``{"site", "kind", "activation"}``,
#: every compensated (dense) unit ``{"unit", "ops", "nodes", "reason"}``.
NEURONS_KEY = metadata_key("neurons")
#: The ANN's elementwise activation nodes and how many of them became spiking neurons (JSON).
ACTIVATIONS_KEY = metadata_key("activations")
#: The inputs a file was compiled for one value of (``--input``), as JSON: name → its value in
#: words and a digest; the runtime refuses to run it with another.
FIXED_INPUTS_KEY = metadata_key("fixed_inputs")
COMPENSATED_KEY = metadata_key("compensated")


def encoder_key(graph_input: str) -> str:
    """The key describing the rate/Poisson encoder of ``graph_input``."""
    return metadata_key(f"encoder.{graph_input}")


#: For every output ``y``, ``--per-step`` adds ``y + PER_STEP_SUFFIX`` of shape ``[T, *shape(y)]``.
PER_STEP_SUFFIX = "_per_step"

#: Per-step outputs apply the head to each step's read-out: its nodes' copies are named
#: ``node + PER_STEP_HEAD`` at each step (``Gemm_8.after@3``). They compute outputs, not the SNN.
PER_STEP_HEAD = ".after"

#: The read-out of a cut tensor ``y`` (the value the head reads: the mean over the steps, or the
#: compensated membrane) is computed by nodes named ``readout_name(y, role)`` (``@t`` at step t).
#: They read the network; they are not part of it (a report does not count their work as synaptic).
READOUT_ROLES = (
    "sum",
    "mean",
    "inv",
    "residual",
    "integrated",
    "membrane_mean",
    "readout",
    "by_step",
    "by_step_shape",
    "axis0",
    "cumsum",
    "cumsum_axis",
    "prefix",
)


def readout_name(cut: str, role: str) -> str:
    """The name of the read-out node (or constant) of ``cut`` playing ``role``."""
    if role not in READOUT_ROLES:
        raise ValueError(f"unknown read-out role {role!r}")
    return f"{cut}.{role}"


def is_readout_name(name: str, tensors: set[str]) -> bool:
    """Whether node ``name`` (a step suffix allowed) is a read-out node of one of ``tensors``."""
    cut, _, role = base_name(name).rpartition(".")
    return role in READOUT_ROLES and cut in tensors


#: A rate or Poisson encoder's spikes of graph input ``x`` at step t: ``encoded_spikes_name(x)@t``.
def encoded_spikes_name(graph_input: str) -> str:
    return f"{graph_input}.spikes"


#: Metadata key listing the per-step outputs (comma-separated); their batch axis is 1.
PER_STEP_OUTPUTS_KEY = metadata_key("per_step_outputs")

#: Metadata key mapping each output to its per-step output, as JSON: ``y + PER_STEP_SUFFIX``
#: unless the model already had a tensor of that name (then a free name is chosen).
PER_STEP_OF_KEY = metadata_key("per_step_of")


def per_step_outputs(metadata: Mapping[str, str]) -> dict[str, str]:
    """Output → its per-step output, from a model's metadata (files of earlier releases: the
    suffix rule on the listed names)."""
    if PER_STEP_OF_KEY in metadata:
        return dict(json.loads(metadata[PER_STEP_OF_KEY]))
    listed = filter(None, metadata.get(PER_STEP_OUTPUTS_KEY, "").split(","))
    return {name.removesuffix(PER_STEP_SUFFIX): name for name in listed if name.endswith(PER_STEP_SUFFIX)}


#: Separates a tensor's or node's name from its time step in the unrolled graph.
STEP_SEPARATOR = "@"


def step_name(name: str, t: int) -> str:
    """The name of tensor or node ``name`` at time step ``t`` (1-based) of the unrolled graph."""
    return f"{name}{STEP_SEPARATOR}{t}"


def parse_step_name(name: str) -> tuple[str, int] | None:
    """``(name, t)`` for a name made by :func:`step_name`, else ``None``."""
    base, sep, step = name.rpartition(STEP_SEPARATOR)
    if not sep or not step.isdigit():
        return None
    return base, int(step)


#: The ``--layout loop`` body's step: tensors and nodes are named ``name@t`` with a literal ``t``
#: (every step's, no step number; :func:`parse_step_name` does not take it for a step).
LOOP_STEP = "t"


def loop_step_name(name: str) -> str:
    """The name of tensor or node ``name`` inside the ``--layout loop`` body (steps 2…T)."""
    return f"{name}{STEP_SEPARATOR}{LOOP_STEP}"


#: The time-batched layout's tensors and nodes hold all T steps stacked on the batch axis:
#: they are named ``name@T`` (:func:`stacked_name`).
STACKED_STEPS = "T"


def stacked_name(name: str) -> str:
    """The name of tensor or node ``name`` holding every step, stacked (time-batched layout)."""
    return f"{name}{STEP_SEPARATOR}{STACKED_STEPS}"


def base_name(name: str) -> str:
    """``name`` without its step suffix (``@3``, the loop body's ``@t``, the stacked ``@T``)."""
    base, sep, step = name.rpartition(STEP_SEPARATOR)
    return base if sep and (step.isdigit() or step in (LOOP_STEP, STACKED_STEPS)) else name


@dataclass(frozen=True)
class SnnMetadata:
    """What the runtime needs to know of an SNN file, read from its metadata."""

    T: int
    target: str
    layout: str
    converter_version: str
    per_step: dict[str, str] = field(default_factory=dict)  # output → its per-step output
    neurons: tuple[dict[str, str], ...] = ()  # every neuron site: site, kind, activation
    compensated: tuple[dict[str, object], ...] = ()  # every compensated unit: unit, ops, nodes, reason
    activations: dict[str, int] = field(default_factory=dict)  # nodes, spiking

    def spiking_summary(self) -> str:
        """What spikes and what stays dense, in a line (``mostly dense`` said where it is)."""
        kinds: dict[str, int] = {}
        for site in self.neurons:
            kinds[site["kind"]] = kinds.get(site["kind"], 0) + 1
        described = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        line = f"{len(self.neurons)} neuron site(s){f' ({described})' if described else ''}"
        if self.activations.get("nodes"):
            nodes, spiking = self.activations["nodes"], self.activations.get("spiking", 0)
            line += f"; {spiking} of {nodes} activation node(s) spike ({100 * spiking / nodes:.0f}%)"
        if self.compensated:
            line += f", {len(self.compensated)} compensated unit(s) (dense, every step)"
            if len(self.compensated) >= len(self.neurons):
                line += " — mostly dense: as many compensated units as neurons"
        return line

    @classmethod
    def read(cls, metadata: Mapping[str, str]) -> SnnMetadata | None:
        """The SNN's metadata, or ``None`` for a model icsnn-onnx did not write."""
        if CONVERTER_VERSION_KEY not in metadata or T_KEY not in metadata:
            return None
        try:
            T = int(metadata[T_KEY])
        except ValueError:
            return None
        return cls(
            T=T,
            target=metadata.get(TARGET_KEY, "portable"),
            layout=metadata.get(LAYOUT_KEY, "step-major"),
            converter_version=metadata[CONVERTER_VERSION_KEY],
            per_step=per_step_outputs(metadata),
            neurons=tuple(json.loads(metadata.get(NEURONS_KEY, "[]"))),
            compensated=tuple(json.loads(metadata.get(COMPENSATED_KEY, "[]"))),
            activations=dict(json.loads(metadata.get(ACTIVATIONS_KEY, "{}"))),
        )
