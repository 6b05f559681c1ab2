"""A neuron kind: one step of its dynamics as an equation table, and everything read off it.

From the one table a kind gives the numpy reference step (:meth:`NeuronKind.step`), the reference
simulator over T steps (:meth:`NeuronKind.steps`), the ONNX function every converted model carries
(:meth:`NeuronKind.function_proto`), the report's cost of one neuron step
(:attr:`NeuronKind.ops_per_step`) and the NIR primitive it maps to, where one exists
(:attr:`NeuronKind.nir`).

The step's signature is the contract between the compiler, the runtime and the exporters: inputs
``(*states, current, *parameters)`` in the order of :attr:`NeuronKind.inputs`, outputs
``(out, *next states)``, where the first state is the membrane potential ``v`` (what the read-out
compensates with and the diagnostics read) and ``out`` what the neuron emits. A file's step nodes
are found by their op type (:func:`icsnn_onnx.neurons.kind_of`) and read by these names alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from icsnn_onnx.contract import NEURON_DOMAIN
from icsnn_onnx.neurons.equations import Equation, Evaluator, evaluate, function_proto

#: Every step's output that the neuron emits (θ·s(t) for the IF neuron).
OUT = "out"


def next_state(state: str) -> str:
    """The output holding a state's value after the step (``v`` → ``v_next``)."""
    return f"{state}_next"


