"""Adaptive clusters: a scan is cut for the workers an active ``cluster.adapt()`` may
grow to, so that adaptive scaling has tasks to grow for. Real LocalClusters, real files;
the tasks wait at a gate (a file) that the test opens once the cluster has grown."""

from __future__ import annotations

import math
import os
import threading
import time

import dask
import numpy as np
import pytest
from distributed import Client, LocalCluster, get_task_stream

from framebag import Workflow
from framebag.dispatch import task_size
from framebag.engine import MAX_ADAPTIVE_WORKERS, planned_workers

from .conftest import DATA, KEY


def _gated_sum(gate: str) -> Workflow:
    """Sum each frame; on a worker (not in the driver's probe) first wait for ``gate``."""
    wf = Workflow("adaptive", data=DATA, keys=[KEY])
    driver = os.getpid()

    @wf.frame
    def total(frame):
        while os.getpid() != driver and not os.path.exists(gate):
            time.sleep(0.01)
        return frame.sum()

    return wf


def test_scan_is_cut_for_the_adaptive_maximum_and_the_cluster_grows_to_it(make_scan, tmp_path):
    """``LocalCluster(n_workers=1).adapt(minimum=1, maximum=4)``: a scan too cheap for the
    time cap was cut for the one worker (three tasks), so the scheduler asked for at most
    three workers; cut for four (at least four tasks), it asks for four and they run
    them. ``target_duration`` is tiny so that the scheduler wants a worker for every task
    it holds, and each worker takes no more tasks than threads from the scheduler's queue
    (``worker-saturation`` 1), so the queued tasks go one to each new worker."""
    gate = tmp_path / "tasks-may-run"
    path, data = make_scan((2000,), (8, 8))
    read_bytes = 100 * 128  # 20 reads of 100 frames
    tasks = {w: math.ceil(2000 / task_size(128, read_bytes, 1, 2000, w, result_nbytes=8)[0])
             for w in (1, 4)}
    assert tasks[1] < 4 <= tasks[4]  # fewer tasks than the maximum, unless cut for it
    wf = _gated_sum(str(gate))
    out: dict = {}
    with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}), \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                         dashboard_address=":0") as cluster, Client(cluster) as client:
        cluster.adapt(minimum=1, maximum=4, interval="50ms", target_duration="1ms")
        assert len(cluster.plan) == 1 and planned_workers(client) == 4

        def run():
            try:
                out["res"] = wf.run(path, tmp_path / "out.h5", client=client,
                                    partition_bytes=read_bytes)
            except BaseException as exc:  # noqa: BLE001 - re-raised by the test below
                out["error"] = exc

        try:
            with get_task_stream(client) as ts:
                runner = threading.Thread(target=run)
                runner.start()
                # the tasks wait at the gate until the cluster has grown for them; with three
                # tasks it stops at three workers and this times out
                client.wait_for_workers(4, timeout=120)
                gate.touch()
                runner.join()
        finally:
            gate.touch()
    if "error" in out:
        raise out["error"]
    np.testing.assert_array_equal(out["res"]["total"], data.sum(axis=(1, 2)))
    ran = [t for t in ts.data if "framebag-adaptive" in str(t["key"])]
    assert len(ran) == tasks[4]
    # the first worker's (dask queues a group's tasks only past two per thread, so it holds
    # one or two) and those the scheduler queued, one to each worker that came
    assert len({t["worker"] for t in ran}) >= 3


@pytest.mark.parametrize("maximum", [math.inf, 1000])
def test_a_huge_adaptive_maximum_counts_as_max_adaptive_workers(make_scan, tmp_path, maximum):
    """``adapt()`` with no maximum (``math.inf``) or a huge one cuts the scan for
    ``MAX_ADAPTIVE_WORKERS``: whole reads, never more tasks than reads, and the results
    right; a stopped adaptive counts for nothing."""
    path, data = make_scan((2000,), (8, 8))
    wf = _gated_sum(str(tmp_path / "open"))
    (tmp_path / "open").touch()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        adaptive = cluster.adapt(minimum=1, maximum=maximum, interval="10s")
        assert planned_workers(client) == MAX_ADAPTIVE_WORKERS
        with get_task_stream(client) as ts:
            res = wf.run(path, tmp_path / "out.h5", client=client, partition_bytes=100 * 128)
        adaptive.stop()
        assert planned_workers(client) == len(cluster.plan) == 1
    np.testing.assert_array_equal(res["total"], data.sum(axis=(1, 2)))
    ran = sum("framebag-adaptive" in str(t["key"]) for t in ts.data)
    assert ran == 20  # one read a task: the finest cut the reads allow


def test_an_adaptive_batch_profile_counts_its_maximum_jobs_in_workers(tmp_path):
    """``adapt: {maximum_jobs: 3}`` with two worker processes a job: the scan is cut for six
    workers. A real dask-jobqueue SLURMCluster, adapted as ``framebag.cluster`` adapts it
    once its first worker is up; no job is submitted (minimum 0, no work)."""
    import yaml

    from framebag import clusters, profiles

    prof_file = tmp_path / "adaptive.yaml"
    prof_file.write_text(yaml.safe_dump({
        "cluster": "slurm", "adapt": {"minimum_jobs": 0, "maximum_jobs": 3},
        "options": {"cores": 2, "processes": 2, "memory": "1GiB", "walltime": "00:10:00",
                    "interface": "lo", "log_directory": str(tmp_path / "logs")}}))
    prof = profiles.load(prof_file)
    cluster = clusters.make_cluster(prof)
    try:
        with Client(cluster) as client:
            assert planned_workers(client) == 0
            cluster.adapt(**prof.adapt)
            assert planned_workers(client) == 6
    finally:
        cluster.close()
