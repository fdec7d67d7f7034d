"""Scan geometry: flat indices, chunk-aligned runs and blocks, and their hyperslabs.

A partition is a half-open run ``[start, stop)`` of flat scan indices. All runs
lie on one grid of blocks of ``size`` frames, where ``size`` comes from a byte
target and is a multiple (or an even divisor) of the data's chunk run along the
scan dims, so one read serves many frames and no chunk is read by two
partitions. Because the grid is fixed, a live run that dispatches part of a
block early sends the rest of that block later as another run of the same block.

dask.bag's own partitioning (``npartitions=``) is approximate and knows nothing
of HDF5 chunks, which is why the runs are built here and each partition is handed
to dask as one task. How big a block is, and when a live run sends a partial
one, is :mod:`framebag.dispatch`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = ["scan_index", "chunk_run", "cut", "by_block", "blocks", "selection_shape"]


Run = tuple[int, int]


def scan_index(flat: int, scan_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The scan index of flat index ``flat``, as a tuple of ints (for messages)."""
    return tuple(int(x) for x in np.unravel_index(int(flat), scan_shape))


def chunk_run(scan_shape: tuple[int, ...], chunks: tuple[int, ...] | None) -> int:
    """How many consecutive flat indices one chunk covers along the scan dims.

    For scan ``(ny, nx)`` and chunks ``(2, nx, ...)`` that is ``2 * nx``; for chunks
    ``(1, 10, ...)`` it is 10 (chunk rows of 10 within a scan row).
    """
    if not chunks:
        return 1
    c = chunks[: len(scan_shape)]
    k = len(scan_shape) - 1
    while k > 0 and c[k] == scan_shape[k]:
        k -= 1
    return int(c[k]) * int(np.prod(scan_shape[k + 1 :], dtype=np.int64))


def cut(flat: np.ndarray, size: int) -> list[Run]:
    """Split flat indices into runs that are contiguous and within one block.

    The indices are sorted here; in any other order each run is still an
    ascending, contiguous stretch of them, in their order.
    """
    flat = np.asarray(flat, dtype=np.int64)
    if flat.size == 0:
        return []
    breaks = np.flatnonzero((np.diff(flat) != 1) | (flat[1:] % size == 0)) + 1
    starts = flat[np.r_[0, breaks]]
    stops = flat[np.r_[breaks - 1, flat.size - 1]] + 1
    return list(zip(starts.tolist(), stops.tolist()))


def by_block(runs: list[Run], size: int) -> list[list[Run]]:
    """Group sorted runs by the block of ``size`` frames they lie in, keeping their order."""
    groups: list[list[Run]] = []
    block = -1
    for run in runs:
        b = run[0] // size
        if b != block:
            groups.append([])
            block = b
        groups[-1].append(run)
    return groups


Slab = tuple[tuple[slice, ...], int]


def blocks(start: int, stop: int, shape: tuple[int, ...]) -> Iterator[Slab]:
    """Decompose the flat run ``[start, stop)`` of ``shape`` into rectangular hyperslabs.

    Yields ``(selection, count)`` in flat order; at most ``2 * rank - 1`` slabs.
    """
    if len(shape) == 1:
        yield (slice(start, stop),), stop - start
        return
    inner = int(np.prod(shape[1:], dtype=np.int64))
    r0, o0 = divmod(start, inner)
    r1, o1 = divmod(stop, inner)
    if r0 == r1:
        for sel, n in blocks(o0, o1, shape[1:]):
            yield (slice(r0, r0 + 1), *sel), n
        return
    if o0:
        for sel, n in blocks(o0, inner, shape[1:]):
            yield (slice(r0, r0 + 1), *sel), n
        r0 += 1
    if r1 > r0:
        yield (slice(r0, r1), *(slice(0, s) for s in shape[1:])), (r1 - r0) * inner
    if o1:
        for sel, n in blocks(0, o1, shape[1:]):
            yield (slice(r1, r1 + 1), *sel), n


def selection_shape(sel: tuple[slice, ...]) -> tuple[int, ...]:
    return tuple(s.stop - s.start for s in sel)
