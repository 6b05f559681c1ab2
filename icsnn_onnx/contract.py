"""Names that define the converted model's contract, shared by the compiler and the runtime."""

#: For every output ``y``, ``--per-step`` adds ``y + PER_STEP_SUFFIX`` of shape ``[T, *shape(y)]``.
PER_STEP_SUFFIX = "_per_step"

#: Metadata key listing the per-step outputs (comma-separated); their batch axis is 1.
PER_STEP_OUTPUTS_KEY = "icsnn.per_step_outputs"
