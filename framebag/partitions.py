"""Grouping completed flat indices into partitions: contiguous, chunk-aligned runs.

A partition is a half-open run ``[start, stop)`` of flat scan indices. All runs
lie on one grid of blocks of ``size`` frames, where ``size`` comes from a byte
target and is a multiple (or an even divisor) of the data's chunk run along the
scan dims, so one read serves many frames and no chunk is read by two
partitions. Because the grid is fixed, a live run that dispatches part of a
block early sends the rest of that block later as another run of the same block.

dask.bag's own partitioning (``npartitions=``) is approximate and knows nothing
of HDF5 chunks, which is why the runs are built here and each partition is handed
to dask as one task.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

__all__ = [
    "DEFAULT_PARTITION_BYTES",
    "scan_index",
    "chunk_run",
    "partition_size",
    "task_size",
    "task_cap",
    "cut",
    "by_block",
    "blocks",
    "Dispatcher",
]

#: 32 MiB: on a 2-core VM, 16 MiB partitions of cheap 32 KiB frames spent a third of the
#: workers' time in per-task overhead; 64 MiB was no faster and costs more worker memory
DEFAULT_PARTITION_BYTES = 32 * 2**20
MAX_PARTITION_FRAMES = 65536
MAX_READS_PER_TASK = 16
TASK_SECONDS = 0.25

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


def partition_size(frame_nbytes: int, target_bytes: int, chunk: int = 1,
                   nframes: int | None = None, min_partitions: int = 1) -> int:
    """Frames per partition: about ``target_bytes`` of frames, aligned to ``chunk``.

    With ``nframes`` and ``min_partitions``, it is also small enough that the scan
    splits into at least that many partitions (to keep every worker busy).
    """
    if target_bytes <= 0:
        raise ValueError(f"partition target must be positive bytes, got {target_bytes}")
    n = max(1, target_bytes // max(1, frame_nbytes))
    balance = bool(nframes) and min_partitions > 1
    if balance and nframes:
        n = _even(nframes, min(n, max(1, math.ceil(nframes / min_partitions))), min_partitions)
    n = min(n, MAX_PARTITION_FRAMES)
    if n >= chunk:
        if balance:  # round up, not down, so the count does not grow past the multiple
            return math.ceil(n / chunk) * chunk
        return (n // chunk) * chunk
    return max(d for d in range(1, n + 1) if chunk % d == 0)


def task_size(frame_nbytes: int, target_bytes: int, chunk: int = 1,
              nframes: int | None = None, workers: int = 1,
              frame_seconds: float = 0.0, result_nbytes: int = 0) -> tuple[int, int]:
    """``(frames per task, frames per read)`` for a scan of ``nframes`` complete frames.

    A read is about ``target_bytes`` (see :func:`partition_size`) and bounds a
    worker's memory. A task -- one partition -- is several reads, so that a
    finished scan goes out as about two tasks per worker (at most
    ``MAX_READS_PER_TASK`` reads each): dask costs about 1-2 ms per task on a
    small machine, which would otherwise be a tenth of the work of cheap frames.
    A scan too small for that is cut into near-equal tasks of one read each.
    Without ``nframes`` (a live scan) a task is one read.

    Whatever the scan size, a task is capped (see :func:`task_cap`) by

    - time: with ``frame_seconds`` (the probe's measured cost of one frame), no
      more than about ``TASK_SECONDS`` of work, so that progress, checkpoints and
      the work lost with a worker or a killed driver stay fine-grained;
    - memory: with ``result_nbytes`` (the bytes one frame adds to the stacked
      results), no more than half of ``target_bytes`` of stacked results, so a
      worker's partials and the driver's commit stay within the read budget.

    Only a single frame may exceed a cap (one frame is the smallest task). Both
    sizes are a multiple of ``chunk`` or a divisor of it, and ``read <= task``.
    """
    cap = task_cap(target_bytes, frame_seconds, result_nbytes)
    read = _fit(partition_size(frame_nbytes, target_bytes, chunk), cap, chunk)
    if not nframes:
        return read, read
    if nframes <= 2 * workers * read:
        balanced = partition_size(frame_nbytes, target_bytes, chunk, nframes, 2 * workers)
        if balanced > cap:
            balanced = _even(nframes, _align(cap, chunk), 2 * workers, chunk) \
                if cap >= chunk else _align(cap, chunk)
        return balanced, balanced
    reads = math.ceil(math.ceil(nframes / read) / (2 * workers))
    reads = max(1, min(reads, MAX_READS_PER_TASK, cap // read))
    if read < chunk:  # read divides the chunk run: a task is one read, or whole chunk runs
        task = _even(nframes, reads * read, 2 * workers, chunk)
        task = task if task <= min(cap, MAX_READS_PER_TASK * read) else read
    else:
        task = _even(nframes, reads * read, 2 * workers, chunk)
    return task, min(read, task)


def task_cap(target_bytes: int, frame_seconds: float = 0.0, result_nbytes: int = 0) -> int:
    """The most frames one task may hold: about ``TASK_SECONDS`` of work and no more than
    half of ``target_bytes`` of stacked results (at least one frame)."""
    cap = MAX_PARTITION_FRAMES
    if frame_seconds > 0:
        cap = min(cap, int(TASK_SECONDS / frame_seconds * (1 + 1e-9)))
    if result_nbytes > 0:  # half: a worker may hold a finished task's results beside the next's
        cap = min(cap, target_bytes // (2 * result_nbytes))
    return max(1, cap)


def _align(n: int, chunk: int) -> int:
    """The largest multiple of ``chunk`` up to ``n``, or below one chunk run, the largest
    divisor of ``chunk`` up to ``n`` (so that no chunk is read by two tasks or reads)."""
    if n >= chunk:
        return (n // chunk) * chunk
    return max(d for d in range(1, n + 1) if chunk % d == 0)


def _fit(size: int, cap: int, chunk: int) -> int:
    """``size``, or the largest aligned size under ``cap`` when it is over."""
    return size if size <= cap else _align(cap, chunk)


def _even(nframes: int, size: int, multiple: int, chunk: int = 1) -> int:
    """A size near ``size`` that cuts ``nframes`` into near-equal pieces, as many as a
    multiple of ``multiple``, rounded up to whole ``chunk``s.

    7 pieces on 2 workers would leave one worker idle while the other does the last
    (the CPU-heavy case); 8 near-equal ones do not.
    """
    pieces = math.ceil(math.ceil(nframes / size) / multiple) * multiple
    return math.ceil(math.ceil(nframes / pieces) / chunk) * chunk


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


class Dispatcher:
    """Decides which completed frames go out as partitions, and when.

    A run that fills its block goes at once; a partial run goes once its oldest
    frame has waited ``latency`` seconds, or at once when ``flush`` is asked for.
    Every frame is handed out exactly once.
    """

    def __init__(self, nframes: int, size: int, latency: float = 0.25,
                 growing: bool = False) -> None:
        self.size = size
        self.latency = latency
        #: the scan may grow, so a block cut short by the current end is not full
        self.growing = growing
        self.dispatched = np.zeros(nframes, dtype=bool)
        self._since = np.full(nframes, np.inf)

    def mark(self, flat: np.ndarray) -> None:
        """Record frames as already handled (a resumed run's done frames)."""
        self.dispatched[flat] = True

    def grow(self, nframes: int) -> None:
        """Extend to a larger scan (a growing live file)."""
        extra = nframes - len(self.dispatched)
        if extra > 0:
            self.dispatched = np.r_[self.dispatched, np.zeros(extra, dtype=bool)]
            self._since = np.r_[self._since, np.full(extra, np.inf)]

    def due(self, complete: np.ndarray, now: float, flush: bool = False) -> list[Run]:
        """The runs to dispatch now, given the flat bool mask of complete frames."""
        new = complete & ~self.dispatched
        idx = np.flatnonzero(new)
        if idx.size == 0:
            return []
        fresh = idx[np.isinf(self._since[idx])]
        self._since[fresh] = now
        out: list[Run] = []
        n = len(self.dispatched)
        for a, b in cut(idx, self.size):
            if not flush:
                b0 = (a // self.size) * self.size
                b1 = b0 + self.size
                if b1 > n and self.growing:
                    covered = False
                else:
                    b1 = min(b1, n)
                    covered = b - a == b1 - b0 or bool(
                        (self.dispatched[b0:b1] | complete[b0:b1]).all()
                    )
                if not covered and self._since[a:b].min() + self.latency > now:
                    continue
            out.append((a, b))
            self.dispatched[a:b] = True
        return out
