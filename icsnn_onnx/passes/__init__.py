"""Graph passes and the manager that runs them.

Each pass is a small class: options in ``__init__``, an explicit precondition (``requires``)
and postcondition (``ensures``), and one ``call(program) -> PassResult``. The manager runs a
list of passes; a user error raised inside a pass propagates unchanged (with a note naming
the pass), anything else is wrapped in :class:`~icsnn_onnx.errors.PassError`.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from icsnn_onnx.errors import IcsnnError, PassError, PostconditionError, PreconditionError
from icsnn_onnx.passes.program import Program

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PassResult:
    program: Program
    modified: bool


class Pass(ABC):
    """One graph transformation or analysis."""

    @property
    def name(self) -> str:
        return type(self).__name__

    def requires(self, program: Program) -> None:  # noqa: B027 - optional hook
        """Raise :class:`PreconditionError` if the program is not ready for this pass."""

    def ensures(self, program: Program) -> None:  # noqa: B027 - optional hook
        """Raise :class:`PostconditionError` (:func:`ensure`) if the pass left the program
        inconsistent."""

    @abstractmethod
    def call(self, program: Program) -> PassResult: ...

    def __call__(self, program: Program) -> PassResult:
        self.requires(program)
        result = self.call(program)
        self.ensures(result.program)
        return result


def require(condition: bool, pass_name: str, message: str) -> None:
    """Raise a :class:`PreconditionError` naming the pass when ``condition`` is false."""
    if not condition:
        raise PreconditionError(f"{pass_name}: {message}")


def ensure(condition: bool, pass_name: str, message: str) -> None:
    """Raise a :class:`PostconditionError` naming the pass when ``condition`` is false."""
    if not condition:
        raise PostconditionError(f"{pass_name}: {message}")


class PassManager:
    """Runs passes in order; reports whether any of them modified the program."""

    def __init__(self, passes: Sequence[Pass]) -> None:
        self.passes = list(passes)

    def __call__(self, program: Program) -> PassResult:
        modified = False
        for p in self.passes:
            start = time.perf_counter()
            try:
                result = p(program)
            except IcsnnError as err:
                err.add_note(f"raised in pass {p.name}")
                raise
            except (PreconditionError, PostconditionError):
                raise
            except Exception as err:
                raise PassError(p.name, err) from err
            program = result.program
            modified |= result.modified
            logger.debug(
                "pass %s: modified=%s (%.3f s, %d nodes)",
                p.name,
                result.modified,
                time.perf_counter() - start,
                len(program.graph.nodes),
            )
        return PassResult(program, modified)
