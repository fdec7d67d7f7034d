"""What a task sends back to the driver: :class:`Partial`.

A module of its own because both sides use it: :mod:`framebag.workflow` builds
partials on the workers and :mod:`framebag.engine` combines them on the driver,
and neither should have to import the other for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Partial", "Kinds", "runs_of"]

#: a function's values: ``name -> (dtype, value shape, flat index of the frame that showed it)``
Kinds = dict[str, tuple[np.dtype, tuple[int, ...], int]]


@dataclass
class Partial:
    """What a task sends back for one read: its frames, those done, one entry per function.

    ``stacks`` holds, for each ``stack`` function, the values of the read's frames
    (frames not done hold zeros); ``accs`` holds the accumulator of every other
    function; ``ragged`` holds, for each ``ragged`` function, ``(counts, rows)``: the
rows each frame gave (0 where not done) and their rows, concatenated in frame order
(None if there are none); ``errors`` lists ``(flat_index, function, message)`` of skipped frames.
    """

    start: int
    stop: int
    done: np.ndarray
    stacks: dict[str, np.ndarray] = field(default_factory=dict)
    accs: dict[str, Any] = field(default_factory=dict)
    errors: list[tuple[int, str, str]] = field(default_factory=list)
    failure: str = ""
    #: every function's dtype and value shape, as its first value in this partial showed
    kinds: Kinds = field(default_factory=dict)
    #: per ``ragged`` function: ``(counts, rows)``, see above
    ragged: dict[str, tuple[np.ndarray, np.ndarray | None]] = field(default_factory=dict)

    def done_runs(self) -> list[tuple[int, int]]:
        """The flat runs ``(start, stop)`` of the frames done: the only frames whose values
        the driver writes (a partial merged from several runs of a read spans frames of
        other tasks, and a skipped frame keeps the output's fill value)."""
        return runs_of(self.start, self.done)


def runs_of(start: int, mask: np.ndarray) -> list[tuple[int, int]]:
    """The flat runs ``(a, b)`` of the frames set in ``mask``, whose first is ``start``."""
    if mask.all():
        return [(start, start + len(mask))] if len(mask) else []
    edges = np.flatnonzero(np.diff(np.r_[0, mask.view(np.int8), 0]))
    return [(start + int(a), start + int(b)) for a, b in zip(edges[::2], edges[1::2])]
