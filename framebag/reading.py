"""Reading one partition's run of frames as slabs, on a worker.

The run ``[start, stop)`` is decomposed into at most ``2 * scan_rank - 1``
rectangular hyperslabs, each read straight into its place in one buffer of
shape ``(n, *frame_shape)`` with ``read_direct``: one HDF5 read per slab, no
per-frame calls and no concatenating copy. The file is opened once per worker
process (see :mod:`framebag.hdf5`) and refreshed once per partition when live.

The buffer is recycled from one partition to the next. dask's nanny starts
workers with ``MALLOC_TRIM_THRESHOLD_`` set, which makes glibc hand every
large allocation straight back to the kernel, so a fresh buffer per partition
costs a page fault per 4 KiB (about as much as the read itself for cheap
frames). A buffer is reused only when nothing else refers to it any more: a
frame, a view or a result that a function kept keeps its buffer out of reuse.
At most ``_SPARE`` buffers are kept per process.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

from . import hdf5
from .errors import FramebagError
from .partitions import blocks, selection_shape

__all__ = ["read_run"]

_SPARE = 2
_lock = threading.Lock()
_spare: list[np.ndarray] = []  # flat uint8 arrays, each the owner of its memory


def _refs(i: int) -> int:
    return sys.getrefcount(_spare[i])


# the count _refs() gives for a buffer nothing else refers to, on this interpreter
_spare.append(np.empty(1, dtype=np.uint8))
_UNUSED = _refs(0)
_spare.clear()


def _buffer(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised array of ``shape``, in a recycled buffer when one is free."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    with _lock:
        free = [i for i in range(len(_spare)) if _refs(i) <= _UNUSED]
        fits = [i for i in free if _spare[i].nbytes >= nbytes]
        if fits:
            base = _spare[fits[0]]
        else:
            base = np.empty(max(nbytes, 1), dtype=np.uint8)
            if len(_spare) < _SPARE:
                _spare.append(base)
            elif free:
                _spare[free[0]] = base
        return base[:nbytes].view(dtype).reshape(shape)


def read_run(path: str, name: str, start: int, stop: int, scan_shape: tuple[int, ...],
             frame_shape: tuple[int, ...], dtype: np.dtype, refresh: bool = False) -> np.ndarray:
    """The frames ``start .. stop`` (flat scan indices) as one ``(n, *frame_shape)`` array."""
    ds = hdf5.dataset(path, name)
    if refresh:
        ds.refresh()
    buf = _buffer((stop - start, *frame_shape), dtype)
    frame_sel = tuple(slice(None) for _ in frame_shape)
    offset = 0
    for sel, count in blocks(start, stop, scan_shape):
        if sel[0].stop > ds.shape[0]:
            raise FramebagError(
                f"frames up to scan index {sel[0].stop - 1} are marked complete but data "
                f"dataset {name!r} in {path!r} holds only {ds.shape[0]} along its first dim"
            )
        view = buf[offset : offset + count].reshape(selection_shape(sel) + frame_shape)
        try:
            ds.read_direct(view, source_sel=sel + frame_sel)
        except OSError:
            if not _load_filters():
                raise
            ds.read_direct(view, source_sel=sel + frame_sel)
        offset += count
    return buf


_filters_loaded = False


def _load_filters() -> bool:
    """Register hdf5plugin's filters (blosc, lz4, bitshuffle, zstd ...) once, if installed.

    Imported only when a read fails, so files that need no plugin never pay for
    the import. True if the read is worth trying again.
    """
    global _filters_loaded
    if _filters_loaded:
        return False
    _filters_loaded = True
    try:
        import hdf5plugin  # noqa: F401
    except ImportError:
        return False
    return True
