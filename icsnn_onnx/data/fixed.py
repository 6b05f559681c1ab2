"""Fixed inputs: model inputs that are not samples — a sample rate, a recurrent state, a flag —
given one value for every sample (``--input NAME=VALUE|file.npy``, ``fixed={...}``).

A converted model is compiled for its fixed values (they are constants inside it, so control flow
on them folds and the branch not taken disappears); it keeps the inputs, with those values as
defaults, so it stays a drop-in replacement for its ANN. Data need not hold fixed inputs; every
batch is fed them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from icsnn_onnx.contract import FIXED_INPUTS_KEY
from icsnn_onnx.data.specs import InputSpec
from icsnn_onnx.errors import DataError

Fixed = Mapping[str, np.ndarray]


def fixed_values(given: Mapping[str, object] | None, specs: Sequence[InputSpec]) -> dict[str, np.ndarray]:
    """``given`` (input name → a number, a sequence, an array, or an ``.npy`` path) as arrays of
    the inputs' dtypes and ranks; a :class:`DataError` naming the input for anything else."""
    if not given:
        return {}
    by_name = {s.name: s for s in specs}
    values = {}
    for name, raw in given.items():
        spec = by_name.get(name)
        if spec is None:
            raise DataError(
                f"--input {name}: the model has no input {name!r} (its inputs: {sorted(by_name)})"
            )
        value = _load(name, raw)
        if value.dtype.kind not in "biuf":
            raise DataError(f"--input {name}: the model takes {spec.describe()}, given {value.dtype} values")
        if spec.dtype.kind in "biu" and value.dtype.kind == "f" and not np.all(value == np.round(value)):
            raise DataError(f"--input {name}: the model takes {spec.describe()}, given non-integer values")
        value = value.astype(spec.dtype)
        if value.ndim != len(spec.shape) and not (value.ndim == 0 and all(d == 1 for d in spec.shape)):
            raise DataError(
                f"--input {name}: the model takes {spec.describe()}, given shape {list(value.shape)}"
            )
        value = value.reshape([1] * len(spec.shape)) if value.ndim != len(spec.shape) else value
        for axis, (dim, size) in enumerate(zip(spec.shape, value.shape, strict=True)):
            if isinstance(dim, int) and dim > 0 and dim != size:
                raise DataError(
                    f"--input {name}: the model takes {spec.describe()}, given shape {list(value.shape)} (axis {axis})"
                )
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise DataError(f"--input {name}: its value is not finite")
        values[name] = value
    return values


def _load(name: str, raw: object) -> np.ndarray:
    if isinstance(raw, str | Path) and str(raw).endswith(".npy"):
        path = Path(raw)
        if not path.is_file():
            raise DataError(f"--input {name}: no such file {path}")
        try:
            return np.asarray(np.load(path, allow_pickle=False))
        except (OSError, ValueError) as err:
            raise DataError(f"--input {name}: cannot read {path}: {err}") from None
    if isinstance(raw, str):
        try:
            return np.asarray(
                json.loads(raw if raw.strip().startswith("[") else f"[{raw}]"), dtype=None
            ).reshape(() if "[" not in raw and "," not in raw else -1)
        except (ValueError, TypeError):
            raise DataError(f"--input {name}: {raw!r} is no number, list of numbers or .npy file") from None
    return np.asarray(raw)


def sample_specs(specs: Sequence[InputSpec], fixed: Fixed) -> list[InputSpec]:
    """The inputs data must hold: all but the fixed ones."""
    return [s for s in specs if s.name not in fixed]


def describe(fixed: Fixed) -> dict[str, str]:
    """Each fixed value in a line (what metadata and messages say)."""
    return {
        name: (repr(value.item()) if value.size == 1 else f"{value.dtype}{list(value.shape)}")
        for name, value in fixed.items()
    }


def digest(value: np.ndarray) -> str:
    """What a compiled file remembers of a fixed value: its dtype, shape and bytes, hashed."""
    value = np.ascontiguousarray(value)
    text = f"{value.dtype}{list(value.shape)}".encode() + value.tobytes()
    return hashlib.sha256(text).hexdigest()[:16]


def compiled_record(fixed: Fixed) -> str:
    """The metadata a file compiled for ``fixed`` carries (:data:`FIXED_INPUTS_KEY`)."""
    return json.dumps(
        {name: {"value": text, "digest": digest(fixed[name])} for name, text in describe(fixed).items()}
    )


def check_compiled_values(metadata: Mapping[str, str], fixed: Fixed) -> None:
    """A file compiled for fixed values runs with those: refuse any other, or none (naming them)."""
    record = json.loads(metadata.get(FIXED_INPUTS_KEY, "{}"))
    for name, compiled in record.items():
        if name not in fixed:
            raise DataError(
                f"the model was compiled for input {name} = {compiled['value']}: give it (--input {name}=…)"
            )
        if digest(fixed[name]) != compiled["digest"]:
            raise DataError(
                f"the model was compiled for input {name} = {compiled['value']}, given {describe(fixed)[name]}: "
                "convert the ANN again for that value"
            )
