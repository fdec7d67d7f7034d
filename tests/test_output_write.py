"""OutputFile.write_stack: the stacked values of one commit, many runs in one write."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from framebag.errors import FramebagError
from framebag.output import OutputFile, Schema


def _output(tmp_path, scan_shape, vshape=(), growing=False) -> OutputFile:
    schema = Schema(v=(True, vshape, np.dtype("int64")))
    return OutputFile.create(tmp_path / "out.h5", "wf", scan_shape, schema, {}, growing=growing)


@pytest.mark.parametrize("scan_shape, vshape", [((7, 9), ()), ((7, 9), (3,)), ((4, 5, 6), ()),
                                                ((63,), (2, 2))])
def test_runs_of_a_commit_land_at_their_indices_and_leave_the_rest(tmp_path, scan_shape, vshape):
    n = int(np.prod(scan_shape))
    value = np.arange(1, n + 1, dtype=np.int64).reshape(n, *([1] * len(vshape))) * 10
    value = np.broadcast_to(value, (n, *vshape)) + np.arange(int(np.prod(vshape))).reshape(vshape)
    out = _output(tmp_path, scan_shape, vshape)
    try:
        # an earlier commit: every third frame
        first = [(i, i + 1, value[i : i + 1]) for i in range(0, n, 3)]
        out.write_stack("v", first)
        # a fragmented commit, in no order: single frames, and runs of adjacent frames
        rest = [i for i in range(n) if i % 3]
        runs = [(i, i + 1, value[i : i + 1]) for i in rest]
        np.random.default_rng(0).shuffle(runs)
        out.write_stack("v", runs)
        # a long run across rows, overwriting with the same values, next to a short one
        out.write_stack("v", [(n - 1, n, value[n - 1 :]), (2, n - 1, value[2 : n - 1])])
    finally:
        out.close()
    with h5py.File(tmp_path / "out.h5", "r") as f:
        got = f["entry/wf/v"][()]
    np.testing.assert_array_equal(got.reshape(n, *vshape), value)


def test_a_part_of_the_scan_is_left_untouched(tmp_path):
    out = _output(tmp_path, (5, 8))
    try:
        out.write_stack("v", [(9, 10, np.array([7])), (3, 6, np.array([1, 2, 3])),
                              (6, 8, np.array([4, 5])), (30, 40, np.arange(10) + 100)])
    finally:
        out.close()
    want = np.zeros(40, dtype=np.int64)
    want[9], want[3:8], want[30:40] = 7, [1, 2, 3, 4, 5], np.arange(10) + 100
    with h5py.File(tmp_path / "out.h5", "r") as f:
        np.testing.assert_array_equal(f["entry/wf/v"][()].ravel(), want)


def test_batches_split_a_large_commit_and_overlap_is_refused(tmp_path):
    out = _output(tmp_path, (50,), (4,))
    values = np.arange(200, dtype=np.int64).reshape(50, 4)
    try:
        runs = [(i, i + 1, values[i : i + 1]) for i in range(0, 50, 2)]
        out.write_stack("v", runs, batch_bytes=3 * 32)  # a write per 3 frames
        with pytest.raises(FramebagError, match="overlapping"):
            out.write_stack("v", [(1, 4, values[1:4]), (3, 5, values[3:5])])
    finally:
        out.close()
    want = values.copy()
    want[1::2] = 0
    with h5py.File(tmp_path / "out.h5", "r") as f:
        np.testing.assert_array_equal(f["entry/wf/v"][()], want)


# commit cost proportional to change (issue 12 item 5) ----------------------------------


def _wchar() -> int:
    """Bytes this process has handed to write() so far (``/proc/self/io``)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("wchar:"))


