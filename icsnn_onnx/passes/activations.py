"""Recognize activation sites by what they compute, not by operator name.

A candidate is a single-input elementwise region (:mod:`.regions`): a chain or a DAG of scalar
elementwise nodes computing ``y = f(x)``. Its scalar transfer function ``f`` is evaluated
numerically on a grid and fitted to one of

- ReLU:            f(x) = max(x, 0)
- clipped ReLU:    f(x) = min(max(x, 0), λ)                     (ReLU6, Hardtanh(0, λ), Clip)
- quantized clip:  f(x) = (λ/L)·clip(floor(x·L/λ + φ), 0, L)    (QCFS-style clip-floor)

If the whole region does not fit, it is segmented along its series of blocks: the longest span
that fits becomes a site and the parts before and after it are segmented in turn (``relu(2x)``
is a ``Mul`` then a ReLU; ``sigmoid(relu(x))`` is a ReLU site then a Sigmoid). Nonlinear nodes
left outside every site are recorded with the reason, which the support analysis reports if
they sit between spiking layers.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from icsnn_onnx.passes import Pass, PassResult, ensure
from icsnn_onnx.passes.program import ActivationKind, ActivationSite, Program, TransferFunction
from icsnn_onnx.passes.regions import Block, Region, find_regions, is_affine, transfer_of

_MAX_LEVELS = 4096


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
            self._record(program, region, chains=False)
        return PassResult(program, False)

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
