"""Centre of mass (y, x) of every frame, in pixels; NaN for an all-zero frame."""

import numpy as np

from framebag import Workflow

workflow = Workflow("centre_of_mass", data="entry/data/data", keys=["entry/keys/key_1"],
                    finished="entry/finished")


@workflow.frames
def com(frames):
    """Batched: a stack (n, fy, fx) in, (n, 2) centres out."""
    f = frames.astype(np.float64, copy=False)
    total = f.sum(axis=(1, 2))
    ys = np.arange(f.shape[1], dtype=np.float64)
    xs = np.arange(f.shape[2], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = (f.sum(axis=2) @ ys) / total
        cx = (f.sum(axis=1) @ xs) / total
    return np.stack([cy, cx], axis=1)
