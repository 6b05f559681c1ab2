"""Run an exported NIR graph in sinabs (an independent NIR consumer) over T steps.

sinabs 3.1 imports ``nir.IF`` as ``IAFSqueeze`` with per-neuron thresholds and reset by
subtraction, like icsnn-onnx's neuron, but with two differences of its own: ``MultiSpike`` (a
neuron may emit ⌊v/θ⌋ spikes in one step) and a floor ``min_v_mem = -θ`` on the membrane.
``faithful=True`` switches both to icsnn-onnx's semantics (one spike per step at most, no floor);
``faithful=False`` runs the graph exactly as sinabs imports it. Needs ``sinabs`` and ``torch``
(test extra); imported only when called.

``sinabs.from_nir`` builds the model with nirtorch 2.0's deprecated ``load``, whose depth-first
execution order can run a fan-in node before all of its inputs (it then reads the missing
branch's value of the previous call): wrong for residual graphs, harmless for chains. With
``topological=True`` (default) the order is replaced by a topological one before running.
"""

from __future__ import annotations

import numpy as np


def run_sinabs(
    graph: object,
    x: np.ndarray,
    T: int,
    *,
    faithful: bool = True,
    topological: bool = True,
    batch_size: int = 256,
) -> np.ndarray:
    """The mean over T steps of the graph's (single) output for direct-coded input ``x``
    (``[N, …]``, the same at every step)."""
    import sinabs
    import sinabs.layers as sl
    import torch
    from sinabs.activation import SingleSpike

    outputs = []
    for start in range(0, len(x), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size], dtype=np.float32))
        n = len(chunk)
        model = sinabs.from_nir(graph, batch_size=n)
        if topological:
            model.execution_order = _topological(model.execution_order, graph.edges)
        for layer in model.modules():
            if isinstance(layer, sl.IAFSqueeze) and faithful:
                layer.spike_fn = SingleSpike
                layer.min_v_mem = None
        # sinabs' Squeeze layers take [batch·T, …], batch-major.
        stacked = chunk.unsqueeze(1).expand(n, T, *chunk.shape[1:]).reshape(n * T, *chunk.shape[1:])
        with torch.no_grad():
            out = model(stacked)
        out = out[0] if isinstance(out, tuple) else out
        outputs.append(out.reshape(n, T, *out.shape[1:]).mean(1).numpy())
    return np.concatenate(outputs)


def _topological(order: list, edges: list[tuple[str, str]]) -> list:
    """``order`` (nirtorch's nodes, named as the graph's) sorted so every node follows its inputs;
    ties keep nirtorch's order."""
    inputs: dict[str, set[str]] = {}
    for src, dst in edges:
        if src != dst:
            inputs.setdefault(dst, set()).add(src)
    remaining = list(order)
    done: set[str] = set()
    result = []
    while remaining:
        ready = next(n for n in remaining if inputs.get(n.name, set()) <= done)
        remaining.remove(ready)
        done.add(ready.name)
        result.append(ready)
    return result
