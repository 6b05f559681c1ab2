"""What this machine can hold: refuse absurd sizes before allocating them.

A calibration file whose header claims terabytes, a model input with a static batch of 2^40, a
``bench --batch`` of a billion or a 40 GB constant would otherwise end in a ``MemoryError`` (or the
OOM killer) after minutes; each is checked against the memory available now and refused with
the size it would need.
"""

from __future__ import annotations

import os
from pathlib import Path

from icsnn_onnx.errors import IcsnnError


def available_memory() -> int:
    """Bytes of memory available to a new allocation (Linux's MemAvailable, else physical)."""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**63


def human(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(nbytes) < 1024 or unit == "PiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} EiB"


def check_allocation(nbytes: int, what: str, error: type[IcsnnError], hint: str = "") -> None:
    """Raise ``error`` if ``nbytes`` exceed the memory available now."""
    limit = available_memory()
    if nbytes > limit:
        tail = f"; {hint}" if hint else ""
        raise error(f"{what} needs {human(nbytes)}, more than the {human(limit)} of memory available{tail}")
