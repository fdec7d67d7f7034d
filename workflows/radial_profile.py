"""Azimuthal average about a centre: a 1-D profile per frame (radius in pixels)."""

import numpy as np

from framebag import Workflow

workflow = Workflow("radial_profile", data="entry/data/data", keys=["entry/keys/key_1"],
                    finished="entry/finished")


def _bins(shape, cy, cx, nbins):
    y, x = np.indices(shape)
    r = np.hypot(y - cy, x - cx)
    rmax = r.max() if r.size else 1.0
    return np.minimum((r / rmax * nbins).astype(np.intp), nbins - 1).ravel()


@workflow.frame
def profile(frame, *, cy=-1.0, cx=-1.0, nbins=32):
    """Mean intensity in ``nbins`` rings about (cy, cx); -1 means the frame centre."""
    cy = (frame.shape[0] - 1) / 2 if cy < 0 else cy
    cx = (frame.shape[1] - 1) / 2 if cx < 0 else cx
    idx = _bins(frame.shape, cy, cx, nbins)
    sums = np.bincount(idx, weights=frame.ravel().astype(np.float64), minlength=nbins)
    counts = np.bincount(idx, minlength=nbins)
    return sums / np.maximum(counts, 1)
