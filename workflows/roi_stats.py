"""Sum, mean and maximum inside a rectangle of every frame.

Written for speed: batched (``@workflow.frames``), so each statistic is one
numpy reduction over the rectangle of a whole stack of frames (a view, not a
copy), with no Python per frame. Sums and means are float64, exact for
integer frames.
"""

import numpy as np

from framebag import Workflow

workflow = Workflow("roi_stats", data="entry/data/data", keys=["entry/keys/key_1"],
                    finished="entry/finished")


@workflow.frames
def roi_sum(frames, *, y0=0, y1=16, x0=0, x1=16):
    return frames[:, y0:y1, x0:x1].sum(axis=(1, 2), dtype=np.float64)


@workflow.frames
def roi_mean(frames, *, y0=0, y1=16, x0=0, x1=16):
    return frames[:, y0:y1, x0:x1].mean(axis=(1, 2), dtype=np.float64)


@workflow.frames
def roi_max(frames, *, y0=0, y1=16, x0=0, x1=16):
    return frames[:, y0:y1, x0:x1].max(axis=(1, 2))
