"""Crash soak: the driver's process group SIGKILLed 10 times at seeded moments, offline and
while a real SWMR writer is still writing (--follow), each time followed by --resume.

The results must equal numpy (exactly: a stack and integer folds), no frame may be lost
and none folded twice. Every call of the workflow function is logged, per run, so the
test also proves that a resumed run never computes a frame the killed run had marked
done.

Kills are sequenced by events, never by sleeps: run ``k`` is told (by environment) to
write a marker at its ``kill_at``-th frame call and to stop calling at its ``block_at``-th
(so it cannot finish before the kill lands); the test kills the process group as soon
as it sees the marker. Between the two, the driver is anywhere: gathering, combining,
committing, or creating the output. The cluster is a LocalCluster of one worker thread
in the driver's process, so each restart costs an interpreter start, not a nanny.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from framebag.simulate import DATA, FINISHED, KEY

SCAN = (16, 25)
NFRAMES = 400
KILLS = 10

WORKFLOW = f'''
import os
import threading
import time

import numpy as np

from framebag import Workflow

workflow = Workflow("soak", data="{DATA}", keys=["{KEY}"], finished="{FINISHED}")
SCAN = {SCAN}
RECORD = 9  # bytes of one call's line: the line count is the file size / RECORD


def _log(flat, probe):
    """One line per call, appended unbuffered: a SIGKILL loses at most the line being written.

    No state in this module: it is pickled by value to the worker, once per task.
    """
    name = ("probe-" if probe else "calls-") + os.environ["SOAK_RUN"]
    fd = os.open(os.path.join(os.environ["SOAK_DIR"], name),
                 os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{{flat:08d}}\\n".encode())
        n = os.fstat(fd).st_size // RECORD
    finally:
        os.close(fd)
    if probe:  # the driver's probe of the first frame: not folded, not counted
        return
    if n == int(os.environ.get("SOAK_KILL_AT", 0)):
        open(os.path.join(os.environ["SOAK_DIR"], "kill-" + os.environ["SOAK_RUN"]), "w").close()
    if n >= int(os.environ.get("SOAK_BLOCK_AT", 1 << 60)):
        while True:  # held here until the test kills the process group
            time.sleep(0.01)


@workflow.frame
def total(frame, index):
    flat = int(np.ravel_multi_index(index, SCAN))
    _log(flat, threading.current_thread() is threading.main_thread())
    time.sleep(0.003)  # tasks of about TASK_SECONDS / 3 ms frames: several per run
    return frame.astype(np.int64).sum()


@workflow.frame(fold="sum")
def summed(frame):
    return frame.astype(np.int64)


@workflow.frame(fold="sum")
def onehot(frame, index):
    hot = np.zeros(SCAN[0] * SCAN[1], dtype=np.int64)
    hot[np.ravel_multi_index(index, SCAN)] = 1
    return hot
'''

PROFILE = """\
cluster: local
options:
  n_workers: 1
  threads_per_worker: 1
  processes: false
  dashboard_address: null
"""


def _done(out: Path) -> np.ndarray:
    """The output's public done mask (all False before the output exists)."""
    try:
        with h5py.File(out, "r", swmr=True) as f:
            return f["entry/soak/done"][()].astype(bool).ravel()
    except (OSError, KeyError):
        return np.zeros(NFRAMES, dtype=bool)


def _calls(soak: Path, run: int, kind: str = "calls") -> np.ndarray:
    """Flat indices computed by run ``run`` (``kind`` "probe": by the driver's probe)."""
    path = soak / f"{kind}-{run}"
    if not path.exists():
        return np.zeros(0, dtype=np.int64)
    return np.array(path.read_text().split(), dtype=np.int64)


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "framebag.cli", "run", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, **env})


def _wait_for(marker: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before its kill (status {proc.returncode}): "
                                 f"{proc.stderr.read()}")
        assert time.monotonic() < deadline, f"no {marker.name} after {timeout} s"
        time.sleep(0.002)


