"""What every command shares: progress bars, the options record and the engine from the flags."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from icsnn_onnx.errors import OptionError
from icsnn_onnx.options import ConversionOptions
from icsnn_onnx.progress import Progress, ProgressFactory, silent
from icsnn_onnx.runtime.engine import RayEngine


def progress_factory(quiet: bool) -> ProgressFactory:
    if quiet:
        return silent
    from tqdm import tqdm

    def factory(total: int, desc: str) -> Progress:
        return tqdm(total=total, desc=desc, unit="batch", file=sys.stderr, leave=False, disable=None)

    return factory


def options_of(args: argparse.Namespace, **overrides: object) -> ConversionOptions:
    """The one record of what to build, from the CLI's fields of the same names."""
    values = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(ConversionOptions) if hasattr(args, f.name)
    }
    try:
        return ConversionOptions(**{**values, **overrides})
    except ValueError as err:
        raise OptionError(str(err)) from None


def engine_of(args: argparse.Namespace) -> RayEngine | None:
    """``--engine ray`` and its settings as the library's record; ``None`` for the local engine."""
    from icsnn_onnx.runtime.engine import ray_module

    if args.engine == "local":
        given = [
            f"--{f.name.replace('_', '-')}"
            for f in dataclasses.fields(RayEngine)
            if getattr(args, f.name) != getattr(RayEngine(), f.name)
        ]
        if given:
            raise OptionError(f"{', '.join(given)} only apply with --engine ray")
        return None
    ray_module()  # the extra's error before any work
    return RayEngine(args.address, args.workers, args.gpus_per_worker)


def fixed_of(args: argparse.Namespace) -> dict[str, str] | None:
    """``--input NAME=VALUE`` flags as the library's ``fixed`` mapping (``None`` without any)."""
    given = getattr(args, "fixed", None)
    return dict(given) if given else None
