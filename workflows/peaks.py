"""Peak finding: the local maxima of every frame above a threshold, as a ragged result.

A peak is a pixel above ``threshold`` that is the largest value (ties allowed)
within ``min_distance`` pixels of it along y and x (a square of side
``2 * min_distance + 1``, cut by the frame's edges). Each frame gives a
``(k, 3)`` float32 table of rows ``(y, x, intensity)`` in C order of the
pixels; ``k`` varies from frame to frame and may be 0.

The maximum over the square is separable: a sliding maximum along y, then along
x (``numpy.lib.stride_tricks.sliding_window_view``, no Python per pixel), so
the cost per frame is about ``2 * (2 * min_distance + 1)`` passes over the frame.

The output holds the rows of every frame in one table, with the scan-shaped
``count`` and ``offset`` beside it (see the README's output layout)::

    framebag run workflows/peaks.py scan.h5 --set threshold=800 --set min_distance=3
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from framebag import Workflow

workflow = Workflow("peaks", data="entry/data/data", keys=["entry/keys/key_1"],
                    finished="entry/finished")


def local_max(frame: np.ndarray, min_distance: int) -> np.ndarray:
    """The maximum of ``frame`` over the square of half-side ``min_distance`` at each pixel."""
    d = int(min_distance)
    if d <= 0:
        return frame
    low = -np.inf if frame.dtype.kind in "fc" else np.iinfo(frame.dtype).min
    padded = np.pad(frame, d, constant_values=low)
    along_y = sliding_window_view(padded, 2 * d + 1, axis=0).max(axis=-1)
    return sliding_window_view(along_y, 2 * d + 1, axis=1).max(axis=-1)


@workflow.frame(fold="ragged")
def peaks(frame, threshold=500.0, min_distance=2):
    """The rows ``(y, x, intensity)`` of the frame's peaks, a ``(k, 3)`` float32 array."""
    if min_distance < 0:
        raise ValueError(f"min_distance must be >= 0, not {min_distance}")
    y, x = np.nonzero((frame > threshold) & (frame == local_max(frame, min_distance)))
    return np.stack([y, x, frame[y, x]], axis=1).astype(np.float32)
