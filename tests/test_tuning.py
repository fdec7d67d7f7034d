"""Worker tuning (framebag.tuning): glibc's malloc thresholds reach every worker a run uses.

The read-back is behavioural: whether a 1 MiB ``malloc`` in the worker is served by
mmap (the ``IS_MMAPPED`` bit glibc keeps in the chunk's size word). dask's nanny starts workers with
``MALLOC_TRIM_THRESHOLD_=65536``, under which it is; once framebag has tuned the
worker, it comes from the heap.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import framebag
from framebag import tuning

from .conftest import DATA, KEY

#: the block size the read-back allocates: under the tuned 16 MiB mmap threshold, and above
#: what glibc's dynamic threshold reaches in a fresh untuned worker (it rises to the largest
#: mmapped block freed so far: a 1 MiB probe found one worker in two already past it)
PROBE = 8 << 20

pytestmark = pytest.mark.skipif(tuning.mmapped(PROBE) is None,
                                reason="needs glibc")


def _sum_workflow() -> framebag.Workflow:
    wf = framebag.Workflow("tuning_sum", data=DATA, keys=[KEY])

    @wf.frame
    def total(frame):
        return frame.sum()

    return wf


def test_mallopt_overrides_the_nanny_environment():
    """In a process started with dask's MALLOC_TRIM_THRESHOLD_, tune_process() takes over."""
    import subprocess
    import sys

    code = (f"from framebag import tuning; a = tuning.mmapped({PROBE}); "
            f"ok = tuning.tune_process(); print(a, ok, tuning.mmapped({PROBE}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"})
    assert out.stdout.split() == ["True", "True", "False"], out.stdout + out.stderr


def test_a_users_plain_local_cluster_is_tuned_by_the_run(tmp_path, make_scan):
    """A default LocalCluster passed as ``client=``: its workers, and one that joins after
    the run started, get the thresholds; the results are unchanged."""
    from distributed import Client, LocalCluster

    inp, data = make_scan((6, 5), (16, 16))
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        before = client.run(tuning.mmapped, PROBE)
        assert list(before.values()) == [True, True], before  # dask's environment, untuned
        res = _sum_workflow().run(inp, tmp_path / "out.h5", client=client, progress=None)
        np.testing.assert_array_equal(res["total"], data.sum(axis=(-2, -1)))
        assert list(client.run(tuning.mmapped, PROBE).values()) == [False, False]
        cluster.scale(3)
        client.wait_for_workers(3, timeout=60)
        late = client.run(tuning.mmapped, PROBE)
        assert list(late.values()) == [False, False, False], late


HEARTBEAT = "Failed to communicate with scheduler during heartbeat."


class _LogToFile:
    """A worker plugin: distributed.worker's records go to ``path``; on teardown, which
    a worker runs as it closes, it logs the heartbeat failure and a control record."""

    name = "test-log-to-file"

    def __init__(self, path: str) -> None:
        self.path = path

    def setup(self, worker) -> None:
        import logging

        handler = logging.FileHandler(self.path)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logging.getLogger("distributed.worker").addHandler(handler)

    def teardown(self, worker) -> None:
        import logging

        log = logging.getLogger("distributed.worker")
        log.error(HEARTBEAT)
        log.error("control record at close")


def test_a_heartbeat_failing_as_the_worker_closes_is_not_logged(tmp_path):
    """distributed logs a heartbeat caught by the worker's own close at ERROR with a
    traceback (seen under load at the end of the README's first example); the tuning
    plugin drops that record while the worker closes, and only then."""
    from distributed import Client, LocalCluster, WorkerPlugin

    plugin = type("LogToFile", (_LogToFile, WorkerPlugin), {})(str(tmp_path / "worker.log"))
    with LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        tuning.tune_workers(client)
        client.register_plugin(plugin)
        client.run(lambda: __import__("logging").getLogger("distributed.worker").error(
            HEARTBEAT))  # while the worker runs: kept
    lines = (tmp_path / "worker.log").read_text().splitlines()
    assert "control record at close" in lines, lines
    assert lines.count(HEARTBEAT) == 1, lines
    assert lines.index(HEARTBEAT) < lines.index("control record at close"), lines
