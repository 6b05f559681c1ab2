"""Recognize activation sites by what they compute, not by operator name.

A candidate is a single-input elementwise region (:mod:`.regions`): a chain or a DAG of scalar
elementwise nodes computing ``y = f(x)``. Its scalar transfer function ``f`` is evaluated
numerically on a grid and fitted to one of

- ReLU:            f(x) = max(x, 0)
- clipped ReLU:    f(x) = min(max(x, 0), λ)                     (ReLU6, Hardtanh(0, λ), Clip)
- quantized clip:  f(x) = (λ/L)·clip(floor(x·L/λ + φ), 0, L)    (QCFS-style clip-floor)

which the IF neuron converts. If the whole region does not fit, it is segmented along its series
of blocks: the longest span that fits becomes a site and the parts before and after it are
segmented in turn (``relu(2x)`` is a ``Mul`` then a ReLU). A region with a nonlinear block no IF
site covers (SiLU, HardSwish, GELU, Sigmoid, ``sigmoid(relu(x))``, …) is one *generic* site
instead: the span of blocks from its first nonlinear block to its last, its function ``f`` the
graph's own nodes, made a sigma-delta neuron (:mod:`icsnn_onnx.neurons.sigma_delta`) — unless
``f`` is not finite on [-50, 50] (a ``Log``, a ``Reciprocal``), which stays with the support
analysis (compensated, dense). A site whose output reaches no synaptic layer and no graph output
as data — a clamp on a normaliser's divisor, a mask — is no neuron: it is a side computation and
stays dense.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from icsnn_onnx.ops.elementwise import evaluate
from icsnn_onnx.passes import Pass, PassResult, ensure
from icsnn_onnx.passes.data_path import data_tensors
from icsnn_onnx.passes.program import ActivationKind, ActivationSite, Program, TransferFunction
from icsnn_onnx.passes.regions import Block, Region, find_regions, function_of, is_affine, transfer_of

_MAX_LEVELS = 4096
#: Where a generic activation must be finite to be a neuron (a mean input stays in the ANN's range).
_FINITE = np.linspace(-50.0, 50.0, 2001)
#: Activations named by what they compute (on [-8, 8]), for people reading ``inspect``.
_KNOWN: tuple[tuple[str, Callable[[np.ndarray], np.ndarray]], ...] = (
    ("silu", lambda x: x / (1 + np.exp(-x))),
    ("sigmoid", lambda x: 1 / (1 + np.exp(-x))),
    ("tanh", np.tanh),
    ("gelu", lambda x: 0.5 * x * (1 + evaluate("Erf", [x / np.sqrt(2)], {}))),
    ("gelu (tanh)", lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))),
    ("hardswish", lambda x: x * np.clip(x / 6 + 0.5, 0, 1)),
    ("hardsigmoid", lambda x: np.clip(x / 6 + 0.5, 0, 1)),
    ("hardsigmoid (0.2x + 0.5)", lambda x: np.clip(0.2 * x + 0.5, 0, 1)),
    ("mish", lambda x: x * np.tanh(np.logaddexp(0, x))),
    ("softplus", lambda x: np.logaddexp(0, x)),
    ("elu", lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0)))),
    ("leaky relu (0.01)", lambda x: np.where(x > 0, x, 0.01 * x)),
    ("leaky relu (0.1)", lambda x: np.where(x > 0, x, 0.1 * x)),
    ("leaky relu (0.2)", lambda x: np.where(x > 0, x, 0.2 * x)),
    ("hardtanh", lambda x: np.clip(x, -1, 1)),
    ("identity", lambda x: x),
)


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


def segment(blocks: tuple[Block, ...]) -> tuple[list[tuple[int, int, TransferFunction]], dict[int, str]]:
    """Split a region's blocks into activation sites: the longest span that fits, then the parts
    around it.

    Returns the sites as ``(start, end, transfer)`` block spans and, for nonlinear blocks left
    outside every site, why they are not an activation (block index → reason).
    """
    nonlinear = [i for i, b in enumerate(blocks) if not b.affine]
    if not nonlinear:
        return [], {}
    spans = [
        (s, e)
        for s in range(len(blocks))
        for e in range(s + 1, len(blocks) + 1)
        if any(s <= i < e for i in nonlinear)
    ]
    spans.sort(key=lambda span: (span[0] - span[1], span[0]))
    reason = ""
    for s, e in spans:
        fitted = fit_transfer(transfer_of(blocks[s:e]))
        if isinstance(fitted, str):
            reason = reason or fitted
            continue
        left_sites, left_rejected = segment(blocks[:s])
        right_sites, right_rejected = segment(blocks[e:])
        sites = [*left_sites, (s, e, fitted), *[(a + e, b + e, t) for a, b, t in right_sites]]
        return sites, {**left_rejected, **{i + e: r for i, r in right_rejected.items()}}
    return [], {i: reason for i in nonlinear}


def generic_site(blocks: tuple[Block, ...], why_not_relu: str) -> TransferFunction | str:
    """The generic transfer function of ``blocks``, or why it cannot be a neuron."""
    function = function_of(blocks)
    with np.errstate(all="ignore"):
        values = np.asarray(function(_FINITE), np.float64)
    if not np.all(np.isfinite(values)):
        x = float(_FINITE[np.argmin(np.isfinite(values))])
        return f"not finite on [-50, 50] (f({x:g}) = {function(np.array([x]))[0]:g}): {why_not_relu}"
    named = type(function)(function.equations, function.constants, _describe(function))
    return TransferFunction(ActivationKind.GENERIC, function=named, nonnegative=bool(values.min() >= 0))


def _describe(function: Callable[[np.ndarray], np.ndarray]) -> str:
    """A known activation's name, else the ops that spell it."""
    grid = np.linspace(-8.0, 8.0, 321)
    with np.errstate(all="ignore"):
        got = np.asarray(function(grid), np.float64)
        for name, reference in _KNOWN:
            if np.allclose(got, reference(grid), rtol=1e-4, atol=1e-5):
                return name
    ops = [eq.op_type for eq in function.equations]  # type: ignore[attr-defined]
    return "f = " + "·".join(dict.fromkeys(ops))


