"""``--profile inline``: the run in the driver process, where pdb works in a workflow function."""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np

from framebag import load_workflow
from framebag.simulate import expected_frames, simulate

WORKFLOW = '''
from framebag import Workflow

workflow = Workflow("debugged", data="entry/data/data", keys=["entry/keys/key_1"])


@workflow.frame(fold="sum")
def total(frame, stop_at: int = -1):
    value = int(frame.sum(dtype="int64"))
    if value == stop_at:
        breakpoint()
    return value
'''


def test_pdb_in_a_workflow_function_stops_at_the_terminal(tmp_path):
    path = tmp_path / "in.h5"
    simulate(path, (3, 4), (8, 8), rate=1e6)
    frames = expected_frames((3, 4), (8, 8)).astype("int64").sum(axis=(2, 3))
    stop_at = int(frames[2, 1])  # not the first frame: the probe's, on the driver anyway
    wf = tmp_path / "debugged.py"
    wf.write_text(WORKFLOW)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONBREAKPOINT"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "framebag.cli", "run", str(wf), str(path), "-o",
         str(tmp_path / "out.h5"), "--profile", "inline", "--set", f"stop_at={stop_at}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env)
    out, err = proc.communicate("p value * 2\np __import__('os').getpid()\nc\n", timeout=300)
    assert proc.returncode == 0, err
    printed = out.split("(Pdb)")
    assert len(printed) >= 3, out
    assert printed[1].strip() == str(2 * stop_at), out  # the frame's own value, seen in pdb
    assert int(printed[2].strip()) == proc.pid, out  # in the driver process itself
    with h5py.File(tmp_path / "out.h5", "r") as f:
        np.testing.assert_array_equal(f["entry/debugged/total"][()], frames.sum())


def test_the_python_api_takes_the_inline_profile(tmp_path):
    path = tmp_path / "in.h5"
    simulate(path, (2, 3), (4, 4), rate=1e6)
    wf_path = tmp_path / "debugged.py"
    wf_path.write_text(WORKFLOW)
    res = load_workflow(wf_path).run(path, tmp_path / "out.h5", profile="inline")
    expected = expected_frames((2, 3), (4, 4)).astype("int64").sum()
    assert res["total"] == expected


def test_a_client_of_an_ended_cluster_block_is_refused_in_one_sentence(tmp_path):
    import pytest

    import framebag

    path = tmp_path / "in.h5"
    simulate(path, (2, 3), (4, 4), rate=1e6)
    wf_path = tmp_path / "debugged.py"
    wf_path.write_text(WORKFLOW)
    wf = load_workflow(wf_path)
    with framebag.cluster("inline") as client:
        wf.run(path, tmp_path / "a.h5", client=client)
    with pytest.raises(framebag.FramebagError, match="closed"):  # was 'IOLoop is closed'
        wf.run(path, tmp_path / "b.h5", client=client)


def test_pdb_without_a_terminal_names_the_inline_profile():
    import bdb

    import numpy as np
    import pytest

    from framebag import Workflow
    from framebag.errors import FramebagError

    with pytest.raises(FramebagError, match="--profile inline"):  # was 'BdbQuit: ' alone
        Workflow._fail("total", 5, (2, 3), bdb.BdbQuit(), "raise", [],
                       np.ones(1, bool), 0)