def test_a_commit_into_a_million_frame_stack_writes_what_changed(tmp_path):
    out = _output(tmp_path, (1000, 1000))  # the whole stack is 8 MB, done 1 MB
    written = []
    try:
        for k in range(10):  # one row of 1,000 frames per commit, in scan order
            w = _wchar()
            out.write_stack("v", [(k * 1000, (k + 1) * 1000, np.full(1000, k + 1))])
            out.commit(np.arange(k * 1000, (k + 1) * 1000), {}, {}, [])
            written.append(_wchar() - w)
    finally:
        out.close()
    # 8 kB of values and 1 kB of done flags: a few 64 KiB chunks, never the whole
    assert max(written) < 400_000, written
    with h5py.File(tmp_path / "out.h5", "r") as f:
        assert f["entry/wf/done"][()].sum() == 10_000 and f["entry/wf/done"][:10].all()
        np.testing.assert_array_equal(f["entry/wf/v"][:10, 0], np.arange(1, 11))


def test_fold_state_is_checkpointed_when_due_and_the_last_commit_at_close(tmp_path):
    from framebag.folds import resolve
    from framebag.output import _read_checkpoint

    fold = resolve("var")
    rng = np.random.default_rng(0)
    schema = Schema(spread=(False, (512, 512), np.dtype(np.float64)))
    schema.accs["spread"] = first = fold.add_many(None, rng.random((2, 512, 512)))
    out = OutputFile.create(tmp_path / "out.h5", "wf", (8,), schema, {})
    second = fold.combine(first, fold.add_many(None, rng.random((2, 512, 512))))
    try:
        out.commit(np.arange(2), lambda: {"spread": fold.finalize(first)}, {"spread": first}, [])
        w = _wchar()
        out.commit(np.arange(2, 4), lambda: {"spread": fold.finalize(second)},
                   {"spread": second}, [])
        deferred = _wchar() - w
        assert out.deferred and out.generation == 1  # the 4 MiB state waits its turn
        with h5py.File(tmp_path / "out.h5", "r", swmr=True) as f:  # a live reader
            assert f["entry/wf/done"][()].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
            np.testing.assert_array_equal(f["entry/wf/spread"][()], fold.finalize(first))
    finally:
        out.close()
    assert deferred < 100_000, deferred
    with h5py.File(tmp_path / "out.h5", "r") as f:
        state = _read_checkpoint(f["entry/wf/checkpoint"])
        assert f["entry/wf/done"][()].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
        np.testing.assert_array_equal(f["entry/wf/spread"][()], fold.finalize(second))
    assert state["generation"] == 2
    assert np.unpackbits(state["done"], count=8).tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    for have, want in zip(state["accs"]["spread"], second):
        np.testing.assert_array_equal(have, want)


@pytest.mark.parametrize("scan_shape", [(6, 10), (3, 4, 9), (40,)])
@pytest.mark.parametrize("seed", range(4))
def test_single_frames_at_strides_land_where_they_belong(tmp_path, scan_shape, seed):
    """One-frame runs at a fixed step along a row (a strided ROI's commit) are written as
    one strided selection per row; mixed with other steps, rows and longer runs, every
    value lands at its frame and no other frame is touched."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(scan_shape))
    row = scan_shape[-1]
    pick = np.zeros(n, dtype=bool)
    pick[rng.integers(0, 3)::rng.integers(2, 4)] = True  # a stride across the scan
    pick[rng.integers(0, n, size=n // 5)] ^= True        # and some noise in it
    value = np.arange(1, n + 1, dtype=np.int64) * 7
    runs = [(int(i), int(i) + 1, value[i : i + 1]) for i in np.flatnonzero(pick)]
    if seed % 2:  # adjacent frames as one run, as a task's partial gives them
        from framebag.partitions import cut

        runs = [(a, b, value[a:b]) for a, b in cut(np.flatnonzero(pick), row)]
    out = _output(tmp_path, scan_shape)
    try:
        out.write_stack("v", runs)
    finally:
        out.close()
    want = np.where(pick, value, 0)
    with h5py.File(tmp_path / "out.h5", "r") as f:
        np.testing.assert_array_equal(f["entry/wf/v"][()].ravel(), want)