class RecognizeActivations(Pass):
    """Record every activation site in ``program.sites`` (the graph is left unchanged)."""

    def ensures(self, program: Program) -> None:
        names = {n.name for n in program.graph.nodes}
        tensors = program.graph.tensors()
        for site in program.sites.values():
            ensure(set(site.nodes) <= names, self.name, f"site {site.name} names nodes not in the graph")
            ensure(
                site.input in tensors and site.output in tensors,
                self.name,
                f"site {site.name}: no such tensor",
            )

    def call(self, program: Program) -> PassResult:
        program.sites.clear()
        program.rejected.clear()
        for region in find_regions(program.graph):
            before = set(program.sites)
            self._record(program, region, chains=False)
            members = {n.name for block in region.blocks for n in block.nodes}
            mask = region.output.dtype is not None and np.dtype(region.output.dtype).kind != "f"
            if not mask and any(
                name in program.rejected for name in members
            ):  # a nonlinearity no IF site covers
                for name in set(program.sites) - before:
                    del program.sites[name]
                self._record_generic(program, region)
        self._drop_side_computations(program)
        return PassResult(program, False)

    @staticmethod
    def _record_generic(program: Program, region: Region) -> None:
        """One generic site for the whole region: its affine ops too, which then cost nothing of
        their own at each step (they are part of f). (A region ending in a mask or an integer, a
        comparison, is no activation: :meth:`call` leaves it to the support analysis.)"""
        blocks = region.blocks
        nodes = [n for block in blocks for n in block.nodes]
        reason = next(program.rejected[n.name] for n in nodes if n.name in program.rejected)
        fitted = generic_site(blocks, reason)
        if isinstance(fitted, str):
            for node in nodes:
                if not is_affine(node):
                    program.rejected[node.name] = fitted
            return
        for block in region.blocks:
            for node in block.nodes:
                program.rejected.pop(node.name, None)
        anchor = next(n for n in nodes if not is_affine(n))
        program.sites[anchor.name] = ActivationSite(
            name=anchor.name,
            input=blocks[0].input.name,
            output=blocks[-1].output.name,
            nodes=tuple(n.name for n in nodes),
            transfer=fitted,
            note=reason.removeprefix("transfer function is not a ReLU: "),
        )

    @staticmethod
    def _drop_side_computations(program: Program) -> None:
        """Sites whose output is no data of a synaptic layer are no neurons: after the last layer
        they are part of the read-out's head (exact, once); elsewhere, side computations, noted."""
        data, to_outputs = data_tensors(program.graph), data_tensors(program.graph, to_outputs=True)
        for name, site in list(program.sites.items()):
            if site.output not in data:
                del program.sites[name]
                if site.output in to_outputs:
                    continue
                for node in site.nodes:
                    program.side[node] = (
                        f"{site.transfer.describe()} of {site.input}: a side computation (its output is no "
                        "layer's data, e.g. a divisor or a mask), computed densely"
                    )

    def _record(self, program: Program, region: Region, chains: bool) -> None:
        sites, rejected = segment(region.blocks)
        for s, e, transfer in sites:
            nodes = [n for block in region.blocks[s:e] for n in block.nodes]
            anchor = next(n for n in nodes if not is_affine(n))
            program.sites[anchor.name] = ActivationSite(
                name=anchor.name,
                input=region.blocks[s].input.name,
                output=region.blocks[e - 1].output.name,
                nodes=tuple(n.name for n in nodes),
                transfer=transfer,
            )
        for i, reason in rejected.items():
            block = region.blocks[i]
            for node in block.nodes:
                if not is_affine(node):
                    program.rejected[node.name] = f"transfer function is not a ReLU: {reason}"
            if not chains and len(block.nodes) > 1:
                # A DAG block that is no activation as a whole may hold chains that are, joined
                # by ops of two streams (relu(x) + relu(2·relu(x)) is two sites and an Add).
                for inner in find_regions(program.graph, block.nodes, chains=True):
                    self._record(program, inner, chains=True)
                for site in program.sites.values():
                    for name in site.nodes:
                        program.rejected.pop(name, None)
