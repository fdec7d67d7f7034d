"""Partials are combined in scan order: float folds give the same bits on 1 worker or 2.

Also: the engine waits through the public ``distributed.wait`` on the run's own
client, which need not be the default one.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from distributed import Client, LocalCluster

from framebag import Workflow
from framebag.dispatch import DEFAULT_PARTITION_BYTES, task_size
from framebag.partials import Partial
from framebag.partitions import chunk_run
from framebag.scan_order import ScanOrder, first_frame

from .conftest import DATA, KEY, write_scan

SCAN, FRAME, CHUNKS = (8, 128), (16, 16), (1, 8, 16, 16)
READ_BYTES = 64 * 16 * 16 * 4  # 64 frames of float32 per read


def _p(start: int, stop: int) -> Partial:
    return Partial(start, stop, np.ones(stop - start, dtype=bool))


def test_scan_order_releases_only_before_the_first_task_in_flight() -> None:
    order = ScanOrder()
    order.add([_p(64, 128), _p(192, 256)])
    inflight = {"a": [(0, 64)], "b": [(128, 160), (160, 192)]}
    assert first_frame(inflight.values()) == 0
    assert order.release(first_frame(inflight.values())) == []
    order.add([_p(0, 64)])
    del inflight["a"]
    assert [p.start for p in order.release(first_frame(inflight.values()))] == [0, 64]
    del inflight["b"]
    order.add([_p(160, 192), _p(128, 160)])
    assert [p.start for p in order.release(first_frame(inflight.values()))] == [128, 160, 192]
    assert len(order) == 0 and first_frame([]) == float("inf")


def test_scan_order_release_all_keeps_scan_order_of_what_it_holds() -> None:
    order = ScanOrder()
    order.add([_p(30, 40), _p(10, 20), _p(20, 30)])
    assert [p.start for p in order.release(25)] == [10, 20]
    assert [p.start for p in order.release()] == [30]


def _float_workflow() -> Workflow:
    wf = Workflow("floats", data=DATA, keys=[KEY])
    for fold in ("sum", "mean", "var", "std"):
        wf.frame(lambda frame: frame, fold=fold, name=f"f_{fold}")

    @wf.frame
    def slow_start(frame, index=None):
        # the first task finishes last on 2 workers, so partials arrive out of scan order
        # (only the failure without scan order depends on this; the fix does not)
        if index[1] == 1 and index[0] == 0:
            time.sleep(0.5)
        return 0.0

    return wf


def _run_on(n_workers: int, path, out, **options) -> dict[str, np.ndarray]:
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as c:
        res = _float_workflow().run(path, out, client=c, **options)
    return {k: v for k, v in res.items() if k.startswith("f_")}


@pytest.mark.parametrize("read_bytes", [READ_BYTES, None], ids=["small-reads", "default"])
def test_float_folds_are_bit_identical_on_one_and_two_workers(tmp_path, unchanged,
                                                              read_bytes) -> None:
    rng = np.random.default_rng(7)
    # magnitudes over six decades: any change in the order of the sums shows in the bits
    data = (rng.standard_normal(SCAN + FRAME) * 10.0 ** rng.integers(-3, 4, SCAN + FRAME)
            ).astype(np.float32)
    path = unchanged(write_scan(tmp_path / "in.h5", data, 2, chunks=CHUNKS))
    nframes, nbytes = data[..., 0, 0].size, data[0, 0].nbytes
    chunk = chunk_run(SCAN, CHUNKS)
    budget = read_bytes or DEFAULT_PARTITION_BYTES
    sizes = {w: task_size(nbytes, budget, chunk, nframes, w) for w in (1, 2)}
    # the case this test is for: other tasks on 2 workers than on 1, on one grid of reads
    (task1, read1), (task2, read2) = sizes[1], sizes[2]
    assert task1 != task2 and read1 == read2 and task1 % read1 == task2 % read2 == 0

    options = {"partition_bytes": read_bytes} if read_bytes else {}
    one = _run_on(1, path, tmp_path / "one.h5", **options)
    two = _run_on(2, path, tmp_path / "two.h5", **options)
    again = _run_on(2, path, tmp_path / "again.h5", **options)
    want = data.reshape(-1, *FRAME).astype(np.float64)
    np.testing.assert_allclose(one["f_mean"], want.mean(axis=0), rtol=1e-9, atol=1e-12)
    for name in one:
        assert one[name].tobytes() == two[name].tobytes() == again[name].tobytes(), name


def test_a_run_waits_on_its_own_client_when_another_is_the_default(make_scan, tmp_path):
    path, data = make_scan((6, 10), (4, 4))
    wf = Workflow("own", data=DATA, keys=[KEY])
    wf.frame(lambda frame: frame.sum(), fold="sum", name="total")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as mine, \
            Client(mine, set_as_default=False) as client:
        # not the default client: a wait on the default one fails with "No clients found"
        # (when this test runs before any other made one) or waits on another client
        res = wf.run(path, tmp_path / "o.h5", client=client, partition_bytes=4 * 16 * 2)
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                          dashboard_address=":0") as other, Client(other) as default:
            again = wf.run(path, tmp_path / "o2.h5", client=client, partition_bytes=4 * 16 * 2)
            assert Client.current() is default
    assert int(res["total"]) == int(again["total"]) == int(data.sum())


@pytest.mark.parametrize("start, stop, read, want", [
    (0, 10, 4, [(0, 4), (4, 8), (8, 10)]),
    (5, 14, 4, [(5, 8), (8, 12), (12, 14)]),
    (8, 12, 4, [(8, 12)]),
])
def test_slabs_lie_on_the_grid_of_reads(make_scan, start, stop, read, want) -> None:
    """A run's slabs (one partial each) are cut at multiples of the read, wherever it starts."""
    from framebag.keys import KeyFollower
    from framebag.tasks import RunSpec, process_partition

    path, data = make_scan((20,), (3,))
    info = KeyFollower(path, DATA, [KEY]).data
    wf = Workflow("grid", data=DATA, keys=[KEY])
    wf.frame(lambda frame: frame, fold="sum", name="s")
    parts = process_partition([(start, stop)], RunSpec(info, wf, {}, "raise", False, read))
    assert [(p.start, p.stop) for p in parts] == want
    for p in parts:
        np.testing.assert_array_equal(p.accs["s"], data[p.start:p.stop].sum(axis=0))


