"""An elementwise function of one tensor as an equation table: the ``f`` a neuron computes.

Activation recognition (``passes/activations.py``) lifts it from the graph's own nodes, so SiLU,
HardSwish, GELU (either form), Mish, a clip-floor staircase or any other elementwise DAG of one
tensor is carried exactly as the exporter wrote it: equations from ``x`` to ``y``, attributes as
they were, and the uniform constants as scalars of their own dtype (floats in the site's float
type).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from icsnn_onnx.neurons.equations import Equation, evaluate

#: The names a function's table reads and writes.
X, Y = "x", "y"


@dataclass(frozen=True)
class ElementwiseFunction:
    """``y = f(x)`` elementwise: ``equations`` from :data:`X` to :data:`Y`, reading ``constants``
    (name → a scalar array) beside ``x``; ``description`` says what it is, for people."""

    equations: tuple[Equation, ...]
    constants: tuple[tuple[str, np.ndarray], ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        defined = {X, "", *(name for name, _ in self.constants)}
        for eq in self.equations:
            missing = [a for a in eq.args if a not in defined]
            if missing:
                raise ValueError(f"{eq.result} = {eq.op_type}(…) reads undefined {missing}")
            defined.add(eq.result)
        if Y not in defined:
            raise ValueError("the function never computes y")
        for name, value in self.constants:
            if np.asarray(value).size != 1:
                raise ValueError(f"constant {name} must be one value, has {np.asarray(value).size}")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``f(x)`` in numpy (the ops' ONNX semantics), in x's dtype where the ops keep it."""
        x = np.asarray(x)
        env = {X: x, **{name: self._typed(value, x.dtype) for name, value in self.constants}}
        with np.errstate(all="ignore"):
            return evaluate(self.equations, env)[Y]

    @staticmethod
    def _typed(value: np.ndarray, dtype: np.dtype) -> np.ndarray:
        value = np.asarray(value)
        return value.astype(dtype) if value.dtype.kind == "f" and dtype.kind == "f" else value

    def renamed(self, prefix: str, x: str, y: str) -> tuple[tuple[Equation, ...], dict[str, str]]:
        """The equations reading ``x`` and writing ``y`` instead, every other name prefixed (to sit
        inside a larger table), and the renaming of the constants."""
        names = {X: x, Y: y, "": ""}

        def name(n: str) -> str:
            return names.setdefault(n, f"{prefix}{n}")

        renamed = tuple(
            Equation(name(eq.result), eq.op_type, tuple(name(a) for a in eq.args), eq.attrs)
            for eq in self.equations
        )
        return renamed, {c: name(c) for c, _ in self.constants}

    def digest(self, dtype: np.dtype) -> str:
        """A short, stable name for this function in ``dtype`` (functions in files are named by it)."""
        text = repr(
            (
                [(e.result, e.op_type, e.args, e.attrs) for e in self.equations],
                [
                    (n, self._typed(v, dtype).tobytes().hex(), str(self._typed(v, dtype).dtype))
                    for n, v in self.constants
                ],
                str(np.dtype(dtype)),
            )
        )
        return hashlib.sha256(text.encode()).hexdigest()[:10]
