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

A read HDF5 refuses (a chunk failing its fletcher32 checksum or its filter, a
filter plugin that is not installed) is a :class:`ReadError` naming the
dataset and the frames; HDF5 says only that a read failed, so the frames are
found by reading the failed slab again a frame at a time, on that error path
only. It is never retried and never leaves zeros behind.
"""

from __future__ import annotations

import sys
import threading

import h5py
import numpy as np

from . import hdf5
from .errors import FramebagError
from .partitions import blocks, scan_index, selection_shape

__all__ = ["read_run", "ReadError"]

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


class ReadError(FramebagError):
    """Frames that HDF5 cannot read: a damaged chunk, a missing filter plugin, missing data.

    The same read fails the same way every time, so it is never retried: the
    run stops with this one sentence, naming the dataset and the frames.
    """


def read_run(path: str, name: str, start: int, stop: int, scan_shape: tuple[int, ...],
             frame_shape: tuple[int, ...], dtype: np.dtype, refresh: bool = False) -> np.ndarray:
    """The frames ``start .. stop`` (flat scan indices) as one ``(n, *frame_shape)`` array.

    Raises :class:`ReadError` when HDF5 cannot read them; a failed read never
    leaves zeros in their place.
    """
    # another run on this input that ends meanwhile must not close the handles mid-read
    with hdf5.holding(path):
        return _read(path, name, start, stop, scan_shape, frame_shape, dtype, refresh)


def _read(path: str, name: str, start: int, stop: int, scan_shape: tuple[int, ...],
          frame_shape: tuple[int, ...], dtype: np.dtype, refresh: bool) -> np.ndarray:
    ds = hdf5.dataset(path, name)
    if refresh:
        ds.refresh()
    buf = _buffer((stop - start, *frame_shape), dtype)
    frame_sel = tuple(slice(None) for _ in frame_shape)
    offset = 0
    for sel, count in blocks(start, stop, scan_shape):
        if sel[0].stop > ds.shape[0]:
            raise ReadError(
                f"frames up to scan index {scan_index(start + offset + count - 1, scan_shape)} "
                f"are marked complete but data dataset {name!r} in {path!r} holds only "
                f"{ds.shape[0]} along its first dim"
            )
        view = buf[offset : offset + count].reshape(selection_shape(sel) + frame_shape)
        try:
            ds.read_direct(view, source_sel=sel + frame_sel)
        except OSError as exc:
            if not _load_filters():
                raise _read_error(ds, path, start + offset, count, scan_shape, exc) from exc
            try:
                ds.read_direct(view, source_sel=sel + frame_sel)
            except OSError as again:
                raise _read_error(ds, path, start + offset, count, scan_shape,
                                  again) from again
        offset += count
    return buf


def _read_error(ds: h5py.Dataset, path: str, start: int, count: int,
                scan_shape: tuple[int, ...], exc: OSError) -> ReadError:
    """Why the ``count`` frames from flat ``start`` cannot be read, and which ones.

    A filter that is not available fails every chunk, so the whole slab is named.
    Otherwise the slab is read again a frame at a time (only on this error path)
    to name the frames whose chunks fail: a damaged chunk fails its checksum or
    its filter.
    """
    where = f"data dataset {ds.name.lstrip('/')!r} in {path!r}"
    missing = [f for f in _filters(ds) if not h5py.h5z.filter_avail(f[0])]
    if missing:
        names = ", ".join(f"{code} ({label})" if label else str(code) for code, label in missing)
        return ReadError(
            f"cannot read {_frames(np.arange(start, start + count), scan_shape)} of {where}: "
            f"it needs HDF5 filter {names}, which is not available here (pip install "
            "hdf5plugin, or set HDF5_PLUGIN_PATH to the directory of the filter plugin)"
        )
    one = np.empty((1, *ds.shape[len(scan_shape):]), dtype=ds.dtype)
    frame_sel = tuple(slice(None) for _ in one.shape[1:])
    bad = []
    for flat in range(start, start + count):
        sel = tuple(slice(int(i), int(i) + 1) for i in np.unravel_index(flat, scan_shape))
        try:
            ds.read_direct(one.reshape((1,) * len(scan_shape) + one.shape[1:]),
                           source_sel=sel + frame_sel)
        except OSError:
            bad.append(flat)
    checked = [code for code, _ in _filters(ds)]
    cause = ("the data chunk fails its fletcher32 checksum or its filter: the file is damaged"
             if h5py.h5z.FILTER_FLETCHER32 in checked else "HDF5 cannot read the data chunk")
    frames = _frames(np.asarray(bad or range(start, start + count)), scan_shape)
    return ReadError(f"cannot read {frames} of {where}: {cause} ({hdf5.hdf5_reason(exc)})")


def _filters(ds: h5py.Dataset) -> list[tuple[int, str]]:
    """The ``(id, name)`` of every filter in the dataset's pipeline."""
    plist = ds.id.get_create_plist()
    out = []
    for i in range(plist.get_nfilters()):
        code, _, _, label = plist.get_filter(i)
        text = label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)
        out.append((int(code), text.split(";")[0].strip()))
    return out


def _frames(flat: np.ndarray, scan_shape: tuple[int, ...]) -> str:
    """Frames at flat indices ``flat`` (sorted), named by scan index for a message."""
    if flat.size == 1:
        return f"frame {scan_index(flat[0], scan_shape)}"
    first, last = scan_index(flat[0], scan_shape), scan_index(flat[-1], scan_shape)
    if flat[-1] - flat[0] + 1 == flat.size:
        return f"frames {first} to {last}"
    return f"{flat.size} frames from {first} to {last}"


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
