"""Shared fixtures: real HDF5 scans in tmp dirs, one real LocalCluster per session."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")

DATA = "entry/data/data"
KEY = "entry/keys/key_1"


def sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_scan(path: Path, data: np.ndarray, scan_rank: int, *, complete: np.ndarray | None = None,
               chunks: tuple[int, ...] | bool | None = None, compression: str | None = None,
               key_dtype: str = "i4", trailing_key_dims: bool = True,
               extra_keys: list[np.ndarray] | None = None) -> Path:
    """Write a finished scan file: data, key(s) non-zero where ``complete``, no finished flag.

    Keys get trailing length-1 dims (``scan_shape + (1,) * frame_rank``) when
    ``trailing_key_dims`` and the frame rank allows it, as detectors write them.
    """
    scan_shape = data.shape[:scan_rank]
    if complete is None:
        complete = np.ones(scan_shape, dtype=bool)
    key_shape = scan_shape + ((1,) * (data.ndim - scan_rank) if trailing_key_dims else ())
    with h5py.File(path, "w", libver="latest") as f:
        if chunks is None:
            chunks = (1,) * scan_rank + data.shape[scan_rank:]
        f.create_dataset(DATA, data=data, chunks=chunks, compression=compression)
        f.create_dataset(KEY, data=complete.astype(key_dtype).reshape(key_shape))
        for i, extra in enumerate(extra_keys or []):
            name = f"entry/keys/key_{i + 2}"
            f.create_dataset(name, data=extra.astype(key_dtype).reshape(key_shape))
    return path


@pytest.fixture
def make_scan(tmp_path: Path, unchanged):
    """Factory: ``make_scan(scan_shape, frame_shape, dtype=..., **write_scan_kwargs)``.

    Returns ``(path, data)``; the data are random integers in [0, 1000). Every
    file it makes is watched by :func:`unchanged`: a test that rewrites it on
    purpose calls ``unchanged(path)`` again afterwards.
    """
    counter = iter(range(10**6))

    def make(scan_shape, frame_shape=(8, 8), dtype="uint16", seed=0, **kwargs):
        rng = np.random.default_rng(seed)
        data = rng.integers(0, 1000, size=tuple(scan_shape) + tuple(frame_shape)).astype(dtype)
        path = tmp_path / f"scan{next(counter)}.h5"
        write_scan(path, data, len(scan_shape), **kwargs)
        unchanged(path)
        return path, data

    return make


@pytest.fixture(scope="session")
def client():
    """One real LocalCluster (2 single-threaded worker processes) for the session."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=":0")
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture
def unchanged():
    """Asserts, at teardown, that the files given to it were not modified since.

    ``framebag`` never writes to its input: every input a test hands it is
    hashed before and after.
    """
    watched: dict[Path, str] = {}

    def watch(path: Path) -> Path:
        watched[Path(path)] = sha256(path)
        return path

    yield watch
    for path, digest in watched.items():
        assert sha256(path) == digest, f"input file {path} was modified"


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    """``framebag ARGV`` in this process: its exit code and what it printed (stderr, stdout)."""
    from framebag.cli import main

    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, (out.err + out.out).strip()


def assert_one_sentence(rc: int, err: str, *names: str) -> None:
    """A failure reported as one ``framebag: error:`` line naming each of ``names``."""
    assert rc != 0
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err  # also: no "dashboard" line, so no cluster was started
    assert lines[0].startswith("framebag: error: ")
    for name in names:
        assert name in lines[0], (name, lines[0])
