"""Recognize activation sites by what they compute, not by operator name.

A candidate is a maximal chain of elementwise nodes, each with exactly one non-constant input
(the previous link) and only scalar constants besides, whose intermediate tensors are read
nowhere else. The chain's scalar transfer function ``f`` is evaluated numerically on a grid
(:mod:`icsnn_onnx.elementwise`) and fitted to one of

- ReLU:            f(x) = max(x, 0)
- clipped ReLU:    f(x) = min(max(x, 0), λ)                     (ReLU6, Hardtanh(0, λ), Clip)
- quantized clip:  f(x) = (λ/L)·clip(floor(x·L/λ + φ), 0, L)    (QCFS-style clip-floor)

If the whole chain does not fit, it is segmented: the longest span that fits becomes a site and
the parts before and after it are segmented in turn (``relu(2x)`` is a ``Mul`` then a ReLU;
``sigmoid(relu(x))`` is a ReLU site then a Sigmoid). Nonlinear links left outside every site
are recorded with the reason, which the support analysis reports if they sit between spiking
layers.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from icsnn_onnx.elementwise import AFFINE_ELEMENTWISE, NUMPY_OPS, evaluate
from icsnn_onnx.passes import Pass, PassResult
from icsnn_onnx.passes.graph_utils import is_empty, is_graph_output
from icsnn_onnx.program import ActivationKind, ActivationSite, Program, TransferFunction

_ELEMENTWISE = frozenset(NUMPY_OPS) - {"GreaterOrEqual", "CastLike"}
_FLOAT_TYPES = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
)
_MAX_LEVELS = 4096


def chain_input(node: gs.Node) -> gs.Variable | None:
    """The single non-constant input of a scalar elementwise node, else ``None``."""
    if node.op not in _ELEMENTWISE or (node.domain or "") not in ("", "ai.onnx") or len(node.outputs) != 1:
        return None
    if node.op == "Cast" and node.attrs.get("to") not in _FLOAT_TYPES:
        return None
    variables = [t for t in node.inputs if isinstance(t, gs.Variable) and not is_empty(t)]
    constants = [t for t in node.inputs if isinstance(t, gs.Constant)]
    if len(variables) != 1 or any(np.asarray(c.values).size != 1 for c in constants):
        return None
    return variables[0]


def transfer_of(chain: list[gs.Node]) -> Callable[[np.ndarray], np.ndarray]:
    """The scalar function the chain computes, as a numpy function of a 1-D grid."""

    def f(x: np.ndarray) -> np.ndarray:
        value = x
        for node in chain:
            args: list[np.ndarray | None] = []
            for t in node.inputs:
                if is_empty(t):
                    args.append(None)
                elif isinstance(t, gs.Constant):
                    args.append(np.asarray(t.values, dtype=np.float64).reshape(()))
                else:
                    args.append(value)
            value = evaluate(node.op, args, node.attrs).astype(np.float64)
        return np.broadcast_to(value, x.shape)

    return f


def fit_transfer(f: Callable[[np.ndarray], np.ndarray]) -> TransferFunction | str:
    """Fit ``f`` to a (clipped, possibly quantized) ReLU; return the reason when it is none."""
    neg = -np.logspace(-6, 6, 241)
    pos = np.logspace(-6, 6, 2401)
    with np.errstate(all="ignore"):
        f_neg, f_pos, f_zero = f(neg), f(pos), float(f(np.zeros(1))[0])
    if not (np.all(np.isfinite(f_neg)) and np.all(np.isfinite(f_pos)) and np.isfinite(f_zero)):
        return "produces non-finite values"
    bad = np.abs(f_neg) > 1e-6 * np.maximum(1.0, np.abs(neg))
    if bad.any():
        x = neg[bad.argmax()]
        return f"f({x:g}) = {f(np.array([x]))[0]:g}, but a ReLU is 0 for negative inputs"
    if abs(f_zero) > 1e-9:
        return f"f(0) = {f_zero:g}, but a ReLU is 0 at 0"
    if np.any(np.diff(f_pos) < -1e-9 * np.maximum(1.0, np.abs(f_pos[1:]))):
        return "not monotonically non-decreasing"
    top = float(f_pos[-1])
    still_growing = top > float(f_pos[-101]) * (1 + 1e-6)  # f(1e6) vs f(1e6 / 10)
    if still_growing:
        wrong = np.abs(f_pos - pos) > 1e-5 * np.maximum(1.0, pos)
        if wrong.any():
            slope = float(f(np.ones(1))[0])
            return f"unbounded but not the identity for positive inputs (f(1) = {slope:g})"
        return TransferFunction(ActivationKind.RELU)
    if top <= 0:
        return "constant zero"
    lam = top
    grid = np.linspace(0.0, 1.5 * lam, 30001)
    f_grid = f(grid)
    if np.allclose(f_grid, np.minimum(grid, lam), rtol=0, atol=1e-6 * lam):
        return TransferFunction(ActivationKind.CLIPPED, upper_bound=lam)
    return _fit_quantized(f, grid, f_grid, lam)


def _fit_quantized(
    f: Callable[[np.ndarray], np.ndarray], grid: np.ndarray, f_grid: np.ndarray, lam: float
) -> TransferFunction | str:
    values = np.unique(np.round(f_grid / lam, 6))
    L = len(values) - 1
    if L < 1 or L > _MAX_LEVELS or not np.allclose(values, np.arange(L + 1) / L, atol=1e-5):
        return f"bounded by {lam:g} but neither linear below the bound nor uniformly quantized"
    # The first step's edge x1 = (1 - φ)·λ/L, located by bisection.
    first = int(np.argmax(f_grid > lam / (2 * L)))
    lo, hi = float(grid[max(first - 1, 0)]), float(grid[first])
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if f(np.array([mid]))[0] > lam / (2 * L):
            hi = mid
        else:
            lo = mid
    offset = round(1.0 - hi * L / lam, 6)
    if not 0.0 <= offset < 1.0:
        return f"quantized with {L} levels but steps start at {hi:g}, outside [0, λ/L]"
    fitted = TransferFunction(ActivationKind.QUANTIZED, upper_bound=lam, levels=L, offset=offset)
    edges = (np.arange(1, L + 1) - offset) * lam / L
    away = np.min(np.abs(grid[:, None] - edges[None, :]), axis=1) > 1e-4 * lam / L
    if not np.allclose(f_grid[away], fitted(grid[away]), rtol=0, atol=1e-6 * lam):
        return f"quantized with {L} levels of {lam / L:g} but the steps are not uniformly spaced"
    return fitted


def find_chains(graph: gs.Graph) -> list[list[gs.Node]]:
    """Maximal chains of scalar elementwise nodes linked through otherwise-unused tensors."""

    def linked_next(node: gs.Node) -> gs.Node | None:
        out = node.outputs[0]
        if is_graph_output(graph, out) or len(out.outputs) != 1:
            return None
        nxt = out.outputs[0]
        return nxt if chain_input(nxt) is out else None

    members = [n for n in graph.nodes if chain_input(n) is not None]
    has_prev = {id(nxt) for n in members if (nxt := linked_next(n)) is not None}
    chains = []
    for start in members:
        if id(start) in has_prev:
            continue
        chain, node = [start], linked_next(start)
        while node is not None:
            chain.append(node)
            node = linked_next(node)
        chains.append(chain)
    return chains


def segment_chain(chain: list[gs.Node]) -> tuple[list[tuple[int, int, TransferFunction]], dict[int, str]]:
    """Split a chain into activation sites: the longest span that fits, then the parts around it.

    Returns the sites as ``(start, end, transfer)`` and, for nonlinear links left outside every
    site, why they are not an activation (index → reason).
    """
    nonlinear = [i for i, n in enumerate(chain) if n.op not in AFFINE_ELEMENTWISE]
    if not nonlinear:
        return [], {}
    spans = [
        (s, e)
        for s in range(len(chain))
        for e in range(s + 1, len(chain) + 1)
        if any(s <= i < e for i in nonlinear)
    ]
    spans.sort(key=lambda span: (span[0] - span[1], span[0]))
    reason = ""
    for s, e in spans:
        fitted = fit_transfer(transfer_of(chain[s:e]))
        if isinstance(fitted, str):
            reason = reason or fitted
            continue
        left_sites, left_rejected = segment_chain(chain[:s])
        right_sites, right_rejected = segment_chain(chain[e:])
        sites = [*left_sites, (s, e, fitted), *[(a + e, b + e, t) for a, b, t in right_sites]]
        return sites, {**left_rejected, **{i + e: r for i, r in right_rejected.items()}}
    return [], {i: reason for i in nonlinear}


class RecognizeActivations(Pass):
    """Record every activation site in ``program.sites`` (the graph is left unchanged)."""

    def call(self, program: Program) -> PassResult:
        program.sites.clear()
        program.rejected.clear()
        for chain in find_chains(program.graph):
            sites, rejected = segment_chain(chain)
            for s, e, transfer in sites:
                nodes = chain[s:e]
                anchor = next(n for n in nodes if n.op not in AFFINE_ELEMENTWISE)
                program.sites[anchor.name] = ActivationSite(
                    name=anchor.name,
                    input=chain_input(nodes[0]).name,
                    output=nodes[-1].outputs[0].name,
                    nodes=tuple(n.name for n in nodes),
                    transfer=transfer,
                )
            for i, reason in rejected.items():
                program.rejected[chain[i].name] = f"transfer function is not a ReLU: {reason}"
        return PassResult(program, False)
