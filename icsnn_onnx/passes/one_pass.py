"""Alg 2's data flow in one pass: each site's currents from its segment, computed once.

The trial SNN (θ/2 everywhere) and the ANN are cut at every site: the segment of site ``l``
computes its currents ``z_l(1..T)`` (SNN) and its activation (ANN) from the graph inputs and the
stored outputs of earlier sites. After ``v_l(0)`` is chosen, the site's spikes are simulated by the
reference of its kind (:meth:`icsnn_onnx.neurons.NeuronKind.steps`: the same float32 operations
as the file's neuron function) and stored as bits; later segments read ``θ·s``. So every site sees what the
finished SNN would feed it, as in rebuilding the SNN per site, at the cost of one run. The
stored tensors stay in memory within a budget and go to disk beyond it
(:class:`~icsnn_onnx.segments.SpillStore`), and are dropped after their last reader, so memory is
bounded whatever the number of samples.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
from onnx import numpy_helper

from icsnn_onnx.calibration.blocks import Block, blocks, run_blocks
from icsnn_onnx.calibration.segments import SpillStore, extract, free_batch, merge, per_sample, rename_outputs
from icsnn_onnx.calibration.statistics import run_batches
from icsnn_onnx.contract import step_name
from icsnn_onnx.data import Dataset
from icsnn_onnx.neurons import NeuronKind, driven
from icsnn_onnx.ops.elementwise import FLOAT_TENSOR_TYPES
from icsnn_onnx.passes.insert_neurons import neuron_kind
from icsnn_onnx.passes.program import ActivationSite, Program
from icsnn_onnx.progress import ProgressFactory
from icsnn_onnx.runtime.instrument import NeuronLayer, neuron_layers


class OnePass:
    """Segments of the ANN and the trial SNN per site, their stored cuts, and the head."""

    def __init__(
        self,
        program: Program,
        ann: onnx.ModelProto,
        snn: onnx.ModelProto,
        data: Dataset,
        store: SpillStore,
        progress: ProgressFactory,
        bias: bool = False,
    ) -> None:
        self.T, self.batch = program.options.T, program.options.batch_size
        self.bias = bias  # keep the ANN's currents too, for bias calibration (:meth:`correct_bias`)
        self.levels = program.options.levels
        # A graph whose inputs fix the batch below ours (old model-zoo graphs: 1) runs each segment
        # that provably computes sample by sample on whole batches anyway, the others at the
        # fixed size (e.g. the head's Reshape to [1, 2048]).
        fixed = _static_batch(ann)
        self._fixed = fixed if fixed < self.batch else None
        self.data, self.store, self.n = data, store, len(data)
        self.ann, self.snn = ann, snn
        self.sites = topological_sites(program)
        by_tensor = {layer.tensor: layer for layer in neuron_layers(snn)}
        self.layers: list[NeuronLayer] = [by_tensor[site.output] for site in self.sites]
        self.thresholds = [np.asarray(program.thresholds[s.name], np.float32) for s in self.sites]
        self._bar = progress(len(self.sites), "calibrating v(0)")
        produced = {out for node in snn.graph.node for out in node.output}
        self._spike_of = {
            out: (i, t) for i, layer in enumerate(self.layers) for t, out in enumerate(layer.outputs)
        }
        self._membrane_of = {layer.membranes[-1]: i for i, layer in enumerate(self.layers)}
        ann_cuts = {site.output for site in self.sites}
        self.currents: list[list[str]] = []
        self._segments: list[tuple[onnx.ModelProto, list[str], onnx.ModelProto, list[str]]] = []
        last_read: dict[tuple[str, int], int] = {}
        self._site_of = {site.output: i for i, site in enumerate(self.sites)}
        self._batch_of: list[int] = []  # each site's segments' batch size
        for i, site in enumerate(self.sites):
            stream = step_name(site.input, 1) in produced
            self.currents.append(
                [step_name(site.input, t) for t in range(1, self.T + 1)] if stream else [site.input]
            )
            ann_seg, ann_reads = extract(ann, [site.input, site.output], ann_cuts - {site.output})
            snn_seg, snn_reads = extract(snn, self.currents[i], set(self._spike_of))
            (ann_seg, snn_seg), batch = self._batched(ann_seg, snn_seg)
            self._segments.append((ann_seg, ann_reads, snn_seg, snn_reads))
            self._batch_of.append(batch)
            for cut in ann_reads:
                last_read[("ann", self._site_of[cut])] = i
            for cut in snn_reads:
                last_read[("snn", self._spike_of[cut][0])] = i
        outputs = [o.name for o in ann.graph.output if o.type.tensor_type.elem_type in FLOAT_TENSOR_TYPES]
        self._outputs = outputs
        self._compared = outputs  # those with the batch as their first axis (the reference run decides)
        self._head, self._head_reads = extract(snn, outputs, set(self._spike_of) | set(self._membrane_of))
        for cut in self._head_reads:
            key = ("snn", self._spike_of[cut][0] if cut in self._spike_of else self._membrane_of[cut])
            last_read[key] = len(self.sites)
        # The ANN's outputs, for the output check: its head on the stored activations (no second
        # ANN run), renamed so that one session can run both heads.
        ann_head, self._ann_head_reads = extract(ann, outputs, ann_cuts)
        self._ann_names = {name: f"icsnn.ann:{name}" for name in outputs}
        (self._head, self._ann_head), self._head_batch = self._batched(
            self._head, rename_outputs(ann_head, self._ann_names)
        )
        for cut in self._ann_head_reads:
            last_read[("ann", self._site_of[cut])] = len(self.sites)
        self._last_read = last_read
        self._dtype: dict[int, np.dtype] = {}
        self._keep_membrane = {self._membrane_of[c] for c in self._head_reads if c in self._membrane_of}
        # The θ/2 SNN the output check compares with depends on nothing Alg 2 chooses: it runs
        # beside the pass, on one thread, mostly while the pass's Python leaves a core idle.
        self._pool = ThreadPoolExecutor(1)
        self._reference = self._pool.submit(self._reference_run)

    def _batched(self, *models: onnx.ModelProto) -> tuple[tuple[onnx.ModelProto, ...], int]:
        """``models`` ready to run together, and their batch size: ours, unless the graph fixes a
        smaller one and not all of them compute sample by sample."""
        if self._fixed is None:
            return models, self.batch
        if all(per_sample(m) for m in models):
            return tuple(free_batch(m) for m in models), self.batch
        return models, self._fixed

    def close(self) -> None:
        """Waits for the reference run (its errors surface in :meth:`output_errors`)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _reference_run(self) -> None:
        """Stores the θ/2 trial SNN's float outputs (``half:<name>``) for the output check."""
        (snn,), batch = self._batched(self.snn)
        ranges = list(self._ranges(batch))
        runs = run_batches(snn, (self._feeds(snn, [], a, b) for a, b in ranges), self._outputs, 1)
        for (start, stop), half_out in zip(ranges, runs, strict=True):
            if (
                start == 0
            ):  # outputs without a batch axis first (a recurrent state [2, N, …]) are not compared
                self._compared = [n for n in self._outputs if np.shape(half_out[n])[:1] == (stop - start,)]
            for name in self._compared:
                if start == 0:
                    self.store.create(
                        f"half:{name}", (self.n, *half_out[name].shape[1:]), half_out[name].dtype
                    )
                self.store[f"half:{name}"][start:stop] = half_out[name]

    def currents_of(self, i: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Per batch: the site's target (its transfer of the ANN's current) and its currents
        ``[T or 1, batch, …]`` (as the SNN computes them), stored for :meth:`fire`."""
        site = self.sites[i]
        ann_seg, ann_reads, snn_seg, snn_reads = self._segments[i]
        ranges = list(self._ranges(self._batch_of[i]))
        ann_feeds = (self._feeds(ann_seg, ann_reads, a, b, ann=True) for a, b in ranges)
        snn_feeds = (self._feeds(snn_seg, snn_reads, a, b) for a, b in ranges)
        runs = _run_pair(
            (ann_seg, ann_feeds, [site.input, site.output]), (snn_seg, snn_feeds, self.currents[i])
        )
        keep_activation = ("ann", i) in self._last_read
        for (start, stop), (ann_out, snn_out) in zip(ranges, runs, strict=True):
            if start == 0:
                first = snn_out[self.currents[i][0]]
                self.store.create(f"z{i}", (len(self.currents[i]), self.n, *first.shape[1:]), first.dtype)
                if keep_activation:
                    activation = ann_out[site.output]
                    self.store.create(f"ann{i}", (self.n, *activation.shape[1:]), activation.dtype)
                if self.bias:
                    self.store.create(f"annz{i}", (self.n, *first.shape[1:]), np.float64)
            stored = self.store[f"z{i}"]
            for t, current in enumerate(self.currents[i]):
                stored[t, start:stop] = snn_out[current]
            if keep_activation:
                self.store[f"ann{i}"][start:stop] = ann_out[site.output]
            if self.bias:
                self.store[f"annz{i}"][start:stop] = ann_out[site.input]
            # float32, as the SNN computes them
            yield site.transfer(ann_out[site.input].astype(np.float64)), np.asarray(stored[:, start:stop])

    def correct_bias(self, i: int) -> np.ndarray:
        """Bias calibration of site ``i`` (after :meth:`currents_of` ran through): the mean, per
        channel (axis 1; all of it below rank 2), of the SNN's current over the T steps minus the
        ANN's, over every sample and position, is subtracted from the stored currents; returns the
        correction ``δ`` added (``−`` that mean error), shaped to broadcast against one sample's
        current (docs/method.md §17). Upstream sites' mean output errors reach this current
        through the linear layer that computes it, so ``δ`` is that layer's bias correction."""
        z, ann = self.store[f"z{i}"], self.store[f"annz{i}"]
        rank = ann.ndim
        axes = tuple(a for a in range(rank) if a != 1) if rank >= 2 else None
        total = np.zeros(ann.shape[1] if rank >= 2 else (), np.float64)
        for start, stop in self._ranges():
            gap = np.mean(np.asarray(z[:, start:stop], np.float64), axis=0) - ann[start:stop]
            total = total + np.sum(gap, axis=axes)
        count = ann.size / (ann.shape[1] if rank >= 2 else 1)
        delta = -total / max(count, 1)
        shape = (-1, *([1] * (rank - 2))) if rank >= 2 else ()
        delta = delta.reshape(shape)
        for start, stop in self._ranges():
            z[:, start:stop] = np.asarray(z[:, start:stop]) + delta.astype(z.dtype)
        return delta.astype(np.float32)

    def stored_currents(self, i: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """As :meth:`currents_of`, from the store (after :meth:`correct_bias`): per batch, the
        site's target and its corrected currents."""
        site, z, ann = self.sites[i], self.store[f"z{i}"], self.store[f"annz{i}"]
        for start, stop in self._ranges():
            yield site.transfer(np.asarray(ann[start:stop])), np.asarray(z[:, start:stop])

    def fire(self, i: int, v_init: np.ndarray) -> None:
        """Simulate site ``i`` with its chosen v(0); store its spikes (and v(T) if the head reads
        it); drop what no later segment reads."""
        z_all = self.store[f"z{i}"]
        self._dtype[i] = z_all.dtype  # what later segments read θ·s as
        theta, v_init = self.thresholds[i], np.asarray(v_init, np.float32)
        kind = self.kind(i, z_all.dtype)
        keep_spikes = ("snn", i) in self._last_read
        if not keep_spikes and i not in self._keep_membrane:  # nothing after it reads this site
            self._forget(i)
            return
        if keep_spikes:  # spike counts per step: bits, or signed for a signed kind
            spikes = self.store.create(
                f"s{i}", (self.T, *z_all.shape[1:]), np.int8 if kind.signed else np.uint8
            )
        if i in self._keep_membrane:
            membrane = self.store.create(f"v{i}", z_all.shape[1:], z_all.dtype)
        # z is [T or 1, N, C, …]: a block of channels takes its slice of per-channel θ and v(0).
        per_channel = z_all.ndim >= 3 and max(theta.size, v_init.size) > 1
        if per_channel:
            channels, tail = z_all.shape[2], [1] * (z_all.ndim - 3)
            theta_c = np.broadcast_to(theta.reshape(-1), (channels,))
            v_init_c = np.broadcast_to(v_init.reshape(-1), (channels,))

        def work(block: Block, z: np.ndarray, start: int) -> None:
            batch, channel = block
            where = (slice(None), batch, channel) if z.ndim >= 3 else (slice(None), batch)
            if per_channel:
                block_theta = theta_c[channel].reshape(-1, *tail)
                block_v = v_init_c[channel].reshape(-1, *tail)
            else:
                block_theta, block_v = theta, v_init
            parameters = {"theta": block_theta.astype(z.dtype)}
            rows = (slice(start + batch.start, start + batch.stop), *where[2:])
            quantizer, drive = driven(kind, np.broadcast_to(z[where], (self.T, *z[where].shape[1:])))
            initial = {s: np.zeros((), z.dtype) for s in quantizer.states}
            initial[quantizer.membrane] = block_v.astype(z.dtype)
            for t, step in enumerate(quantizer.steps(drive, parameters, initial)):
                if keep_spikes:
                    spikes[(t, *rows)] = step[quantizer.spike]
            if i in self._keep_membrane:
                membrane[rows] = step["v_next"]

        for start, stop in self._ranges():
            z = np.asarray(z_all[:, start:stop])
            for _ in run_blocks(lambda block, z=z, start=start: work(block, z, start), blocks(z.shape[1:])):
                pass
        self._forget(i)

    def kind(self, i: int, dtype: np.dtype) -> NeuronKind:
        """Site ``i``'s neuron kind in the float type its currents are computed in."""
        return neuron_kind(self.sites[i], np.dtype(dtype), self.levels)

    def _forget(self, i: int) -> None:
        """Drops site ``i``'s currents and whatever site ``i`` was the last to read."""
        self.store.drop(f"z{i}")
        if self.bias:
            self.store.drop(f"annz{i}")
        for (kind, k), last in self._last_read.items():
            if last == i:
                self.store.drop(f"{'ann' if kind == 'ann' else 's'}{k}")
        self._bar.update()

    def output_errors(self, v_init: dict[str, np.ndarray]) -> tuple[float, float]:
        """Mean squared difference from the ANN's float outputs of the trial SNN (θ/2) and of the
        calibrated one (its head on the stored spikes, with ``v_init`` in the read-out)."""
        self._bar.close()
        head = onnx.ModelProto()
        head.CopyFrom(self._head)
        names = {layer.v_init: site.name for layer, site in zip(self.layers, self.sites, strict=True)}
        for tensor in head.graph.initializer:
            if tensor.name in names:
                dtype = numpy_helper.to_array(tensor).dtype  # the model's float type (float16, …)
                tensor.CopyFrom(
                    numpy_helper.from_array(np.asarray(v_init[names[tensor.name]], dtype), tensor.name)
                )
        self._reference.result()
        ranges = list(self._ranges(self._head_batch))
        snn_feeds = (self._feeds(head, self._head_reads, a, b) for a, b in ranges)
        ann_feeds = (self._feeds(self._ann_head, self._ann_head_reads, a, b, ann=True) for a, b in ranges)
        runs = _run_pair(
            (head, snn_feeds, self._outputs), (self._ann_head, ann_feeds, list(self._ann_names.values()))
        )
        totals, count = [0.0, 0.0], 0
        for (start, stop), (calibrated_out, ann_out) in zip(ranges, runs, strict=True):
            for name in self._compared:
                reference = ann_out[self._ann_names[name]].astype(np.float64)
                half = self.store[f"half:{name}"][start:stop]
                totals[0] += float(np.sum((half - reference) ** 2))
                totals[1] += float(np.sum((calibrated_out[name] - reference) ** 2))
                count += reference.size
        return totals[0] / max(count, 1), totals[1] / max(count, 1)

    def _ranges(self, batch: int | None = None) -> Iterator[tuple[int, int]]:
        batch = batch or self.batch
        for start in range(0, self.n, batch):
            yield start, min(start + batch, self.n)

    def _feeds(
        self, model: onnx.ModelProto, cuts: list[str], start: int, stop: int, ann: bool = False
    ) -> dict[str, np.ndarray]:
        """``model``'s graph inputs and the stored cuts it reads, for samples ``start:stop``."""
        wanted = {i.name for i in model.graph.input}
        feeds = {name: values[start:stop] for name, values in self.data.inputs.items() if name in wanted}
        for cut in cuts:
            if ann:
                feeds[cut] = np.asarray(self.store[f"ann{self._site_of[cut]}"][start:stop])
            elif cut in self._spike_of:
                k, t = self._spike_of[cut]
                # bits × θ in the model's float type: one pass (θ·1 rounds as θ does)
                feeds[cut] = np.multiply(
                    self.store[f"s{k}"][t, start:stop], self.thresholds[k].astype(self._dtype[k])
                )
            else:
                feeds[cut] = np.asarray(self.store[f"v{self._membrane_of[cut]}"][start:stop])
        return feeds


Outputs = dict[str, np.ndarray]
Part = tuple[onnx.ModelProto, Iterator[Outputs], list[str]]  # a segment, its feeds, its outputs


def _run_pair(first: Part, second: Part) -> Iterator[tuple[Outputs, Outputs]]:
    """Both segments on their feeds, batch by batch: as one model (one session to load) where
    :func:`~icsnn_onnx.segments.merge` can join them, else each in its own session."""
    (model_1, feeds_1, outputs_1), (model_2, feeds_2, outputs_2) = first, second
    both = merge(model_1, model_2)
    if both is None:
        yield from zip(
            run_batches(model_1, feeds_1, outputs_1), run_batches(model_2, feeds_2, outputs_2), strict=True
        )
        return
    feeds = ({**a, **b} for a, b in zip(feeds_1, feeds_2, strict=True))
    for out in run_batches(both, feeds, list(dict.fromkeys([*outputs_1, *outputs_2]))):
        yield out, out


def _static_batch(model: onnx.ModelProto) -> int:
    """The batch every graph input is fixed to (e.g. 1 in old model-zoo graphs), else no limit."""
    constants = {t.name for t in model.graph.initializer}
    sizes = [
        i.type.tensor_type.shape.dim[0].dim_value
        for i in model.graph.input
        if i.name not in constants
        and i.type.tensor_type.shape.dim
        and i.type.tensor_type.shape.dim[0].HasField("dim_value")
    ]
    return min(sizes) if sizes else 1 << 30


def topological_sites(program: Program) -> list[ActivationSite]:
    program.graph.toposort()
    position = {n.name: i for i, n in enumerate(program.graph.nodes)}
    return sorted(program.sites.values(), key=lambda s: position[s.nodes[0]])
