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
