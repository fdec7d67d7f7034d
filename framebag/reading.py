"""Reading one partition's run of frames as slabs, on a worker.

The run ``[start, stop)`` is decomposed into at most ``2 * scan_rank - 1``
rectangular hyperslabs, each read straight into its place in one buffer of
shape ``(n, *frame_shape)`` with ``read_direct``: one HDF5 read per slab, no
per-frame calls and no concatenating copy. The file is opened once per worker
process (see :mod:`framebag.hdf5`) and refreshed once per partition when live.
"""

from __future__ import annotations

import numpy as np

from . import hdf5
from .errors import FramebagError
from .partitions import blocks, selection_shape

__all__ = ["read_run"]


def read_run(path: str, name: str, start: int, stop: int, scan_shape: tuple[int, ...],
             frame_shape: tuple[int, ...], dtype: np.dtype, refresh: bool = False) -> np.ndarray:
    """The frames ``start .. stop`` (flat scan indices) as one ``(n, *frame_shape)`` array."""
    ds = hdf5.dataset(path, name)
    if refresh:
        ds.refresh()
    buf = np.empty((stop - start, *frame_shape), dtype=dtype)
    frame_sel = tuple(slice(None) for _ in frame_shape)
    offset = 0
    for sel, count in blocks(start, stop, scan_shape):
        if sel[0].stop > ds.shape[0]:
            raise FramebagError(
                f"frames up to scan index {sel[0].stop - 1} are marked complete but data "
                f"dataset {name!r} in {path!r} holds only {ds.shape[0]} along its first dim"
            )
        view = buf[offset : offset + count].reshape(selection_shape(sel) + frame_shape)
        ds.read_direct(view, source_sel=sel + frame_sel)
        offset += count
    return buf
