"""The command line's value types: each parses one flag's text or says, in one line, what it expected."""

from __future__ import annotations

import argparse

from icsnn_onnx.options import MAX_LEVELS, parse_threshold_method


def integer(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ {minimum}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    return integer(text, 1)


def levels(text: str) -> int:
    value = integer(text, 1)
    if value > MAX_LEVELS:
        raise argparse.ArgumentTypeError(f"at most {MAX_LEVELS}, got {value}")
    return value


def level_list(text: str) -> tuple[int, ...]:
    """``K`` or ``K1,K2,…``: the graded-spike levels tune compares."""
    return tuple(levels(part) for part in text.split(","))


def non_negative_int(text: str) -> int:
    return integer(text, 0)


def points(text: str) -> float:
    """Accuracy points: a finite number in [0, 100]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected accuracy points in [0, 100], got {text!r}") from None
    if not 0.0 <= value <= 100.0:  # NaN fails both comparisons
        raise argparse.ArgumentTypeError(f"expected accuracy points in [0, 100], got {text!r}")
    return value


def gpus(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of GPUs ≥ 0, got {text!r}") from None
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of GPUs ≥ 0, got {text!r}")
    return value


def picojoules(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected energy in pJ ≥ 0, got {text!r}") from None
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected energy in pJ ≥ 0, got {text!r}")
    return value


def step_list(text: str) -> tuple[int, ...]:
    try:
        steps = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected step counts like 8,32,128, got {text!r}") from None
    if not steps or min(steps) < 1:
        raise argparse.ArgumentTypeError(f"step counts must be positive integers, got {text!r}")
    return steps


def threshold(text: str) -> str:
    try:
        parse_threshold_method(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def fixed_input(text: str) -> tuple[str, str]:
    """``NAME=VALUE``: an input given one value (a number, a comma list, or an .npy file)."""
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(
            f"expected NAME=VALUE (a number, a list or an .npy file), got {text!r}"
        )
    return name, value
