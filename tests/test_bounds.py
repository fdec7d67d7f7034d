"""Bounded loss and memory: no task holds more than about TASK_SECONDS of work or more
than the read budget of stacked results, and no commit more than the read budget."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from framebag import FramebagError, Workflow
from framebag.dispatch import TASK_SECONDS, task_size


def _aligned(size: int, chunk: int) -> bool:
    return size % chunk == 0 or chunk % size == 0


@settings(max_examples=400, deadline=None)
@given(
    frame_nbytes=st.integers(1, 2**24),
    target=st.integers(1, 2**27),
    chunk=st.integers(1, 300),
    nframes=st.none() | st.integers(1, 10**7),
    workers=st.integers(1, 16),
    frame_seconds=st.just(0.0) | st.floats(1e-7, 30.0),
    result_nbytes=st.just(0) | st.integers(1, 2**26),
)
def test_task_size_invariants(frame_nbytes, target, chunk, nframes, workers, frame_seconds,
                              result_nbytes):
    task, read = task_size(frame_nbytes, target, chunk, nframes, workers, frame_seconds,
                           result_nbytes)
    assert 1 <= read <= task
    # chunk-aligned: no chunk is read by two tasks, nor by two reads of one task
    assert _aligned(task, chunk) and _aligned(read, chunk)
    if nframes is None:
        assert task == read  # a live scan: one read per task
    # the read budget bounds a read (one frame when a frame alone is over it)
    assert read * frame_nbytes <= max(target, frame_nbytes)
    # time: about TASK_SECONDS of probed work, or one frame when one frame is over it
    if frame_seconds:
        assert task * frame_seconds <= max(TASK_SECONDS, frame_seconds) * (1 + 1e-6)
    # memory: the read budget bounds a task's stacked results, whatever the scan size
    if result_nbytes:
        assert task * result_nbytes <= max(target, result_nbytes)
    if nframes:
        assert task % read == 0  # whole reads: each partial lies in one task


def test_a_small_scan_of_costly_frames_is_cut_by_time():
    # the case of the issue: 4608 frames of 1 s each, 2 workers. It was 500-frame tasks
    # (500 s of work lost to a crash); now every task is one frame
    assert task_size(4608, 32 * 2**20, 1, 2000, 2, frame_seconds=1.0) == (1, 1)
    task, read = task_size(4608, 32 * 2**20, 1, 2000, 2, frame_seconds=0.01)
    assert task * 0.01 <= TASK_SECONDS


def test_frame_sized_results_make_tasks_no_bigger_than_the_read_budget():
    frame = 256 * 256 * 2
    budget = 32 * 2**20
    # 1 GiB and 4 GiB of uint16 frames, a stack of the frame as float64 (4x the frame)
    for nframes in (2**30 // frame, 2**32 // frame):
        task, read = task_size(frame, budget, 1, nframes, 2, 1e-4, result_nbytes=4 * frame)
        assert task * 4 * frame <= budget
    # the task does not grow with the scan
    assert task_size(frame, budget, 1, 2**30 // frame, 2, 1e-4, 4 * frame) == \
        task_size(frame, budget, 1, 2**32 // frame, 2, 1e-4, 4 * frame)


STACKS = Workflow("stacks", data="entry/data/data", keys=["entry/keys/key_1"])


@STACKS.frame
def image(frame):
    return frame.astype(np.float64)  # the frame itself: 4x a uint16 frame's bytes


@STACKS.frame(fold="sum")
def ones(frame):
    return np.int64(1)


@pytest.mark.parametrize("follow", [False, True])
def test_no_task_or_commit_holds_more_than_the_read_budget(make_scan, client, tmp_path,
                                                           monkeypatch, follow):
    from framebag import engine

    path, data = make_scan((20, 20), (8, 8))  # 128-byte frames, 512 bytes of results each
    budget = 2048  # 16 frames per read, 4 frames of stacked results
    commits: list[list[int]] = []
    real = engine._Job._commit

    def spy(self, partials, *args, **kwargs):  # records what each commit holds, then commits
        commits.append([sum(v.nbytes for v in p.stacks.values()) for p in partials])
        return real(self, partials, *args, **kwargs)

    monkeypatch.setattr(engine._Job, "_commit", spy)
    res = STACKS.run(path, tmp_path / "out.h5", client=client, partition_bytes=budget,
                     follow=follow, timeout=5)
    np.testing.assert_array_equal(res["image"], data.astype(np.float64))
    assert int(res["ones"]) == 400 and res.done.all()
    tasks = [b for c in commits for b in c]
    assert sum(tasks) == data.size * 8
    assert max(tasks) <= budget, "a task held more stacked results than the read budget"
    assert max(sum(c) for c in commits) <= budget, "a commit held more than the read budget"


def test_results_are_read_from_the_output_when_looked_up(make_scan, client, tmp_path):
    path, data = make_scan((4, 5), (8, 8))
    out = tmp_path / "out.h5"
    res = STACKS.run(path, out, client=client)
    assert not isinstance(dict.__getitem__(res, "image"), np.ndarray)  # not read yet
    assert sorted(res) == ["image", "ones"] and len(res) == 2
    np.testing.assert_array_equal(dict(res)["image"], data.astype(np.float64))
    assert [k for k, _ in res.items()] == ["image", "ones"] and int(res.get("ones")) == 20
    stale = STACKS.run(path, out, client=client, overwrite=True)
    STACKS.run(path, out, client=client, overwrite=True)  # another run rewrites the output
    with pytest.raises(FramebagError, match="changed after the run ended"):
        stale["image"]
    np.testing.assert_array_equal(res["image"], data.astype(np.float64))  # read before: kept
