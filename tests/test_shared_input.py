"""Two runs on one input at once: one run's end must not break the other's reads.

A run ends by closing its input's handles on every worker (``engine._close_inputs``).
Two runs on one input that share a client (two threads, two outputs) used to fail
each other's reads that were under way: ``ValueError: Invalid dataset identifier``,
a failed task, a retry, and a run that fails once the retries are spent.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from framebag import Workflow, hdf5
from framebag.reading import read_run

from .conftest import DATA, KEY


def test_closing_an_input_leaves_a_read_under_way_intact(make_scan):
    # many scan rows per read: each is a read_direct call on the one handle, so a close
    # from another thread (a worker's client.run) lands between or inside them
    path, data = make_scan((64, 8), (64, 64))
    shape = data.shape
    done, errors = threading.Event(), []

    def reader():
        try:
            for _ in range(200):
                got = read_run(str(path), DATA, 0, 512, shape[:2], shape[2:], data.dtype)
                if not np.array_equal(got, data.reshape(512, *shape[2:])):
                    errors.append("wrong frames")
        except Exception as exc:  # noqa: BLE001 - what the test looks for
            errors.append(repr(exc))
        finally:
            done.set()

    t = threading.Thread(target=reader)
    t.start()
    closes = 0
    while not done.is_set():
        hdf5.close(str(path))
        closes += 1
    t.join()
    hdf5.close(str(path))
    assert closes > 0
    assert errors == []


def test_two_runs_on_one_input_sharing_a_client(make_scan, client, tmp_path, caplog):
    path, data = make_scan((40, 50), (32, 32))
    wf = Workflow("shared", data=DATA, keys=[KEY])

    @wf.frame
    def total(frame):
        return frame.sum()

    want = data.sum(axis=(2, 3))
    results, errors = [], []

    def runs(i):
        try:
            for _ in range(4):
                res = wf.run(path, tmp_path / f"out{i}.h5", client=client, overwrite=True,
                             partition_bytes=64 * 1024)
                results.append(np.asarray(res["total"]).copy())
        except Exception as exc:  # noqa: BLE001 - what the test looks for
            errors.append(repr(exc))

    with caplog.at_level(logging.WARNING, logger="framebag"):
        threads = [threading.Thread(target=runs, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert len(results) == 8 and all(np.array_equal(r, want) for r in results)
    assert not [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]


def test_checking_a_finished_input_leaves_reads_of_it_open(make_scan):
    # while check_finished holds its plain (non-SWMR) open, HDF5 refused the SWMR open
    # of another run's read in the same process: InputNotReady, "SWMR read access flag
    # not the same for file that is already open"
    path, data = make_scan((16, 8), (16, 16))
    shape = data.shape
    done, errors = threading.Event(), []

    def checker():
        try:
            for _ in range(300):
                hdf5.check_finished(str(path), DATA, [KEY])
        except Exception as exc:  # noqa: BLE001 - what the test looks for
            errors.append(repr(exc))
        finally:
            done.set()

    t = threading.Thread(target=checker)
    t.start()
    reads = 0
    try:
        while not done.is_set():
            got = read_run(str(path), DATA, 0, 128, shape[:2], shape[2:], data.dtype)
            assert np.array_equal(got, data.reshape(128, *shape[2:]))
            hdf5.close(str(path))
            reads += 1
    finally:
        done.wait()
        t.join()
    assert reads > 0 and errors == []
