"""Task sizing and live dispatch: how many frames a task gets, and when runs go out.

:func:`task_size` picks the block size (frames per task) from the read budget, the
data's chunks, the number of workers and the probe's timing of a frame;
:class:`Dispatcher` decides, poll by poll, which complete runs of a live scan are
due (a full block at once, a partial one after ``latency``). The geometry they
work on is :mod:`framebag.partitions`.
"""

from __future__ import annotations

import math

import numpy as np

from .partitions import Run, cut

__all__ = ["DEFAULT_PARTITION_BYTES", "TASK_SECONDS", "partition_size", "task_size",
           "task_cap", "reusable_grid", "Dispatcher"]

#: 32 MiB: on a 2-core VM, 16 MiB partitions of cheap 32 KiB frames spent a third of the
#: workers' time in per-task overhead; 64 MiB was no faster and costs more worker memory
DEFAULT_PARTITION_BYTES = 32 * 2**20
MAX_PARTITION_FRAMES = 65536
MAX_READS_PER_TASK = 16
#: a finished scan is cut into at least this many reads (fewer only for fewer frames or
#: whole chunks): tasks of whole reads then spread a small scan over up to 16 workers
READS_PER_SCAN = 16
TASK_SECONDS = 0.25


def partition_size(frame_nbytes: int, target_bytes: int, chunk: int = 1) -> int:
    """Frames per read: about ``target_bytes`` of frames (at most ``MAX_PARTITION_FRAMES``),
    aligned to ``chunk`` (see :func:`_align`)."""
    if target_bytes <= 0:
        raise ValueError(f"partition target must be positive bytes, got {target_bytes}")
    return _align(min(max(1, target_bytes // max(1, frame_nbytes)), MAX_PARTITION_FRAMES),
                  chunk)


def task_size(frame_nbytes: int, target_bytes: int, chunk: int = 1,
              nframes: int | None = None, workers: int = 1,
              frame_seconds: float = 0.0, result_nbytes: int = 0,
              grid: int | None = None) -> tuple[int, int]:
    """``(frames per task, frames per read)`` for a scan of ``nframes`` complete frames.

    The read is the unit of a partial: partials lie on the grid of multiples of the
    read and are combined in scan order, so the read never depends on ``workers``,
    and a task is a whole number of reads (bar the last, cut by the scan's end). Two
    runs of one scan on any numbers of workers thus fold the same partials in the
    same order, and a float fold (``mean``, ``var``, ``std``) gives the same bits.

    A read is about ``target_bytes`` (see :func:`partition_size`) and bounds a
    worker's memory; a finished scan is at least ``READS_PER_SCAN`` reads, so that
    even a small one can be spread over workers, unless no divisor of the chunk
    comes within half of that share: then it is whole chunks (fewer reads), since
    every read decompresses each chunk it touches. It is smaller still where a cap
    binds (see :func:`task_cap`):

    - memory: with ``result_nbytes`` (the bytes one frame adds to the stacked
      results), no more than half of ``target_bytes`` of stacked results, so a
      worker's partials and the driver's commit stay within the read budget;
    - time: with ``frame_seconds`` (the probe's measured cost of one frame), no
      more than about ``TASK_SECONDS`` of work, so that progress, checkpoints and
      the work lost with a worker or a killed driver stay fine-grained. The read is
      halved until it fits, so only a timing that crosses a power of two moves
      the grid.

    A task is several reads (:func:`_reads_per_task`): dask costs about 1-2 ms per
    task on a small machine, which would otherwise be a tenth of the work of cheap
    frames. Without ``nframes`` (a live scan) a task is one read. Only a single frame
    may exceed a cap (one frame is the smallest task). Both sizes are a multiple of
    ``chunk`` or a divisor of it.

    ``grid``: a resumed output's read, reused where it fits (:func:`reusable_grid`).
    """
    cap = task_cap(target_bytes, frame_seconds, result_nbytes)
    read = partition_size(frame_nbytes, target_bytes, chunk)
    mem = task_cap(target_bytes, 0.0, result_nbytes)
    if grid is not None and reusable_grid(grid, chunk, _fit(read, mem, chunk)):
        read = grid
    else:
        read = _new_read(read, chunk, nframes, mem, cap)
    if not nframes:
        return read, read
    return _reads_per_task(math.ceil(nframes / read), read, chunk, workers, cap) * read, read


def _new_read(read: int, chunk: int, nframes: int | None, mem: int, cap: int) -> int:
    """The read of a new run (see :func:`task_size`): ``read`` (the budget's), at most a
    ``READS_PER_SCAN`` share of ``nframes``, within the ``mem`` and time ``cap``."""
    if nframes:  # a share of READS_PER_SCAN, rounded up to whole chunk runs
        share = math.ceil(nframes / READS_PER_SCAN)
        part = math.ceil(share / chunk) * chunk if share >= chunk else _align(share, chunk)
        if 2 * part <= share:
            # no divisor of the chunk near the share (a chunk of 101 frames has only 1):
            # whole chunks, not reads of one frame that each decompress the chunk again
            part = chunk
        read = min(read, part)
    read = _fit(read, mem, chunk)
    while read > 1 and read > cap:
        read = _align(read // 2, chunk)
    return read


def reusable_grid(grid: object, chunk: int, most: int) -> bool:
    """Whether ``grid`` (read back from an output: any value a file may hold) is a read
    to reuse: a whole number of frames, at most ``most``, aligned to ``chunk``.

    A resumed run reads on the grid of the run that made its output, whatever the
    probe's timing says now (where the time cap binds it moves the read): the partials
    still to come then lie on the grid of those already folded, and a float fold gives
    the bits of a run that was never interrupted.
    """
    return isinstance(grid, int) and not isinstance(grid, bool) and 1 <= grid <= most \
        and (grid % chunk == 0 or chunk % grid == 0)


def _reads_per_task(reads: int, read: int, chunk: int, workers: int, cap: int) -> int:
    """How many of a scan's ``reads`` a task takes: at most half a worker's share (and
    ``MAX_READS_PER_TASK``, and ``cap`` frames), as many as let the busiest worker
    finish soonest, ties going to fewer, larger tasks.

    Half a share: dask hands each worker two tasks at once, and its work stealing moves
    the second off a worker that runs slow. One task per worker saved 8% of a 20,000-frame
    run on two equal workers (2-3 ms of driver CPU per task), but with one worker slower
    the run took 2.9-3.2 s against 1.6-2.8 s (2-core VM, interleaved)."""
    most = max(1, min(math.ceil(reads / (2 * workers)), MAX_READS_PER_TASK, cap // read))
    if read < chunk:  # reads divide a chunk run: a task is a divisor of it or whole runs
        sizes = {_align(k, chunk // read) for k in range(1, most + 1)}
    else:
        sizes = set(range(1, most + 1))
    return min(sizes, key=lambda k: (_makespan(reads, k, workers), -k))


def _makespan(reads: int, per_task: int, workers: int) -> int:
    """Reads done by the busiest worker when ``reads`` go out ``per_task`` to a task, the
    tasks taken in turn by ``workers`` (the last task holds what is left)."""
    tasks = math.ceil(reads / per_task)
    rounds = math.ceil(tasks / workers)
    last = reads - (tasks - 1) * per_task
    alone = tasks - (rounds - 1) * workers == 1  # the last round is the last task alone
    return (rounds - 1) * per_task + (last if alone else per_task)


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


class Dispatcher:
    """Decides which completed frames go out as tasks, and when.

    A run that fills its block goes at once; a partial run goes once its oldest
    frame has waited ``latency`` seconds (``RunOptions.latency``), or at once when
    ``flush`` is asked for (the engine asks while a worker has no task). Every
    frame is handed out exactly once.
    """

    def __init__(self, nframes: int, size: int, latency: float,
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
