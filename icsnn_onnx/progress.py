"""Progress reporting hook: the library reports, the caller (e.g. the CLI) decides how to show it."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def update(self, n: int = 1) -> object: ...

    def close(self) -> object: ...


class ProgressFactory(Protocol):
    def __call__(self, total: int, desc: str) -> Progress: ...


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def silent(total: int, desc: str) -> Progress:
    """The default: report nothing."""
    return _Silent()
