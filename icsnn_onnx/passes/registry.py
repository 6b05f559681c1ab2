"""Per-op rule tables: one function per op type, registered by decorator, a duplicate refused."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

F = TypeVar("F", bound=Callable[..., object])


class RuleTable(Generic[F]):
    """``table.rule("Conv", "Gemm")`` registers a function for those ops; ``table.get(op)``."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.rules: dict[str, F] = {}

    def rule(self, *op_types: str) -> Callable[[F], F]:
        def register(fn: F) -> F:
            for op in op_types:
                if op in self.rules:
                    raise ValueError(f"duplicate {self.what} rule for {op}")
                self.rules[op] = fn
            return fn

        return register

    def get(self, op_type: str) -> F | None:
        return self.rules.get(op_type)

    def __contains__(self, op_type: str) -> bool:
        return op_type in self.rules
