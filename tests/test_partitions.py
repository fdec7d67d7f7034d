"""Scan geometry and task sizing, by their invariants (hypothesis), not by pinned constants.

Runs are contiguous and within one block; slabs tile a run exactly; reads and
tasks stay on the data's chunk grid and within the read budget; the dispatcher
hands every complete frame out exactly once. (The time cap of ``task_size`` is
tested in test_bounds.py.)
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from framebag.dispatch import (
    MAX_PARTITION_FRAMES,
    MAX_READS_PER_TASK,
    READS_PER_SCAN,
    Dispatcher,
    partition_size,
    task_size,
)
from framebag.partitions import blocks, by_block, chunk_run, cut, selection_shape

frame_bytes = st.integers(1, 2**23)
budgets = st.integers(1, 2**27)
chunks = st.integers(1, 2000)


def aligned(n: int, chunk: int) -> bool:
    """On the chunk grid: whole chunks, or an even divisor of one."""
    return n % chunk == 0 or chunk % n == 0


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
    # maximal: two runs touch only across a block edge
    for (_, b), (a, _) in zip(runs, runs[1:]):
        assert a > b or a % size == 0


@given(mask=st.lists(st.booleans(), min_size=1, max_size=200), size=st.integers(1, 17))
def test_by_block_groups_runs_of_one_block_in_order(mask, size):
    runs = cut(np.flatnonzero(mask), size)
    groups = by_block(runs, size)
    assert [r for g in groups for r in g] == runs
    assert all(g for g in groups)
    firsts = [g[0][0] // size for g in groups]
    assert firsts == sorted(set(firsts))  # one group per block, blocks ascending
    assert all(a // size == g[0][0] // size for g in groups for a, _ in g)


@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=3), data=st.data())
def test_chunk_run_is_the_first_chunks_contiguous_stretch(shape, data):
    shape = tuple(shape)
    chunk = tuple(data.draw(st.integers(1, s)) for s in shape)
    flat = np.arange(int(np.prod(shape))).reshape(shape)
    first = np.sort(flat[tuple(slice(0, c) for c in chunk)].ravel())
    stretch = int(np.argmax(np.diff(np.r_[first, -1]) != 1)) + 1
    assert chunk_run(shape, chunk + (7, 7)) == stretch
    assert chunk_run(shape, None) == 1


@given(frame=frame_bytes, budget=budgets, chunk=chunks)
def test_a_read_is_on_the_chunk_grid_and_within_the_budget(frame, budget, chunk):
    n = partition_size(frame, budget, chunk)
    assert 1 <= n <= MAX_PARTITION_FRAMES
    assert aligned(n, chunk)
    assert n * frame <= max(budget, frame)  # over the budget only for one frame too big for it
    if budget // frame >= chunk and chunk <= MAX_PARTITION_FRAMES:
        assert n % chunk == 0  # whole chunks when the budget holds one
        assert (n + chunk) * frame > min(budget, MAX_PARTITION_FRAMES * frame)  # and not fewer


@given(frame=frame_bytes, budget=budgets, chunk=chunks, nframes=st.integers(1, 10**6),
       workers=st.integers(1, 16),
       frame_seconds=st.sampled_from([0.0, 1e-6, 1e-4, 1e-2, 1.0]))
@settings(max_examples=300)
def test_tasks_stay_on_the_chunk_grid_within_the_read_budget(frame, budget, chunk, nframes, workers,
                                                 frame_seconds):
    task, read = task_size(frame, budget, chunk, nframes, workers, frame_seconds)
    full_read = partition_size(frame, budget, chunk)
    assert 1 <= read <= task and read <= full_read
    assert aligned(task, chunk) and aligned(read, chunk)
    assert task % read == 0  # a task is whole reads: a partial never straddles two tasks
    assert read * frame <= max(budget, frame)  # the read budget bounds a worker's memory
    assert task <= MAX_READS_PER_TASK * read
    if nframes > 2 * workers * full_read and full_read % chunk == 0:
        # a big scan keeps every worker busy, or leaving one idle costs no time: the
        # busiest worker does no more reads than with one read per task
        assert math.ceil(nframes / task) >= workers or \
            busiest(nframes, task, workers) <= math.ceil(math.ceil(nframes / read) / workers) * read


@given(frame=frame_bytes, budget=budgets, chunk=chunks, nframes=st.integers(1, 10**6),
       frame_seconds=st.sampled_from([0.0, 1e-6, 1e-4, 1e-2, 1.0]))
@settings(max_examples=200)
def test_the_read_does_not_depend_on_the_number_of_workers(frame, budget, chunk, nframes,
                                                           frame_seconds):
    """The read is the grid of partials: the same on any number of workers, so float folds
    combine the same partials in the same order (bit-identical results)."""
    reads = {task_size(frame, budget, chunk, nframes, w, frame_seconds)[1] for w in range(1, 17)}
    assert len(reads) == 1, reads


@given(frame=frame_bytes, budget=budgets, chunk=chunks, nframes=st.integers(1, 10**6),
       workers=st.integers(1, 16))
@example(frame=16384, budget=32 * 2**20, chunk=101, nframes=1010, workers=2)
def test_a_chunk_without_a_divisor_near_the_share_is_read_whole(frame, budget, chunk, nframes,
                                                                workers):
    """A chunk of 101 frames has no divisor but 1 near a 16th of a 1010-frame scan: reads
    of one frame would each decompress the chunk again (1010 tasks where 10 do)."""
    task, read = task_size(frame, budget, chunk, nframes, workers)
    full_read = partition_size(frame, budget, chunk)
    if full_read % chunk == 0:  # the budget holds a chunk: only the scan's size cuts the read
        assert math.ceil(nframes / read) <= max(2 * READS_PER_SCAN,
                                                math.ceil(nframes / full_read))


def busiest(nframes: int, task: int, workers: int) -> int:
    """Frames done by the busiest worker when tasks go, in scan order, to the least busy."""
    loads = [0] * workers
    for start in range(0, nframes, task):
        loads[loads.index(min(loads))] += min(task, nframes - start)
    return max(loads)


@given(frame=frame_bytes, budget=budgets, nframes=st.integers(1, 10**5),
       workers=st.integers(1, 16))
def test_without_chunks_a_finished_scan_keeps_every_worker_busy(frame, budget, nframes,
                                                                workers):
    task, read = task_size(frame, budget, 1, nframes, workers)
    reads = math.ceil(nframes / read)
    # the busiest worker does no more reads than with one read per task: tasks of several
    # reads cost no time at the end of the run (the last read of the scan may be short);
    # a worker is left without a task only where that holds (4 reads on 3 workers: two
    # tasks of two reads end when four tasks of one would)
    assert busiest(nframes, task, workers) <= math.ceil(reads / workers) * read
    if reads % workers == 0:
        assert math.ceil(nframes / task) >= workers


@given(frame=frame_bytes, budget=budgets, chunk=chunks, workers=st.integers(1, 16))
def test_a_live_scan_goes_out_one_read_per_task(frame, budget, chunk, workers):
    read = partition_size(frame, budget, chunk)
    assert task_size(frame, budget, chunk, None, workers) == (read, read)


@given(nframes=st.integers(1, 120), size=st.integers(1, 20), growing=st.booleans(),
       steps=st.lists(st.tuples(st.lists(st.integers(0, 119), max_size=30),
                                st.floats(0, 1)), max_size=8),
       latency=st.floats(0, 0.5))
def test_dispatcher_hands_out_each_complete_frame_once(nframes, size, growing, steps, latency):
    d = Dispatcher(nframes, size, latency, growing)
    complete = np.zeros(nframes, dtype=bool)
    handed = np.zeros(nframes, dtype=int)
    now = 0.0
    for new, dt in steps:
        complete[[i for i in new if i < nframes]] = True
        now += dt
        for a, b in d.due(complete, now):
            assert a // size == (b - 1) // size  # within one block
            assert complete[a:b].all()
            handed[a:b] += 1
    for a, b in d.due(complete, now + 10, flush=True):
        assert complete[a:b].all()
        handed[a:b] += 1
    np.testing.assert_array_equal(handed, complete.astype(int))  # each exactly once
    np.testing.assert_array_equal(d.dispatched, complete)


@given(size=st.integers(2, 20), latency=st.floats(0.01, 1), nblocks=st.integers(1, 5))
def test_dispatcher_waits_latency_only_for_a_block_that_is_not_complete(size, latency,
                                                                           nblocks):
    n = size * nblocks
    d = Dispatcher(n, size, latency)
    complete = np.zeros(n, dtype=bool)
    complete[: size - 1] = True  # one frame short of the first block
    complete[size:] = True  # every other block full
    full = [(a, b) for a, b in cut(np.arange(size, n), size)]
    assert d.due(complete, 0.0) == full
    assert d.due(complete, latency / 2) == []
    assert d.due(complete, latency) == [(0, size - 1)]
    complete[size - 1] = True  # the rest of the block completes it: it goes at once
    assert d.due(complete, latency) == [(size - 1, size)]


def test_dispatcher_marks_resumed_frames_and_grows():
    d = Dispatcher(10, 4, 0.0, growing=True)
    d.mark(np.arange(4))
    complete = np.ones(10, dtype=bool)
    assert d.due(complete, 1.0) == [(4, 8), (8, 10)]
    d.grow(14)
    complete = np.r_[complete, np.ones(4, dtype=bool)]
    assert d.due(complete, 2.0) == [(10, 12), (12, 14)]


@given(frame=frame_bytes, budget=budgets, chunk=chunks, nframes=st.integers(1, 10**6),
       workers=st.integers(1, 16), frame_seconds=st.sampled_from([0.0, 1e-4, 1e-2, 1.0]),
       grid=st.one_of(st.integers(-3, 10**6), st.booleans(), st.floats(0, 1e6), st.none()))
def test_a_recorded_grid_is_reused_only_when_it_fits(frame, budget, chunk, nframes, workers,
                                                     frame_seconds, grid):
    """A resumed run's ``grid`` (read back from an output: any value) is the read again
    when it is whole frames, aligned to the chunks and within the read budget; else the
    read is computed as for a new run."""
    task, read = task_size(frame, budget, chunk, nframes, workers, frame_seconds, grid=grid)
    fresh = task_size(frame, budget, chunk, nframes, workers, frame_seconds)
    most = partition_size(frame, budget, chunk)
    fits = (type(grid) is int and 1 <= grid <= most
            and (grid % chunk == 0 or chunk % grid == 0))
    assert (read == grid) if fits else ((task, read) == fresh)
    assert task % read == 0 and read * frame <= max(budget, frame)
