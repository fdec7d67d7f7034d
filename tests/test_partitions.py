"""Partitions: runs are contiguous, on one grid, chunk-aligned, and slabs tile them exactly."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from framebag.partitions import blocks, chunk_run, cut, partition_size, selection_shape


@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4), data=st.data())
def test_blocks_tile_a_flat_run_exactly_in_order(shape, data):
    n = int(np.prod(shape))
    start = data.draw(st.integers(0, n - 1))
    stop = data.draw(st.integers(start + 1, n))
    grid = np.arange(n).reshape(shape)
    pieces = []
    for sel, count in blocks(start, stop, tuple(shape)):
        assert int(np.prod(selection_shape(sel))) == count
        pieces.append(grid[sel].ravel())
    assert len(pieces) <= 2 * len(shape) - 1
    np.testing.assert_array_equal(np.concatenate(pieces), np.arange(start, stop))


@given(mask=st.lists(st.booleans(), min_size=1, max_size=200), size=st.integers(1, 17))
def test_cut_gives_contiguous_runs_within_one_block(mask, size):
    flat = np.flatnonzero(mask)
    runs = cut(flat, size)
    covered = np.concatenate([np.arange(a, b) for a, b in runs]) if runs else np.zeros(0, int)
    np.testing.assert_array_equal(covered, flat)
    for a, b in runs:
        assert a // size == (b - 1) // size


def test_chunk_run_along_scan_dims():
    assert chunk_run((20, 30), (1, 1, 64, 64)) == 1
    assert chunk_run((20, 30), (2, 30, 64, 64)) == 60
    assert chunk_run((20, 30), (1, 10, 64, 64)) == 10
    assert chunk_run((4, 5, 6), (1, 5, 6, 8)) == 30
    assert chunk_run((20, 30), None) == 1


def test_partition_size_is_aligned_to_chunks_and_bounded():
    frame = 128 * 128 * 2
    assert partition_size(frame, 16 * 2**20) == 512
    assert partition_size(frame, 16 * 2**20, chunk=30) == 510  # a multiple of the chunk run
    assert partition_size(frame, 5 * frame, chunk=30) == 5  # an even divisor of it
    assert partition_size(frame, 7 * frame, chunk=30) == 6
    assert partition_size(frame, 16 * 2**20, nframes=100, min_partitions=4) == 25
    assert partition_size(1, 2**40) == 65536


def test_task_size_is_a_few_reads_per_worker():
    from framebag.partitions import MAX_READS_PER_TASK, task_size

    frame = 128 * 128 * 2
    # 20,000 cheap frames on 2 workers: 4 tasks of 5 reads of 32 MiB, not 20 tasks
    assert task_size(frame, 32 * 2**20, 1, 20000, 2) == (5000, 1024)
    # a live scan: a task is one read
    assert task_size(frame, 32 * 2**20, 1, None, 2) == (1024, 1024)
    # a small scan: near-equal one-read tasks, so both workers get work
    assert task_size(frame, 32 * 2**20, 1, 100, 2) == (25, 25)
    # a huge scan: tasks stop growing at MAX_READS_PER_TASK reads
    task, read = task_size(frame, 32 * 2**20, 1, 10**7, 2)
    assert read == 1024 and MAX_READS_PER_TASK * 1024 * 0.99 < task <= MAX_READS_PER_TASK * 1024
    # reads stay aligned to the chunk run along the scan
    task, read = task_size(frame, 32 * 2**20, 30, 20000, 2)
    assert read % 30 == 0 and task % 30 == 0
    # the FFT case: 400 frames of 512x512 at 5 ms each: 8 equal tasks, not 7
    assert task_size(512 * 512 * 2, 32 * 2**20, 1, 400, 2, frame_seconds=0.005) == (50, 50)


def test_costly_frames_make_tasks_of_fewer_reads():
    from framebag.partitions import TASK_SECONDS, task_size

    frame = 128 * 128 * 2
    cheap = task_size(frame, 32 * 2**20, 1, 20000, 2, frame_seconds=1e-5)
    costly = task_size(frame, 2 * 2**20, 1, 20000, 2, frame_seconds=0.01)
    assert cheap == (5000, 1024)
    # 10 ms frames: a task (and so its reads) holds about TASK_SECONDS, not a 2 MiB read of 64
    assert costly == (round(TASK_SECONDS / 0.01),) * 2
