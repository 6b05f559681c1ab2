"""Elementwise numpy work over ``[N, C, …]`` tensors, split into blocks run on every core.

Alg 2 simulates and scores IF neurons over every calibration neuron in numpy: elementwise,
memory-bound and single-threaded per call. Split into ``(batch, channel)`` blocks of about
65,000 elements, the blocks run in threads (numpy releases the GIL inside its loops)
and their temporaries stay small: 1.5–2× faster on two cores.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from icsnn_onnx.runtime.providers import available_cores

Result = TypeVar("Result")

#: Elements per block: large enough that numpy's per-call overhead is noise, small enough that a
#: block's temporaries stay in cache.
BLOCK_ELEMENTS = 1 << 16

Block = tuple[slice, slice]


def blocks(shape: tuple[int, ...], elements: int = BLOCK_ELEMENTS) -> list[Block]:
    """``(batch, channel)`` slices covering a ``[N, C, …]`` shape in blocks of about ``elements``:
    channels of one sample where a sample is that large, else whole samples (channel
    ``slice(None)``, as for rank 1)."""
    inner = int(np.prod(shape[2:], dtype=np.int64))  # 1 below rank 3
    if len(shape) >= 2 and shape[1] * inner >= elements:  # a sample or more: blocks of channels
        width = max(1, elements // inner)
        return [
            (slice(n, n + 1), slice(c, min(c + width, shape[1])))
            for n in range(shape[0])
            for c in range(0, shape[1], width)
        ]
    step = max(1, elements // (shape[1] * inner if len(shape) >= 2 else 1))  # blocks of samples
    return [(slice(n, min(n + step, shape[0])), slice(None)) for n in range(0, shape[0], step)]


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    # One per process: starting threads for every call cost ResNet-50's Alg 2 a second.
    return ThreadPoolExecutor(threads, thread_name_prefix="icsnn-blocks")


def run_blocks(work: Callable[[Block], Result], parts: list[Block]) -> Iterator[Result]:
    """``work`` on every block, on every available core; results in the blocks' order."""
    threads = available_cores()
    if threads <= 1 or len(parts) <= 1:
        yield from map(work, parts)
        return
    yield from _pool(threads).map(work, parts)
