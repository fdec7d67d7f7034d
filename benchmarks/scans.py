"""Benchmark input files: finished scans written once and reused while their spec matches.

A file's name encodes everything that shapes it, so a second run finds the
file of the first and does not rewrite gigabytes. Frames are written block by
block, so even the largest file never needs its size in memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

DATA = "entry/data/data"
KEY = "entry/keys/key_1"


@dataclass(frozen=True)
class ScanSpec:
    """A 1-d scan of ``nframes`` frames; ``chunk`` frames per HDF5 chunk."""

    nframes: int
    frame_shape: tuple[int, int] = (128, 128)
    dtype: str = "uint16"
    chunk: int = 1
    compression: str = "none"  # none | gzip | lz4

    @property
    def frame_nbytes(self) -> int:
        return int(np.prod(self.frame_shape)) * np.dtype(self.dtype).itemsize

    @property
    def nbytes(self) -> int:
        return self.nframes * self.frame_nbytes

    def filename(self) -> str:
        fy, fx = self.frame_shape
        return f"scan_{self.nframes}x{fy}x{fx}_{self.dtype}_c{self.chunk}_{self.compression}.h5"


def _filter(compression: str) -> dict:
    if compression == "none":
        return {}
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 1}
    if compression == "lz4":
        import hdf5plugin

        return dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE))
    raise ValueError(f"unknown compression {compression!r}")


def make(directory: Path, spec: ScanSpec) -> Path:
    """The file for ``spec`` in ``directory``, written if it is not there yet."""
    path = Path(directory) / spec.filename()
    if path.exists():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    rng = np.random.default_rng(0)
    # Poisson-like counts: realistic for gzip/lz4, unlike uniform noise or zeros
    block = max(spec.chunk, (64 * 2**20 // spec.frame_nbytes) // spec.chunk * spec.chunk)
    with h5py.File(tmp, "w", libver="latest") as f:
        ds = f.create_dataset(DATA, shape=(spec.nframes, *spec.frame_shape), dtype=spec.dtype,
                              chunks=(spec.chunk, *spec.frame_shape), **_filter(spec.compression))
        pattern = rng.poisson(20, size=(block, *spec.frame_shape)).astype(spec.dtype)
        for start in range(0, spec.nframes, block):
            stop = min(start + block, spec.nframes)
            ds[start:stop] = np.roll(pattern, start % 7, axis=1)[: stop - start]
        f.create_dataset(KEY, data=np.ones((spec.nframes, 1, 1), dtype="i4"))
    os.replace(tmp, path)
    return path


def warm(path: Path) -> None:
    """Read the whole file once so it sits in the page cache (a warm start)."""
    with open(path, "rb") as fh:
        while fh.read(64 * 2**20):
            pass
