"""Azimuthal average about a centre: a 1-D profile per frame (radius in pixels).

Written for speed: batched (``@workflow.frames``), so the ring of every pixel,
which depends only on the frame shape and the parameters, is computed once per
stack of frames rather than once per frame; each frame is then one
``np.bincount``, which takes the integer frame as weights directly (no copy
converted by hand). The sums are float64, exact for integer frames.
"""

import numpy as np

from framebag import Workflow

workflow = Workflow("radial_profile", data="entry/data/data", keys=["entry/keys/key_1"],
                    finished="entry/finished")


def _rings(shape, cy, cx, nbins):
    """The ring index of every pixel (flat), and the number of pixels in every ring."""
    y, x = np.indices(shape)
    r = np.hypot(y - cy, x - cx)
    rmax = r.max() if r.size else 1.0
    idx = np.minimum((r / rmax * nbins).astype(np.intp), nbins - 1).ravel()
    return idx, np.maximum(np.bincount(idx, minlength=nbins), 1)


@workflow.frames
def profile(frames, *, cy=-1.0, cx=-1.0, nbins=32):
    """Mean intensity in ``nbins`` rings about (cy, cx) of every frame; -1: the frame centre."""
    n, fy, fx = frames.shape
    cy = (fy - 1) / 2 if cy < 0 else cy
    cx = (fx - 1) / 2 if cx < 0 else cx
    idx, counts = _rings((fy, fx), cy, cx, nbins)
    sums = np.empty((n, nbins))
    for i, frame in enumerate(frames):
        sums[i] = np.bincount(idx, weights=frame.ravel(), minlength=nbins)
    return sums / counts
