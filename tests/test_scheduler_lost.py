"""A dask scheduler killed (SIGKILL) in the middle of a run: the user is told in one
sentence that names the scheduler and says the output can be resumed, and ``--resume``
finishes the output with every frame folded once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

SLOW = '''
import os
import time

from framebag import Workflow

workflow = Workflow("slow", data="entry/data/data", keys=["entry/keys/key_1"])


@workflow.frame(fold="sum")
def total(frame, gate=""):
    if gate and os.environ.get("DASK_WORKER_LABEL") == "gated":
        open(gate, "a").close()  # the test kills the scheduler once a worker is this far
        time.sleep(0.05)
    return frame.astype("int64").sum()
'''


def _wait_for(path: Path, proc: subprocess.Popen, what: str) -> None:
    while not path.exists():
        assert proc.poll() is None, f"{what} ended early"
        time.sleep(0.05)


@pytest.mark.parametrize("where", ["worker", "driver"])
def test_a_scheduler_killed_mid_run_is_one_sentence_and_resumable(make_scan, tmp_path, where):
    """Killed while a worker runs a task, or while the driver probes the first frame
    (before any task is out: the run then hung, asking the lost scheduler for its
    workers every second, each ask waiting out the connect timeout)."""
    path, data = make_scan((6, 10))
    module = tmp_path / "slow.py"
    module.write_text(SLOW)
    out = tmp_path / "o.h5"
    gate = tmp_path / "gate"
    bindir = Path(sys.executable).parent
    sfile = tmp_path / "scheduler.json"
    env = dict(os.environ)

    def label(process: str) -> str:  # the process that opens the gate and slows down
        return "gated" if process == where else "not"

    env.pop("DASK_LOGGING__DISTRIBUTED", None)
    sched = subprocess.Popen([str(bindir / "dask"), "scheduler", "--host", "127.0.0.1",
                              "--port", "0", "--no-dashboard", "--scheduler-file", str(sfile)],
                             stderr=subprocess.DEVNULL)
    worker = run = None
    try:
        _wait_for(sfile, sched, "the scheduler")
        time.sleep(0.2)  # the file is written whole just after it appears
        address = json.loads(sfile.read_text())["address"]
        worker = subprocess.Popen([str(bindir / "dask"), "worker", address, "--nthreads", "1",
                                   "--no-dashboard", "--death-timeout", "10"],
                                  env=dict(env, DASK_WORKER_LABEL=label("worker")),
                                  stderr=subprocess.DEVNULL)
        prof = tmp_path / "here.yaml"
        prof.write_text(f"cluster: address\naddress: {address}\n")
        run = subprocess.Popen([sys.executable, "-m", "framebag.cli", "run", str(module),
                                str(path), "-o", str(out), "--profile", str(prof),
                                "--set", f"gate={gate}"],
                               stderr=subprocess.PIPE, text=True,
                               env=dict(env, DASK_WORKER_LABEL=label("driver")))
        _wait_for(gate, run, "the run")
        sched.send_signal(signal.SIGKILL)
        _, err = run.communicate(timeout=150)
    finally:
        for p in (sched, worker, run):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    lines = err.strip().splitlines()
    last = lines[-1]
    assert run.returncode == 2, err
    # the dashboard, the frames to process (not yet when killed in the probe), the error
    assert all(line.startswith("framebag: ") for line in lines) and len(lines) <= 3, err
    assert last.startswith(f"framebag: error: the connection to the dask scheduler {address} "
                           "was lost"), err
    assert last.endswith("rerun with --resume"), err
    again = subprocess.run([sys.executable, "-m", "framebag.cli", "run", str(module), str(path),
                            "-o", str(out), "--profile", "inline", "--set", f"gate={gate}",
                            "--resume"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    with h5py.File(out, "r") as f:
        g = f["entry/slow"]
        assert g["done"][()].all()
        assert int(g["total"][()]) == int(data.astype(np.int64).sum())
