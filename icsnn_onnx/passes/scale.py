"""How large the SNN will be, known before it is built: refuse what ONNX Runtime cannot load or
run here, and say what to do instead.

An unrolled layout repeats every per-step op T times, and ONNX Runtime inlines each neuron's
function into its ops: a step-major ResNet-50 at T = 256 is ~140,000 operators once inlined and
takes ONNX Runtime 2.6 minutes to load (10 s at T = 64); ``-T 100000`` on a small CNN would run
until the machine runs out of memory. ``--layout loop`` keeps one step whatever T. Memory at run
time is estimated per sample from the time-varying tensors' sizes: an unrolled layout may hold
every step of them at once (ONNX Runtime's execution order decides), the loop one step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from icsnn_onnx.errors import ConversionError
from icsnn_onnx.limits import available_memory, human
from icsnn_onnx.neurons import IF
from icsnn_onnx.passes import Pass, PassResult
from icsnn_onnx.passes.graph_utils import static_dims
from icsnn_onnx.passes.program import Program
from icsnn_onnx.passes.temporal import TemporalPlan, analyze_program, site_node_names

#: Operators (neuron functions inlined) an unrolled SNN may have: ONNX Runtime's load time grows
#: faster than linearly with them (measured: 35,000 in 10 s, 140,000 in 157 s).
MAX_UNROLLED_OPS = 150_000
#: ``--layout auto`` takes the loop layout above this many operators: the unrolled graph's load
#: time then passes a minute (benchmarks/layout_scale.py: VGG-11 at T=1024, ~53,000 operators,
#: loads in 56 s and ResNet-18 at T=1024, ~116,000, in 152 s, the loop in under 0.2 s), while the
#: loop runs each step 1.3–2.2× slower; below it, loading is seconds and the unrolled graph wins.
AUTO_LOOP_OPS = 50_000


@dataclass(frozen=True)
class Estimate:
    ops_per_step: int  # operators one step adds to an unrolled graph, neurons inlined
    bytes_per_step: int  # bytes of time-varying tensors one sample needs per step (0: unknown)

    def unrolled_ops(self, T: int) -> int:
        return self.ops_per_step * T


def estimate(program: Program) -> Estimate:
    plan, _ = analyze_program(program)
    return Estimate(_ops_per_step(program, plan, site_node_names(program)), _bytes_per_step(program, plan))


def _ops_per_step(program: Program, plan: TemporalPlan, in_sites: frozenset[str]) -> int:
    others = sum(1 for name in plan.body if name not in in_sites)
    return ops_per_step(plan, len(program.sites), others, program.options.per_step)


def ops_per_step(plan: TemporalPlan, neurons: int, others: int, per_step: bool) -> int:
    """Operators one unrolled step adds: each neuron's inlined equations, the other per-step ops,
    a read-out sum per cut and, with per-step outputs, the head."""
    return neurons * IF.ops_per_step + others + len(plan.cuts) + (len(plan.head) if per_step else 0)


def _bytes_per_step(program: Program, plan: TemporalPlan) -> int:
    tensors = program.graph.tensors()
    total = 0
    for name in plan.streams:
        tensor = tensors.get(name)
        if tensor is None or tensor.shape is None or tensor.dtype is None:
            continue
        dims = list(tensor.shape[1:])
        if not static_dims(dims):
            continue
        total += math.prod(dims) * np.dtype(tensor.dtype).itemsize
    return total


class CheckScale(Pass):
    """Refuse, before calibration or any output, an SNN too large to load or run here."""

    def call(self, program: Program) -> PassResult:
        options = program.options
        found = estimate(program)
        T = options.T
        ops = found.unrolled_ops(T)
        # --layout auto takes the loop layout beyond the budget (passes/unroll).
        unrolled = options.layout not in ("loop", "auto") or options.init == "calibrated"
        if unrolled and ops > MAX_UNROLLED_OPS:
            if options.layout in ("loop", "auto"):
                fix = "--init calibrated (Alg 2) builds unrolled trial SNNs: use --init half"
            else:
                fix = "use --layout loop, whose size does not grow with T"
            raise ConversionError(
                f"T={T} would unroll to ~{ops:,} operators ({found.ops_per_step:,} per step), more than "
                f"the {MAX_UNROLLED_OPS:,} ONNX Runtime loads in minutes; {fix}, or a smaller -T"
            )
        steps_held = T if unrolled or (options.layout == "auto" and ops <= AUTO_LOOP_OPS) else 2
        needed = found.bytes_per_step * steps_held
        if needed > available_memory():
            hint = "use --layout loop" if unrolled else "the network's activations alone do not fit"
            raise ConversionError(
                f"one sample at T={T} may hold {human(needed)} of activations ({human(found.bytes_per_step)} "
                f"per step), more than the {human(available_memory())} available; {hint}"
            )
        return PassResult(program, False)
