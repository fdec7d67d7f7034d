"""Sum and mean of the pixels inside a mask, the mask loaded once per worker.

The per-worker setup's example: ``mask`` (a ``@workflow.setup``) loads the mask
from a ``.npy`` file, or from the dataset ``mask_dataset`` of an HDF5 file, once
in each worker process; every function with a parameter named ``mask`` gets it::

    framebag run framebag.workflows.masked_sum scan.h5 --set mask_file=/data/mask.h5

Non-zero mask pixels count. Batched: one ``einsum`` of a whole stack of frames
with the mask, with no copy of the frames. Keep the mask in a file
of its own, not in the scan being processed. The mask file's sha256 is recorded
in the output, and ``--resume`` refuses to go on with a changed mask.
"""

import h5py
import numpy as np

from framebag import Workflow

workflow = Workflow("masked_sum", data="entry/data/data", keys=["entry/keys/key_1"],
                    finished="entry/finished")


@workflow.setup
def mask(mask_file="", mask_dataset="mask"):
    """The mask as a boolean frame: a .npy file, or dataset mask_dataset of an HDF5 file."""
    if not mask_file:
        raise ValueError("no mask file given: --set mask_file=PATH (a .npy file, or an HDF5 "
                         "file with the mask in dataset mask_dataset)")
    if str(mask_file).endswith(".npy"):
        values = np.load(mask_file)
    else:
        with h5py.File(mask_file, "r") as f:
            values = f[mask_dataset][()]
    return np.asarray(values) != 0


def _check(frames, mask):
    if mask.shape != frames.shape[1:]:
        raise ValueError(f"the mask has shape {mask.shape}, the frames {frames.shape[1:]}")


@workflow.frames
def masked_sum(frames, mask):
    """Sum of the pixels inside the mask, per frame (float64, exact for integer frames)."""
    _check(frames, mask)
    return np.einsum("nij,ij->n", frames, mask, dtype=np.float64)


@workflow.frames
def masked_mean(frames, mask):
    """Mean of the pixels inside the mask, per frame (NaN for an empty mask)."""
    _check(frames, mask)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.einsum("nij,ij->n", frames, mask, dtype=np.float64) / np.count_nonzero(mask)
