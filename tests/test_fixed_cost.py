"""What a run pays once, whatever its size: the output lock and the output's creation.

The profile of a short run (docs/benchmarks.md, "What the profile showed") found
two file system waits in every run's fixed cost on ext4: truncating the lock file
to zero made its close write it out, and renaming the new output over an old one
(``--overwrite``) made the rename write the new file out first. These tests pin
the behaviour that avoids them, and that it keeps each file's contract. No timing
is asserted.
"""

from __future__ import annotations

import os
import socket

import h5py
import numpy as np
import pytest

from framebag import Workflow
from framebag.lock import OutputLock, lock_path
from framebag.output import _replace

from .conftest import DATA, KEY


def test_a_stale_holders_longer_text_is_replaced_by_exactly_ours(tmp_path):
    out = tmp_path / "out.h5"
    lock_path(out).write_text("4000000 a-long-host-name.of-a-dead-run.example.org\n")
    with OutputLock(out):
        assert lock_path(out).read_text() == f"{os.getpid()} {socket.gethostname()}\n"
    assert not lock_path(out).exists()


def test_a_fresh_lock_file_holds_our_pid_and_host(tmp_path):
    out = tmp_path / "out.h5"
    with OutputLock(out):
        assert lock_path(out).read_text() == f"{os.getpid()} {socket.gethostname()}\n"


def test_replacing_an_output_swaps_names_and_leaves_nothing_beside_it(tmp_path, monkeypatch):
    """On Linux the new output takes the old one's name by an exchange of names (no
    rename over an existing file, which ext4 makes wait for a write-out): a reader
    that holds the old file keeps reading it, and no temporary file is left."""
    if not hasattr(os, "memfd_create"):  # a Linux kernel: renameat2 is there
        pytest.skip("renameat2(RENAME_EXCHANGE) is Linux only")
    old, new = tmp_path / "out.h5", tmp_path / ".out.h5.new.tmp"
    with h5py.File(old, "w") as f:
        f["x"] = np.arange(3)
    with h5py.File(new, "w") as f:
        f["x"] = np.arange(5)

    def no_rename_over(*args):
        raise AssertionError("os.replace called: the output was renamed over the old one")

    reader = h5py.File(old, "r")
    monkeypatch.setattr(os, "replace", no_rename_over)
    _replace(str(new), old)
    monkeypatch.undo()
    assert reader["x"].shape == (3,)  # the old file, still open, is whole
    reader.close()
    with h5py.File(old, "r") as f:
        assert f["x"].shape == (5,)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]


def test_replace_onto_a_free_name_is_a_plain_rename(tmp_path):
    src, dst = tmp_path / ".tmp", tmp_path / "out.h5"
    src.write_bytes(b"new")
    _replace(str(src), dst)
    assert dst.read_bytes() == b"new" and not src.exists()


def test_overwrite_twice_gives_the_new_results_and_no_stray_files(make_scan, client, tmp_path):
    path, data = make_scan((300,), (8, 8))
    wf = Workflow("fixed", data=DATA, keys=[KEY])

    @wf.frame
    def total(frame, *, k=1):
        return frame.sum() * k

    out = tmp_path / "res" / "out.h5"
    out.parent.mkdir()
    for k in (1, 3):
        res = wf.run(path, out, client=client, overwrite=True, params={"k": k})
        np.testing.assert_array_equal(res["total"], data.sum(axis=(1, 2)) * k)
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.h5"]


def test_a_run_sends_one_dask_task_per_partition_and_nothing_else(make_scan, client, tmp_path):
    """Each task is one dask task, ``framebag-<workflow>-...``, and nothing a task needs
    is fetched from another worker: the run spec travels with each task."""
    from distributed import get_task_stream

    from framebag.dispatch import task_size

    path, data = make_scan((2000,), (8, 8))
    wf = Workflow("one_each", data=DATA, keys=[KEY])

    @wf.frame
    def total(frame):
        return frame.sum()

    with get_task_stream(client) as ts:
        res = wf.run(path, tmp_path / "out.h5", client=client, partition_bytes=100 * 128)
    np.testing.assert_array_equal(res["total"], data.sum(axis=(1, 2)))
    nworkers = len(client.scheduler_info()["workers"])
    tasks = -(-2000 // task_size(128, 100 * 128, 1, 2000, nworkers, result_nbytes=8)[0])
    keys = [str(t["key"]) for t in ts.data]
    assert len(keys) == tasks and all(k.startswith("framebag-one_each-") for k in keys), keys
    # nothing a task needs is fetched from another worker (the spec travels with each task)
    fetched = [s for t in ts.data for s in t["startstops"] if s["action"] == "transfer"]
    assert not fetched, fetched
