"""Names that define the converted model's contract, shared by the compiler and the runtime."""

from __future__ import annotations

#: For every output ``y``, ``--per-step`` adds ``y + PER_STEP_SUFFIX`` of shape ``[T, *shape(y)]``.
PER_STEP_SUFFIX = "_per_step"

#: Metadata key listing the per-step outputs (comma-separated); their batch axis is 1.
PER_STEP_OUTPUTS_KEY = "icsnn.per_step_outputs"

#: Separates a tensor's or node's name from its time step in the unrolled graph.
STEP_SEPARATOR = "@"


def step_name(name: str, t: int) -> str:
    """The name of tensor or node ``name`` at time step ``t`` (1-based) of the unrolled graph."""
    return f"{name}{STEP_SEPARATOR}{t}"


def parse_step_name(name: str) -> tuple[str, int] | None:
    """``(name, t)`` for a name made by :func:`step_name`, else ``None``."""
    base, sep, step = name.rpartition(STEP_SEPARATOR)
    if not sep or not step.isdigit():
        return None
    return base, int(step)


#: The ``--layout loop`` body's step: tensors and nodes are named ``name@t`` with a literal ``t``
#: (every step's, no step number; :func:`parse_step_name` does not take it for a step).
LOOP_STEP = "t"


def loop_step_name(name: str) -> str:
    """The name of tensor or node ``name`` inside the ``--layout loop`` body (steps 2…T)."""
    return f"{name}{STEP_SEPARATOR}{LOOP_STEP}"
