"""Structure that throughput depends on, checked without timing anything.

The benchmarks (``python -m benchmarks``) measure speed; these tests guard the
shape of the work that makes it: a task per partition and never per frame, one
file open per worker per run, read buffers recycled only when nothing refers
to them, and fresh task keys for every run.
"""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
from distributed import get_task_stream

from framebag import Workflow, reading
from framebag.dispatch import task_size
from framebag.reading import read_run

from .conftest import DATA, KEY


def _sum_workflow() -> Workflow:
    wf = Workflow("structure", data=DATA, keys=[KEY])

    @wf.frame
    def total(frame):
        return frame.sum()

    return wf


def test_tasks_per_partition_not_per_frame(make_scan, client, tmp_path):
    path, data = make_scan((2000,), (8, 8))
    size = 100  # frames per partition: 100 frames of 8x8 uint16
    wf = _sum_workflow()
    with get_task_stream(client) as ts:
        res = wf.run(path, tmp_path / "out.h5", client=client, partition_bytes=size * 128)
    np.testing.assert_array_equal(res["total"], data.sum(axis=(1, 2)))
    nworkers = len(client.scheduler_info()["workers"])
    # frame_seconds=0: a sum of 64 pixels is far too cheap for the time cap to bind; the
    # stacked sums (8 bytes a frame) bind the memory cap, as in the run
    task, read = task_size(128, size * 128, 1, 2000, nworkers, result_nbytes=8)
    assert read == size and task > size  # a task is several reads
    tasks = math.ceil(2000 / task)
    keys = [str(t["key"]) for t in ts.data]
    assert sum("framebag-structure" in k for k in keys) == tasks, keys
    # a bag partition costs its input task and its processing task; a few more set up the run
    assert len(keys) <= 2 * tasks + 4, keys


def _count_opens() -> None:
    """Count, in this worker, the opens of an input file (framebag.hdf5.open_readonly)."""
    from framebag import hdf5

    if getattr(hdf5, "_framebag_test_opens", None) is None:
        real = hdf5.open_readonly

        def counting(*args, **kwargs):
            hdf5._framebag_test_opens += 1
            return real(*args, **kwargs)

        hdf5._framebag_test_real = real
        hdf5.open_readonly = counting
    hdf5._framebag_test_opens = 0


def _opens() -> int:
    from framebag import hdf5

    n = hdf5._framebag_test_opens
    hdf5.open_readonly = hdf5._framebag_test_real
    del hdf5._framebag_test_opens, hdf5._framebag_test_real
    return n


def test_one_file_open_per_worker_per_run(make_scan, client, tmp_path):
    path, data = make_scan((40, 50), (8, 8))
    wf = _sum_workflow()
    client.run(_count_opens)
    try:
        res = wf.run(path, tmp_path / "out.h5", client=client, partition_bytes=64 * 128)
    finally:
        opens = client.run(_opens)
    np.testing.assert_array_equal(res["total"], data.sum(axis=(2, 3)))
    # 2000 frames in 32 partitions over the workers, yet each worker opened the input once
    assert all(n <= 1 for n in opens.values()), opens
    assert sum(opens.values()) >= 1


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def test_read_buffer_recycled_only_when_unreferenced(make_scan):
    path, data = make_scan((6, 10), (4, 4))
    args = (str(path), DATA)
    shape, frame, dtype = (6, 10), (4, 4), data.dtype
    with reading._lock:
        reading._spare.clear()  # this process may have read before: start with no spares
    a = read_run(*args, 0, 10, shape, frame, dtype)
    b = read_run(*args, 10, 20, shape, frame, dtype)
    address_a, address_b = _address(a), _address(b)
    assert not np.shares_memory(a, b)
    kept = a[3]  # a view of a frame outlives its partition
    del a
    c = read_run(*args, 20, 30, shape, frame, dtype)
    assert not np.shares_memory(kept, c) and not np.shares_memory(b, c)
    np.testing.assert_array_equal(kept, data.reshape(60, 4, 4)[3])
    np.testing.assert_array_equal(c, data.reshape(60, 4, 4)[20:30])
    del kept, b
    d = read_run(*args, 30, 40, shape, frame, dtype)
    np.testing.assert_array_equal(d, data.reshape(60, 4, 4)[30:40])
    # nothing refers to a's or b's buffer any more: d and e are read into them, not new ones
    e = read_run(*args, 40, 50, shape, frame, dtype)
    np.testing.assert_array_equal(e, data.reshape(60, 4, 4)[40:50])
    assert {_address(d), _address(e)} == {address_a, address_b}
    assert all(any(np.shares_memory(x, spare) for spare in reading._spare) for x in (d, e))