def test_tasks_start_in_scan_order(make_scan, tmp_path) -> None:
    """The scheduler runs tasks first frames first, so partials rarely wait for a predecessor
    (combined in scan order, a first task run last would hold back every result)."""
    path, _ = make_scan((256,), (4, 4))
    wf = Workflow("when", data=DATA, keys=[KEY])
    wf.frame(lambda frame: time.monotonic_ns(), name="started")  # one clock for all processes
    task, read = task_size(32, 32, 1, 256, 1)
    assert read == 1 and 256 // task >= 8
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as c:
        res = wf.run(path, tmp_path / "o.h5", client=c, partition_bytes=32)
    firsts = res["started"][::task]
    assert (np.diff(firsts) > 0).all(), np.argsort(firsts)


@pytest.mark.parametrize("frame_nbytes_gap", [True, False], ids=["read-together", "read-apart"])
def test_runs_of_one_read_give_one_partial(make_scan, monkeypatch, frame_nbytes_gap) -> None:
    """A live task's short runs of one read (frames completed out of order) come back as
    one partial per read: frames between the runs are not done, and only the runs'
    frames are folded, whether the runs are read together or one by one."""
    from framebag import tasks
    from framebag.keys import KeyFollower
    from framebag.tasks import RunSpec, process_partition

    if not frame_nbytes_gap:  # no frame between two runs is read: each run is a read
        monkeypatch.setattr(tasks, "GAP_BYTES", 0)
    path, data = make_scan((20,), (3,))
    info = KeyFollower(path, DATA, [KEY]).data
    wf = Workflow("merged", data=DATA, keys=[KEY])
    wf.frame(lambda frame: frame, name="stacked")
    wf.frame(lambda frame: frame.astype(np.float64), fold="mean", name="avg")
    wf.frame(lambda frame: frame[None, :2], fold="ragged", name="rows")
    runs = [(1, 2), (3, 5), (8, 9), (9, 10), (11, 13)]
    reads = []  # the real reads, recorded: together, one per read of the grid
    read_run = tasks.read_run
    monkeypatch.setattr(tasks, "read_run",
                        lambda *a, **k: reads.append(a[2:4]) or read_run(*a, **k))
    parts = process_partition(runs, RunSpec(info, wf, {}, "raise", True, 10))
    assert [(p.start, p.stop) for p in parts] == [(1, 10), (11, 13)]
    assert reads == ([(1, 10), (11, 13)] if frame_nbytes_gap else
                     [(1, 2), (3, 5), (8, 10), (11, 13)])
    mine = np.array([i for a, b in runs for i in range(a, b)])
    for p in parts:
        want = mine[(mine >= p.start) & (mine < p.stop)]
        assert p.done_runs() == [r for r in [(1, 2), (3, 5), (8, 10), (11, 13)]
                                 if p.start <= r[0] < p.stop]
        np.testing.assert_array_equal(np.flatnonzero(p.done) + p.start, want)
        np.testing.assert_array_equal(p.stacks["stacked"][p.done], data[want])
        assert not p.stacks["stacked"][~p.done].any()
        n, mean, _ = p.accs["avg"]
        assert n == len(want)
        np.testing.assert_allclose(mean, data[want].mean(axis=0))
        counts, rows = p.ragged["rows"]
        np.testing.assert_array_equal(counts, p.done.astype(np.int64))
        np.testing.assert_array_equal(rows, data[want][:, :2])



