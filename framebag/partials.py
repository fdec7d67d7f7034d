"""What a task sends back to the driver: :class:`Partial`.

A module of its own because both sides use it: :mod:`framebag.workflow` builds
partials on the workers and :mod:`framebag.engine` combines them on the driver,
and neither should have to import the other for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Partial", "Kinds"]

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
