"""Nothing lost: a driver killed at any point resumes exactly; Ctrl-C stops cleanly;
dead workers and failing partitions neither double-count nor lose work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dask
import h5py
import numpy as np
import psutil
import pytest

from framebag import FramebagError, load_workflow
from framebag.output import _read_checkpoint

from .conftest import write_scan

SLOW = '''
import os
import time

import numpy as np

from framebag import Workflow

workflow = Workflow("slow", data="entry/data/data", keys=["entry/keys/key_1"])


@workflow.frame
def total(frame, *, delay=0.01):
    time.sleep(delay)
    while int(frame[0, 0]) == int(os.environ.get("FRAMEBAG_TEST_HOLD_AT", -1)):
        time.sleep(1)  # the run cannot finish: the test kills it first
    if os.environ.get("FRAMEBAG_TEST_CRASH") and int(frame[0, 0]) == 7:
        os._exit(1)  # the worker process dies on this frame
    return frame.sum()


@workflow.frame(fold="mean")
def mean_image(frame):
    return frame


@workflow.frame(fold="sum")
def summed(frame):
    return frame.astype(np.int64)
'''

SCAN = (20, 20)


@pytest.fixture
def job(tmp_path):
    """A slow workflow file and a 400-frame scan; frame i has frame[0, 0] == i."""
    wf = tmp_path / "slow.py"
    wf.write_text(SLOW)
    rng = np.random.default_rng(5)
    data = rng.integers(0, 1000, SCAN + (8, 8)).astype("uint16")
    data[..., 0, 0] = np.arange(400).reshape(SCAN)
    path = write_scan(tmp_path / "in.h5", data, 2)
    return wf, path, data


def start_cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "framebag.cli", "run", *args], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, **(env or {})},
    )


def done_count(out: Path) -> int:
    try:
        with h5py.File(out, "r", swmr=True) as f:
            return int(f["entry/slow/done"][()].sum())
    except (OSError, KeyError):
        return -1


def wait_for_done(out: Path, at_least: int, proc: subprocess.Popen | None = None,
                  timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = done_count(out)
        if n >= at_least:
            return n
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"run ended before {at_least} frames: {proc.stderr.read()}")
        time.sleep(0.01)
    raise AssertionError(f"fewer than {at_least} frames done after {timeout} s")


def check_final(res, data: np.ndarray) -> None:
    assert res.done.all()
    np.testing.assert_array_equal(res["total"], data.sum(axis=(2, 3)))
    np.testing.assert_array_equal(res["summed"], data.astype(np.int64).sum(axis=(0, 1)))
    np.testing.assert_allclose(res["mean_image"], data.mean(axis=(0, 1)), rtol=1e-12)


def check_consistent(out: Path, data: np.ndarray) -> np.ndarray:
    """The checkpoint's done frames are in every fold exactly once; returns that mask."""
    with h5py.File(out, "r", swmr=True) as f:
        g = f["entry/slow"]
        state = _read_checkpoint(g["checkpoint"])
        total = g["total"][()]
    if state is None:
        return np.zeros(SCAN, dtype=bool)
    done = np.unpackbits(state["done"], count=400).astype(bool).reshape(SCAN)
    if done.any():
        np.testing.assert_array_equal(state["accs"]["summed"],
                                      data[done].astype(np.int64).sum(axis=0))
        n, mean, _ = state["accs"]["mean_image"]
        assert n == done.sum()
        np.testing.assert_allclose(mean, data[done].mean(axis=0), rtol=1e-12)
        np.testing.assert_array_equal(total[done], data.sum(axis=(2, 3))[done])
    return done


@pytest.mark.parametrize("kill_at", [0, 1, 150, 330])
def test_sigkill_of_the_driver_then_resume_equals_an_uninterrupted_run(job, client, tmp_path,
                                                                        unchanged, kill_at):
    wf, path, data = job
    unchanged(path)
    out = tmp_path / "out.h5"
    # frame kill_at + 40 never finishes in this run, so the kill always comes first; the
    # other worker does the rest, and as tasks are at most 30 frames (3 reads of 10 at 10 ms
    # a frame), the frames up to kill_at are all done before that task
    proc = start_cli(str(wf), str(path), "-o", str(out), "--partition-bytes", "1280",
                     "--commit-interval", "0", env={"FRAMEBAG_TEST_HOLD_AT": str(kill_at + 40)})
    try:
        if kill_at:
            wait_for_done(out, kill_at, proc)
        else:
            time.sleep(0.5)  # most likely before the output exists
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_before = check_consistent(out, data) if out.exists() else np.zeros(SCAN, bool)
    assert done_before.sum() < 400, "the run finished before the kill; slow it down"
    res = load_workflow(wf).run(path, out, client=client, resume=True)
    check_final(res, data)
    # only the frames not done before the crash were processed again
    assert res.stats["processed"] == 400 - done_before.sum()
    with h5py.File(out, "r") as f:  # a plain reader opens it again: not flagged any more
        assert f["entry/slow"].attrs["status"] == "complete"