def test_batched_view_of_frames_survives_later_partitions(make_scan, client, tmp_path):
    """A batched function may return a view of its stack; later reads must not overwrite it."""
    path, data = make_scan((600,), (8, 8))
    wf = Workflow("views", data=DATA, keys=[KEY])

    @wf.frames
    def corner(frames):
        return frames[:, 0, 0]

    res = wf.run(path, tmp_path / "out.h5", client=client, partition_bytes=20 * 128)
    np.testing.assert_array_equal(res["corner"], data[:, 0, 0])


def test_rerun_after_input_rewritten_in_place_sees_new_data(tmp_path, client):
    """Task keys are fresh per run: a second run never reuses the first run's partials."""
    path = tmp_path / "scan.h5"
    wf = _sum_workflow()
    sums = []
    for seed in (1, 2):
        data = np.random.default_rng(seed).integers(0, 1000, (300, 8, 8)).astype("uint16")
        with h5py.File(path, "w") as f:  # same path and inode, new content
            f.create_dataset(DATA, data=data, chunks=(1, 8, 8))
            f.create_dataset(KEY, data=np.ones((300, 1, 1), dtype="i4"))
        res = wf.run(path, tmp_path / "out.h5", client=client, overwrite=True,
                     partition_bytes=30 * 128)
        np.testing.assert_array_equal(res["total"], data.sum(axis=(1, 2)))
        sums.append(res["total"])
    assert not np.array_equal(sums[0], sums[1])


def test_blosc_lz4_input_reads_without_importing_hdf5plugin_first(tmp_path, client):
    """Workers register hdf5plugin's filters themselves when a read needs them."""
    hdf5plugin = pytest.importorskip("hdf5plugin")
    data = np.random.default_rng(3).poisson(20, (200, 16, 16)).astype("uint16")
    path = tmp_path / "lz4.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset(DATA, data=data, chunks=(4, 16, 16),
                         **hdf5plugin.Blosc(cname="lz4", shuffle=hdf5plugin.Blosc.SHUFFLE))
        f.create_dataset(KEY, data=np.ones((200, 1, 1), dtype="i4"))
    res = _sum_workflow().run(path, tmp_path / "out.h5", client=client,
                              partition_bytes=40 * 512)
    np.testing.assert_array_equal(res["total"], data.sum(axis=(1, 2)))


def test_tasks_are_cut_for_the_workers_the_cluster_plans(make_scan, tmp_path):
    """A batch cluster's later jobs start after the run: its scan is cut for every worker
    the cluster plans (``SpecCluster.plan``), not for the first one alone."""
    from distributed import Client, LocalCluster

    gate = tmp_path / "later-workers-may-start"
    preload = tmp_path / "wait_at_gate.py"  # a worker runs it before it joins the scheduler
    preload.write_text("import os, time\n\n\ndef dask_setup(worker):\n"
                       f"    while not os.path.exists({str(gate)!r}):\n"
                       "        time.sleep(0.02)\n")
    path, data = make_scan((2000,), (8, 8))
    wf = _sum_workflow()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        try:
            cluster.new_spec["options"]["preload"] = [str(preload)]
            cluster.scale(4)  # three more, held at the gate: planned, not connected
            assert len(cluster.plan) == 4
            assert len(client.scheduler_info()["workers"]) == 1
            with get_task_stream(client) as ts:
                res = wf.run(path, tmp_path / "out.h5", client=client,
                             partition_bytes=100 * 128)
        finally:
            gate.touch()
    np.testing.assert_array_equal(res["total"], data.sum(axis=(1, 2)))
    tasks = {w: math.ceil(2000 / task_size(128, 100 * 128, 1, 2000, w, result_nbytes=8)[0])
             for w in (1, 4)}
    assert tasks[4] > tasks[1]
    assert sum("framebag-structure" in str(t["key"]) for t in ts.data) == tasks[4]