@dataclass(frozen=True)
class NeuronKind:
    """One neuron model (see the module docstring).

    ``states`` are carried from step to step (the first is the membrane ``v``), ``current`` is the
    input the network drives it with, ``parameters`` are per-neuron constants (θ, …).
    ``readout_transfer``: the compensated read-out passes the integrated membrane's mean through
    the site's activation function (the IF neuron's mean output is a rectified mean current).
    ``nir``: the NIR primitive it is exported as (``None``: export refuses it, by name, saying
    ``nir_refusal``).
    ``attributes``: the function's own attributes (bound into its body by
    :class:`~icsnn_onnx.neurons.equations.AttributeRef`); ``evaluators``: numpy forms of ops the
    table uses that the elementwise semantics lack; ``constants``: values the table reads, written
    as ``Constant`` nodes in the function. ``step_count``: an input that is the step's number ``t``
    (a float scalar the emitters supply, for kinds that track running means). ``spike``: the
    table's value that is the step's spike count (signed for signed kinds: ``out = θ·spike``), and
    ``breakpoint``: the one-run analysis of Alg 2 (:func:`count_breakpoint`), written against a run
    from all states zero.
    """

    name: str
    op_type: str
    states: tuple[str, ...]
    current: str
    parameters: tuple[str, ...]
    equations: tuple[Equation, ...]
    doc: str
    readout_transfer: bool = True
    nir: str | None = None
    nir_refusal: str = "NIR has no such neuron"
    attributes: tuple[str, ...] = ()
    evaluators: Mapping[str, Evaluator] = field(default_factory=dict)
    constants: tuple[tuple[str, np.ndarray], ...] = ()
    step_count: str | None = None
    spike: str = "fired"
    breakpoint: tuple[Equation, ...] = ()
    signed: bool = False
    #: A kind made of a front that turns the current into a drive (independent of the membrane)
    #: and a simpler kind driven by it: ``front(z[T, …])`` gives all T drives at once, and
    #: ``quantizer`` is that kind (Alg 2 scores and fires it on the drives, computed once).
    front: Callable[[np.ndarray], np.ndarray] | None = field(default=None, compare=False)
    quantizer: NeuronKind | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.states:
            raise ValueError(f"neuron kind {self.name!r} has no state (its first state is the membrane)")
        defined = {*self.inputs, *(name for name, _ in self.constants)}
        for eq in self.equations:
            missing = [a for a in eq.args if a not in defined]
            if missing:
                raise ValueError(f"neuron kind {self.name!r}: {eq.result} reads undefined {missing}")
            defined.add(eq.result)
        absent = [o for o in self.outputs if o not in defined]
        if absent:
            raise ValueError(f"neuron kind {self.name!r}: outputs {absent} are never computed")

    @property
    def inputs(self) -> tuple[str, ...]:
        clock = (self.step_count,) if self.step_count else ()
        return (*self.states, self.current, *self.parameters, *clock)

    @property
    def outputs(self) -> tuple[str, ...]:
        return (OUT, *(next_state(s) for s in self.states))

    @property
    def membrane(self) -> str:
        return self.states[0]

    @property
    def ops_per_step(self) -> int:
        """Elementwise operations of one neuron step: the report's cost of a neuron update."""
        return len(self.equations)

    def step(self, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every value of one step (each equation's result, by name) from the inputs by name."""
        env = {k: np.asarray(v) for k, v in values.items()}
        dtype = np.asarray(values[self.current]).dtype
        env.update({name: _typed(value, dtype) for name, value in self.constants})
        return evaluate(self.equations, env, self.evaluators)

    def steps(
        self, z: np.ndarray, parameters: Mapping[str, np.ndarray], initial: Mapping[str, np.ndarray]
    ) -> Iterator[dict[str, np.ndarray]]:
        """Every value of each step over ``T = len(z)`` steps of current ``z[t]``, one step at a
        time, from the states' ``initial`` values (each broadcast to a step's shape)."""
        states = {
            s: np.broadcast_to(np.asarray(initial[s]), np.broadcast_shapes(np.shape(initial[s]), z.shape[1:]))
            for s in self.states
        }
        for t, z_t in enumerate(z, start=1):
            clock = {self.step_count: np.asarray(t, z.dtype)} if self.step_count else {}
            env = self.step({**states, self.current: z_t, **parameters, **clock})
            yield env
            states = {s: env[next_state(s)] for s in self.states}

    def function_proto(self, opset: int) -> onnx.FunctionProto:
        """The ONNX function ``icsnn::<op_type>``: one step, from :attr:`equations`."""
        return function_proto(
            NEURON_DOMAIN,
            self.op_type,
            self.inputs,
            self.outputs,
            self.equations,
            opset,
            self.doc,
            self.attributes,
            self.constants,
        )


def _typed(value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A float constant in the current's float type (the function is written for that type)."""
    value = np.asarray(value)
    return value.astype(dtype) if value.dtype.kind == "f" and np.dtype(dtype).kind == "f" else value


def count_breakpoint(
    kind: NeuronKind, z: np.ndarray, parameters: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Spike counts over ``T = len(z)`` steps as a function of the membrane's start ``v(0)`` in
    ``[0, θ)``, from one run of ``kind`` from all states zero: ``(n, v*)`` such that started at
    ``v(0)`` each neuron's count is ``n + [v(0) >= v*]`` (docs/method.md §2b; the kind's
    :attr:`~NeuronKind.breakpoint` table accumulates ``v*``). ``v* = inf``: never one more."""
    z = np.asarray(z)
    zero = {s: np.zeros((), z.dtype) for s in kind.states}
    v_star: np.ndarray = np.asarray(np.inf, z.dtype)
    count: np.ndarray = np.zeros((), np.int32)
    for env in kind.steps(z, parameters, zero):
        env = evaluate(kind.breakpoint, {**env, "v_star": v_star})
        v_star, count = env["v_star_next"], count + env[kind.spike].astype(np.int32)
    shape = np.broadcast_shapes(z.shape[1:], *(np.shape(p) for p in parameters.values()))
    return np.broadcast_to(count, shape), np.broadcast_to(v_star, shape)


def driven(kind: NeuronKind, z: np.ndarray) -> tuple[NeuronKind, np.ndarray]:
    """``(kind, z)``, or for a kind with a front, its quantizer and all T drives (computed once:
    they do not depend on the membrane, so every start a caller tries reuses them)."""
    if kind.front is None or kind.quantizer is None:
        return kind, z
    return kind.quantizer, kind.front(np.asarray(z))