def test_ctrl_c_stops_cleanly_and_the_run_resumes(job, tmp_path):
    wf, path, data = job
    out = tmp_path / "out.h5"
    slower = ("--set", "delay=0.02")  # 4 s of work: the signal lands mid-run
    proc = start_cli(str(wf), str(path), "-o", str(out), "--partition-bytes", "1280",
                     "--commit-interval", "0", *slower)
    try:
        wait_for_done(out, 40, proc)
        # Ctrl-C in a terminal signals the whole foreground process group: the driver
        # and the local worker processes, whose KeyboardInterrupt must not show
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    with h5py.File(out, "r") as f:  # closed cleanly: no crash flag left behind
        assert f["entry/slow"].attrs["status"] == "interrupted"
    done_before = check_consistent(out, data)
    assert 40 <= done_before.sum() < 400
    proc = start_cli(str(wf), str(path), "-o", str(out), "--resume", *slower)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    with h5py.File(out, "r") as f:
        g = f["entry/slow"]
        assert g["done"][()].all()
        np.testing.assert_array_equal(g["total"][()], data.sum(axis=(2, 3)))
        np.testing.assert_array_equal(g["summed"][()], data.astype(np.int64).sum(axis=(0, 1)))


def test_a_killed_worker_is_recomputed_and_never_double_counted(job, tmp_path):
    from distributed import Client, LocalCluster

    wf, path, data = job
    out = tmp_path / "out.h5"
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster, \
            Client(cluster) as c:
        pids = c.run(os.getpid)
        result: list = []
        t = threading.Thread(target=lambda: result.append(
            load_workflow(wf).run(path, out, client=c, partition_bytes=1280,
                                  commit_interval=0)))
        t.start()
        at_kill = wait_for_done(out, 60)
        psutil.Process(next(iter(pids.values()))).kill()
        t.join(timeout=120)
        assert at_kill < 400
        assert set(c.run(os.getpid).values()) != set(pids.values())  # a new worker started
    check_final(result[0], data)
    assert result[0].stats["processed"] == 400


def test_a_partition_that_keeps_killing_workers_stops_naming_its_frames(job, client, tmp_path):
    from distributed import Client, LocalCluster

    wf, path, data = job
    out = tmp_path / "out.h5"
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        # the nannies give the variable to every worker process they (re)start
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0",
                               env={"FRAMEBAG_TEST_CRASH": "1"})
    with cluster, Client(cluster) as c:
        with pytest.raises(FramebagError) as info:
            load_workflow(wf).run(path, out, client=c, partition_bytes=1280, retries=1)
    msg = str(info.value)
    # the partition holding frame 7 (the first row, or more of it) is named by its ends
    assert "frames (0, 0) to (" in msg and "KilledWorker" in msg and "--resume" in msg
    done = check_consistent(out, data)
    assert not done[0, :10].any()
    res = load_workflow(wf).run(path, out, client=client, resume=True)  # healthy workers
    check_final(res, data)


def test_resume_while_a_plain_reader_holds_the_output_works_and_the_reader_keeps_its_copy(
        job, client, tmp_path):
    """A reader that opened the output without SWMR holds HDF5's file lock: --resume
    writes into a fresh copy that takes the output's place, and the reader goes on
    reading the file it opened."""
    wf, path, data = job
    out = tmp_path / "out.h5"
    load_workflow(wf).run(path, out, client=client)
    reader = subprocess.Popen(
        [sys.executable, "-c", "import sys, h5py\nf = h5py.File(sys.argv[1], 'r')\n"
         "print('resumed_time' in f['entry/slow'].attrs, flush=True)\nsys.stdin.readline()\n"
         "print('resumed_time' in f['entry/slow'].attrs, flush=True)\n", str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout is not None
        assert reader.stdout.readline().strip() == "False"
        res = load_workflow(wf).run(path, out, client=client, resume=True)
        check_final(res, data)
        with h5py.File(out, "r") as f:  # the resumed run stamped the file it wrote
            assert "resumed_time" in f["entry/slow"].attrs
        again, _ = reader.communicate("\n", timeout=60)
        assert again.strip() == "False"  # its own copy, unchanged under it
    finally:
        if reader.poll() is None:
            reader.kill()
