"""The quick start's example: the sum of every frame, a region of interest, the brightest pixels.

The simplest form, one frame per call, as the README shows it. For many cheap
functions over many frames, a batched ``@workflow.frames`` function saves the
Python call per frame (see ``roi_stats.py`` and ``centre_of_mass.py``).
"""

from framebag import Workflow

workflow = Workflow("frame_sum", data="entry/data/data", keys=["entry/keys/key_1"],
                    finished="entry/finished")


@workflow.frame
def total(frame):
    """Sum of the frame: one value per scan point."""
    return frame.sum()


@workflow.frame
def roi(frame, *, y0=0, y1=10):
    """Sum of rows y0..y1 of the frame."""
    return frame[y0:y1].sum()


@workflow.frame(fold="max")
def brightest(frame):
    """The pixel-wise maximum over the scan: one frame-shaped image."""
    return frame