WORKFLOW = """
import os, time
from framebag import Workflow
workflow = Workflow("floats", data="entry/data/data", keys=["entry/keys/key_1"])
for fold in ("mean", "var"):
    workflow.frame(lambda frame: frame, fold=fold, name="f_" + fold)
GATE = {gate!r}

@workflow.frame
def gated(frame):
    from distributed import get_worker
    try:
        get_worker()
    except ValueError:  # the driver's probe: slow, so the time cap cuts the read
        if os.path.exists(os.path.join(GATE, "slow")):
            time.sleep(0.05)
        return 0.0
    if os.path.exists(os.path.join(GATE, "slow")):
        time.sleep(0.004)
    return 0.0
"""

DRIVER = """
import sys
from distributed import Client
from framebag import load_workflow
with Client(sys.argv[1]) as client:
    load_workflow(sys.argv[2]).run(sys.argv[3], sys.argv[4], client=client, progress=None)
"""


def test_a_resumed_run_reads_on_the_grid_of_the_run_it_continues(tmp_path, unchanged, client):
    """The read (the grid of partials) comes from the probe's timing where the time cap
    binds; a resumed run probes again, and on another grid its float folds would match
    no uninterrupted run. The output records the read (``@read_frames``), and a run
    resumed after its driver was killed reuses it: the bits of a run never killed."""
    import os
    import signal
    import subprocess
    import sys

    import h5py

    from framebag import load_workflow

    rng = np.random.default_rng(11)
    data = (rng.standard_normal(SCAN + FRAME) * 10.0 ** rng.integers(-3, 4, SCAN + FRAME)
            ).astype(np.float32)
    path = unchanged(write_scan(tmp_path / "in.h5", data, 2, chunks=(1, 1, 16, 16)))
    gate = tmp_path / "gate"
    gate.mkdir()
    (gate / "slow").touch()
    (tmp_path / "wf.py").write_text(WORKFLOW.format(gate=str(gate)))
    (tmp_path / "driver.py").write_text(DRIVER)
    wf = load_workflow(str(tmp_path / "wf.py"))
    whole = wf.run(path, tmp_path / "whole.h5", client=client, progress=None)
    cut = tmp_path / "cut.h5"
    child = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"),
                              client.scheduler.address, str(tmp_path / "wf.py"), str(path),
                              str(cut)], cwd=tmp_path)
    try:
        done = 0
        while done < 200:  # killed once some of the scan is committed, not all of it
            assert child.poll() is None, "the run ended before it was killed"
            try:
                with h5py.File(cut, "r", swmr=True) as f:
                    done = int(f["entry/floats/done"][()].sum())
            except (OSError, KeyError):
                pass
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    with h5py.File(tmp_path / "whole.h5", "r") as f, h5py.File(cut, "r", swmr=True) as g:
        read = int(f["entry/floats"].attrs["read_frames"])
        assert int(g["entry/floats"].attrs["read_frames"]) == read
        assert g["entry/floats/done"][()].sum() < data[..., 0, 0].size
    fast = task_size(data[0, 0].nbytes, DEFAULT_PARTITION_BYTES, 1, data[..., 0, 0].size, 2)
    assert fast[1] != read  # the case of this test: the probe's timing moved the read
    (gate / "slow").unlink()  # the resumed run's probe is fast: it would read fast[1]
    resumed = wf.run(path, cut, client=client, resume=True, progress=None)
    assert resumed.done.all()
    for name in ("f_mean", "f_var"):
        assert resumed[name].tobytes() == whole[name].tobytes(), name