@pytest.mark.parametrize("follow", [False, True], ids=["offline", "follow"])
def test_ten_sigkills_then_resume_lose_nothing_and_fold_nothing_twice(tmp_path, follow,
                                                                      make_scan, unchanged):
    rng = np.random.default_rng(20261127 + follow)
    soak = tmp_path / "soak"
    soak.mkdir()
    wf = tmp_path / "soak_wf.py"
    wf.write_text(WORKFLOW)
    profile = tmp_path / "one.yaml"
    profile.write_text(PROFILE)
    out = tmp_path / "out.h5"
    writer = None
    if follow:
        path = tmp_path / "live.h5"
        writer = subprocess.Popen(
            [sys.executable, "-m", "framebag.cli", "simulate", str(path), "--scan", "16x25",
             "--frame", "8x8", "--rate", "40", "--writers", "2", "--seed", "3"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while not path.exists():
            assert writer.poll() is None, writer.stderr.read().decode()
            time.sleep(0.01)
    else:
        path, _ = make_scan(SCAN, (8, 8), seed=3)
    base = [str(wf), str(path), "-o", str(out), "--profile", str(profile),
            "--partition-bytes", str(4 * 64 * 2), "--commit-interval", "0", "--quiet"]
    if follow:
        base += ["--follow", "--timeout", "60", "--latency", "0.05"]
    killed_done: list[np.ndarray] = []
    try:
        for run in range(KILLS + 1):
            before = _done(out)
            args = base + (["--resume"] if run else [])
            env = {"SOAK_DIR": str(soak), "SOAK_RUN": str(run)}
            if run < KILLS:
                left = NFRAMES - int(before.sum())
                assert left > 1, f"run {run}: nothing left to kill; fewer frames per run"
                # at most a third of what is left, so that ten kills fit in one scan
                kill_at = int(rng.integers(1, max(2, left // 3)))
                env["SOAK_KILL_AT"] = str(kill_at)
                env["SOAK_BLOCK_AT"] = str(min(left, kill_at + int(rng.integers(0, 40))))
                proc = _start(args, env)
                try:
                    _wait_for(soak / f"kill-{run}", proc)
                finally:
                    if proc.poll() is None:
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                assert proc.returncode == -signal.SIGKILL
                after = _done(out)
                assert not (before & ~after).any(), f"run {run}: done frames were lost"
                assert not after.all(), f"run {run} finished before its kill"
                killed_done.append(after)
            else:
                proc = _start(args, env)
                _, err = proc.communicate(timeout=180)
                assert proc.returncode == 0, err
    finally:
        if writer is not None:
            writer.wait(timeout=60)
    if follow:
        assert writer.returncode == 0, writer.stderr.read().decode()
        unchanged(path)

    with h5py.File(path, "r") as f:
        data = f[DATA][()].astype(np.int64).reshape(NFRAMES, -1)
    with h5py.File(out, "r") as f:
        g = f["entry/soak"]
        done = g["done"][()].astype(bool).ravel()
        total = g["total"][()].ravel()
        summed = g["summed"][()]
        onehot = g["onehot"][()]
        assert g.attrs["status"] == "complete"
    assert done.all(), f"frames lost: {np.flatnonzero(~done)}"
    np.testing.assert_array_equal(total, data.sum(axis=1))
    np.testing.assert_array_equal(summed.ravel(), data.sum(axis=0))
    np.testing.assert_array_equal(onehot, np.ones(NFRAMES, dtype=np.int64),
                                  err_msg="a frame was folded twice (2) or never (0)")

    # every frame was computed, and a resumed run never computed a frame marked done
    # when the run before it was killed (only the probe looks at one, and folds nothing)
    called = np.zeros(NFRAMES, dtype=np.int64)
    for run in range(KILLS + 1):
        tasks = _calls(soak, run)
        np.add.at(called, tasks, 1)
        # the probe calls the function on one frame: three times when it is cheap (timing)
        assert len(_calls(soak, run, "probe")) <= 3
        if run:
            redone = np.intersect1d(tasks, np.flatnonzero(killed_done[run - 1]))
            assert redone.size == 0, f"run {run} recomputed done frames {redone[:10]}"
    assert (called >= 1).all(), f"never computed: {np.flatnonzero(called == 0)}"
    # the kills landed mid-run: between commits (frames computed, not committed: redone)
    # and after commits (frames kept across a kill)
    assert called.sum() > NFRAMES and killed_done[-1].any()
