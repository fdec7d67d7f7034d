"""Partials released in scan order, whatever order the tasks finish in.

Float folds (``mean``, ``var``, ``std``, a float ``sum``) are not associative to
the last bit, so combining partials as they arrive would make a result's bits
depend on which worker finished first. The engine hands every arriving partial
to :class:`ScanOrder` and combines only what it releases: the partials before
the first task still in flight, in scan order. With one partial per read, cut on
the fixed grid of reads (see :func:`framebag.tasks.process_partition`), the fold
is the same sequence of ``combine`` calls whichever worker finishes first, and on
any number of workers (:func:`framebag.dispatch.task_size` keeps the read the same
for every number of workers, and a task whole reads).

In a live run a task dispatched late may hold frames before ones already
combined (frames complete out of order); those are combined when they arrive,
after their successors: "before" means before the first task still in flight.

A heap keyed by the first frame, written here because nothing in dask or the
standard library releases items against a moving floor.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from .partials import Partial

__all__ = ["ScanOrder", "first_frame"]


def first_frame(inflight: Iterable[list[tuple[int, int]]]) -> float:
    """The first frame of the tasks still in flight (``inf`` when none is)."""
    return min((group[0][0] for group in inflight), default=math.inf)


class ScanOrder:
    """Holds partials until no task in flight covers frames before them."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Partial]] = []
        self._tie = itertools.count()  # equal starts (a retried slab) keep arrival order

    def add(self, partials: Iterable[Partial]) -> None:
        """Take partials as they arrive, in any order."""
        for p in partials:
            heapq.heappush(self._heap, (p.start, next(self._tie), p))

    def release(self, floor: float = math.inf) -> list[Partial]:
        """The held partials that start before ``floor``, in scan order; they leave the buffer.

        ``floor`` is the first frame of the tasks still in flight
        (:func:`first_frame`); the default releases everything.
        """
        out = []
        while self._heap and self._heap[0][0] < floor:
            out.append(heapq.heappop(self._heap)[2])
        return out

    def __len__(self) -> int:
        return len(self._heap)

    def __repr__(self) -> str:
        return f"ScanOrder({len(self)} held)"


def order_matters(accs: Iterable[Any]) -> bool:
    """Whether folding these accumulators depends on the order: any float or complex leaf.

    Integer sums, min, max and histograms give the same bits in any order, and
    stacks are written where they belong; only floating-point sums (mean, var,
    std, a sum of floats) need the partials in scan order. Partials of a
    workflow without any are combined as they arrive, so an early task that is
    slow never holds back the commits of the rest.
    """
    def inexact(v: Any) -> bool:
        if isinstance(v, dict):
            return any(inexact(x) for x in v.values())
        if isinstance(v, (tuple, list)):
            return any(inexact(x) for x in v)
        return v is not None and np.asarray(v).dtype.kind in "fc"
    return any(inexact(acc) for acc in accs)
