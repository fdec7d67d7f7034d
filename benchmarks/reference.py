"""The reference: what plain h5py + numpy do on the same file, written by hand.

``Pool`` is a warm pool of worker processes (started, file opened, before any
timing) that reads the scan in chunk-aligned slabs with ``read_direct`` into one
reused buffer per process and applies a vectorised numpy job to each slab.
Files are opened with the chunk cache off (``rdcc_nbytes=0``), as framebag
opens them: with chunk-aligned slabs every chunk is read once, and HDF5 then
reads it straight into the buffer.
That is the bound framebag is measured against: no framework, no per-frame
Python, no result file. ``serial`` is the plain loop on one core.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import h5py
import numpy as np

_files: dict[str, h5py.Dataset] = {}
_buffers: dict[tuple, np.ndarray] = {}


def _dataset(path: str, name: str) -> h5py.Dataset:
    ds = _files.get(path)
    if ds is None:
        try:
            import hdf5plugin  # noqa: F401 - registers blosc/lz4 for compressed layouts
        except ImportError:
            pass
        # no chunk cache, as framebag opens its input: chunk-aligned slabs read each chunk once
        ds = _files[path] = h5py.File(path, "r", rdcc_nbytes=0)[name]
    return ds


def read_slab(path: str, name: str, start: int, stop: int) -> np.ndarray:
    """Frames ``start .. stop`` read with one ``read_direct`` into this process's buffer."""
    ds = _dataset(path, name)
    shape = (stop - start, *ds.shape[1:])
    buf = _buffers.get((shape, ds.dtype.str))
    if buf is None:
        _buffers.clear()
        buf = _buffers[(shape, ds.dtype.str)] = np.empty(shape, dtype=ds.dtype)
    ds.read_direct(buf, source_sel=np.s_[start:stop])
    return buf


def job_sum(frames: np.ndarray) -> np.ndarray:
    """Sum of every frame, vectorised."""
    return frames.sum(axis=(1, 2))


def job_read(frames: np.ndarray) -> int:
    """Nothing: the read alone."""
    return len(frames)


def fft_power(frame: np.ndarray) -> np.ndarray:
    """The CPU-heavy per-frame job: the magnitude of the 2-d FFT."""
    return np.abs(np.fft.fft2(frame))


def job_fft(frames: np.ndarray) -> np.ndarray:
    """The CPU-heavy job over a slab: the FFT magnitudes of its frames, summed."""
    acc = None
    for frame in frames:
        p = fft_power(frame)
        acc = p if acc is None else np.add(acc, p, out=acc)
    return acc


def _task(args: tuple) -> object:
    path, name, start, stop, job = args
    return job(read_slab(path, name, start, stop))


def slabs(nframes: int, chunk: int, frame_nbytes: int,
          target: int = 8 * 2**20) -> list[tuple[int, int]]:
    """Chunk-aligned runs of about ``target`` bytes covering ``0 .. nframes``."""
    n = max(chunk, (max(1, target // frame_nbytes) // chunk) * chunk)
    return [(a, min(a + n, nframes)) for a in range(0, nframes, n)]


class Pool:
    """A warm pool of ``n`` processes running a vectorised job over slabs of one file.

    The processes start without the ``MALLOC_*`` variables that a dask nanny
    leaves in this process's environment, and set the same malloc thresholds as
    framebag's workers (:func:`framebag.tuning.tune_process`): neither side of a
    ratio runs with a handicap the other does not have.
    """

    def __init__(self, n: int = 2) -> None:
        self.n = n
        saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("MALLOC_")}
        try:
            self.ex = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"),
                                          initializer=_tune)
            list(self.ex.map(_sleep, [0.2] * n))  # start every process now, not in a timing
        finally:
            os.environ.update(saved)

    def warm(self, path: str, name: str) -> None:
        """Open the file in every process (and read it once) before timing."""
        list(self.ex.map(_task, [(path, name, 0, 1, job_read)] * (4 * self.n)))

    def run(self, path: str, name: str, runs: list[tuple[int, int]],
            job: Callable[[np.ndarray], object]) -> list[object]:
        return list(self.ex.map(_task, [(path, name, a, b, job) for a, b in runs]))

    def close(self) -> None:
        self.ex.shutdown()


def _tune() -> None:
    from framebag.tuning import tune_process

    tune_process()


def _sleep(t: float) -> None:
    import time

    time.sleep(t)


def serial_fft(path: str, name: str, runs: list[tuple[int, int]]) -> np.ndarray:
    """The plain serial loop of the CPU-heavy case: slab reads, one FFT per frame, summed."""
    acc = None
    for a, b in runs:
        p = job_fft(read_slab(path, name, a, b))
        acc = p if acc is None else np.add(acc, p, out=acc)
    return acc