STOPS = """
import numpy as np
from framebag import Workflow

workflow = Workflow("stops", data="entry/data/data", keys=["entry/keys/key_1"])

@workflow.frame(fold="sum")
def total(frame):
    if int(frame[0, 0]) == 7:
        raise ValueError("frame 7")
    return frame.astype(np.int64)
"""


@pytest.mark.parametrize("value", ["abc", [27, 5], np.int8(-3)], ids=["str", "array", "int8"])
def test_a_resumed_output_whose_read_attribute_is_not_a_read_is_recorded_afresh(
        tmp_path, unchanged, client, value):
    """``@read_frames`` is read back from a file: any value may be there. One that is no
    read is neither used (dispatch.reusable_grid) nor written into as it is (a string
    took the resume down with 'Can't implicitly convert non-string objects to strings',
    an array with 'truth value ... ambiguous', an int8 would cast the read): it is made
    afresh, and the resumed run ends with every frame."""
    import h5py

    from framebag import load_workflow

    data = np.random.default_rng(5).integers(0, 1000, (6, 10, 4, 4)).astype(np.uint16)
    data[..., 0, 0] = np.arange(60).reshape(6, 10)
    path = unchanged(write_scan(tmp_path / "in.h5", data, 2))
    (tmp_path / "wf.py").write_text(STOPS)
    wf = load_workflow(str(tmp_path / "wf.py"))
    out = tmp_path / "out.h5"
    with pytest.raises(Exception, match="frame 7"):
        wf.run(path, out, client=client, progress=None)
    with h5py.File(out, "r+") as f:
        g = f["entry/stops"]
        del g.attrs["read_frames"]
        g.attrs["read_frames"] = value
    res = wf.run(path, out, client=client, resume=True, on_error="skip", progress=None)
    assert res.done.sum() == 59 and not res.done.flat[7]
    keep = np.ones(60, dtype=bool)
    keep[7] = False
    assert np.array_equal(res["total"], data.reshape(60, 4, 4)[keep].astype(np.int64).sum(0))
    with h5py.File(out, "r") as f:
        got = f["entry/stops"].attrs["read_frames"]
        assert type(got) is np.int64 and int(got) >= 1
