"""Rate and Poisson input encoders: an encoded input's spikes, step by step."""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from icsnn_onnx.contract import (
    encoded_spikes_name,
    step_name,
)
from icsnn_onnx.errors import ConversionError
from icsnn_onnx.neurons import IF
from icsnn_onnx.passes.graph_utils import static_dims
from icsnn_onnx.passes.program import EncodingKind, InputEncoder
from icsnn_onnx.passes.unroll.builder import Builder


class Encoders(Builder):
    def _encoded_inputs(self) -> dict[str, list[gs.Tensor]]:
        """Emit the input encoders (rate or Poisson coding): graph input → its T steps."""
        return {name: self._encode(self.tensors[name], enc) for name, enc in self.encoders.items()}

    def _encode(self, x: gs.Tensor, enc: InputEncoder) -> list[gs.Tensor]:
        """``x(t) = low + (high − low)·s(t)`` with ``s`` the spikes of ``x``'s encoder."""
        dtype = np.dtype(x.dtype or np.float32)
        rate = self._normalized(x, enc)
        if enc.kind is EncodingKind.RATE:
            spikes = gs.Variable(encoded_spikes_name(x.name), x.dtype, x.shape)
            theta = self._const(f"{x.name}.encoder_threshold", 1.0, dtype)
            v0 = self._const(f"{x.name}.encoder_v_init", enc.v_init, dtype)
            steps = self._neuron_steps(
                IF, f"{x.name}.encoder", {"theta": theta}, {"v": v0}, spikes, [rate] * self.T
            )
        else:
            noise = self._poisson_noise(x, enc)
            steps = []
            for t in range(1, self.T + 1):
                noise_t = gs.Constant(step_name(f"{x.name}.noise", t), noise[t - 1])
                steps.append(self._poisson_spikes(x, rate, noise_t, lambda base, t=t: step_name(base, t)))
        return [
            self._decoded(x, enc, s_t, lambda base, t=t: step_name(base, t)) for t, s_t in enumerate(steps, 1)
        ]

    def _normalized(self, x: gs.Tensor, enc: InputEncoder) -> gs.Tensor:
        """``(x − low)/(high − low)``: the encoder's constant input, computed once."""
        dtype = np.dtype(x.dtype or np.float32)
        shifted = gs.Variable(f"{x.name}.shifted", x.dtype, x.shape)
        self._add("Sub", f"{x.name}.shifted", [x, self._const(f"{x.name}.low", enc.low, dtype)], [shifted])
        rate = gs.Variable(f"{x.name}.normalized", x.dtype, x.shape)
        inv_span = self._const(f"{x.name}.inv_span", 1.0 / (enc.high - enc.low), dtype)
        self._add("Mul", f"{x.name}.normalized", [shifted, inv_span], [rate])
        return rate

    def _poisson_noise(self, x: gs.Tensor, enc: InputEncoder) -> np.ndarray:
        """The seeded uniform noise ``[T, 1, *sample]`` a Poisson encoder compares against."""
        sample = list(x.shape[1:]) if x.shape is not None else None
        if not static_dims(sample):
            raise ConversionError(f"Poisson coding needs the non-batch dimensions of input {x.name} fixed")
        rng = np.random.default_rng([enc.seed, zlib.crc32(x.name.encode())])
        return rng.random((self.T, 1, *sample)).astype(np.dtype(x.dtype or np.float32))

    def _poisson_spikes(
        self, x: gs.Tensor, rate: gs.Tensor, noise_t: gs.Tensor, name: Callable[[str], str]
    ) -> gs.Tensor:
        fired = gs.Variable(name(f"{x.name}.fired"), np.bool_, x.shape)
        self._add("Less", name(f"{x.name}.fired"), [noise_t, rate], [fired])
        s_t = gs.Variable(name(encoded_spikes_name(x.name)), x.dtype, x.shape)
        self._add("CastLike", name(encoded_spikes_name(x.name)), [fired, rate], [s_t])
        return s_t

    def _decoded(
        self, x: gs.Tensor, enc: InputEncoder, s_t: gs.Tensor, name: Callable[[str], str]
    ) -> gs.Tensor:
        """What the network receives from spikes ``s(t)``: ``low + (high − low)·s(t)``."""
        dtype = np.dtype(x.dtype or np.float32)
        scaled = gs.Variable(name(f"{x.name}.scaled"), x.dtype, x.shape)
        self._add(
            "Mul",
            name(f"{x.name}.scaled"),
            [s_t, self._const(f"{x.name}.span", enc.high - enc.low, dtype)],
            [scaled],
        )
        x_t = gs.Variable(name(x.name), x.dtype, x.shape)
        self._add("Add", name(x.name), [scaled, self._const(f"{x.name}.low", enc.low, dtype)], [x_t])
        return x_t
