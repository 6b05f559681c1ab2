"""Initial membrane potential v(0) per site (IC-SNN Alg 1).

- ``zero``: v(0) = 0. Spike counts floor the input: mean output ≈ θ·floor(z·T/θ)/T.
- ``half``: v(0) = θ/2. Spike counts round instead of floor; the residual term
  (v(T) − v(0))/T is zero-mean for inputs uniform within a quantization step, which is
  optimal in expectation (docs/method.md).
"""

from __future__ import annotations

import numpy as np

from icsnn_onnx.passes import Pass, PassResult, require
from icsnn_onnx.program import Program

INIT_FRACTION = {"zero": 0.0, "half": 0.5}


class InitialPotential(Pass):
    def __init__(self, policy: str) -> None:
        if policy not in INIT_FRACTION:
            raise ValueError(f"unknown initial potential policy {policy!r}")
        self.policy = policy

    def requires(self, program: Program) -> None:
        missing = set(program.sites) - set(program.thresholds)
        require(not missing, self.name, f"thresholds needed first for {sorted(missing)}")

    def call(self, program: Program) -> PassResult:
        fraction = INIT_FRACTION[self.policy]
        for name, theta in program.thresholds.items():
            program.v_init[name] = (np.asarray(theta) * fraction).astype(np.float32)
        return PassResult(program, True)
