"""A strided ROI (``--roi :,::2``): many one-frame runs in one read, applied in one call.

The pieces of one read are compacted into one stack and applied once with their flat
indices (:meth:`Workflow.apply`'s ``flat``), never once per piece. What that must keep,
on real files: only the ROI's frames reach a function, each with its own scan index;
the bits of every fold are those of one call per run merged (:meth:`Workflow.merge`,
the path a read of one-frame runs took before); the results equal numpy's; a skipped
frame is named by its own scan index.
"""

from __future__ import annotations

import numpy as np
import pytest

from framebag import Workflow, histogram
from framebag.keys import KeyFollower
from framebag.tasks import RunSpec, process_partition

from .conftest import DATA, KEY, write_scan

SCAN = (6, 10)
FRAME = (4, 5)
COLS = (slice(None), slice(None, None, 2))  # --roi :,::2


def _roi_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    flat = np.flatnonzero(mask.ravel())
    edges = np.flatnonzero(np.diff(flat) != 1) + 1
    return [(int(r[0]), int(r[-1]) + 1) for r in np.split(flat, edges)]


def _every_fold(wf: Workflow, roi: np.ndarray, bad: tuple[tuple[int, ...], ...] = ()) -> None:
    """Per-frame and batched functions of every fold kind; two refuse a frame outside
    ``roi`` or one whose content is not its scan index's, one fails on the ``bad`` ones."""

    def check(frame, index):
        if not roi[tuple(index)] or frame[0, 0] != np.ravel_multi_index(index, roi.shape):
            raise AssertionError(f"frame {index} outside the ROI, or another frame's")

    @wf.frame(name="total")
    def total(frame, index):
        check(frame, index)
        if tuple(index) in bad:
            raise ValueError("bad frame")
        return frame.sum()

    wf.frame(lambda frame: frame.astype(np.float32) / 7, fold="sum", name="fsum")
    wf.frame(lambda frame: frame, fold="sum", name="isum")
    for fold in ("mean", "var", "std", "min", "max"):
        wf.frame(lambda frame: frame / 3.0, fold=fold, name=fold)
    wf.frame(lambda frame: frame, fold=histogram(bins=16, range=(0, 1000)), name="hist")
    wf.frame(lambda frame: frame[: int(frame[1, 1]) % 3, :2].astype(np.float64),
             fold="ragged", name="rows")
    wf.frame(lambda frame: {"s": frame[1], "m": frame.mean(), "t": frame / 9.0},
             outputs={"s": "stack", "m": "mean", "t": "sum"}, name="out")

    @wf.frames(name="bs")
    def bs(frames, index):
        for f, i in zip(frames, index):
            check(f, i)
        return frames.sum(axis=(1, 2))

    wf.frames(lambda frames: frames / 11.0, fold="sum", name="bsum")
    wf.frames(lambda frames: frames / 13.0, fold="mean", name="bmean")
    wf.frame(lambda frame: frame, fold="min", name="imin")  # integers: folded as one run
    wf.frames(lambda frames: frames, fold="sum", name="bisum")
    wf.frames(lambda frames: frames, fold="max", name="bimax")
    wf.frames(lambda frames: [f[: int(f[2, 2]) % 2] for f in frames], fold="ragged",
              name="brows")


def _scan(tmp_path, unchanged, scan: tuple[int, ...] = SCAN) -> tuple[object, np.ndarray]:
    """A real scan file whose every frame holds its flat index at [0, 0]."""
    rng = np.random.default_rng(3)
    data = rng.integers(0, 1000, size=scan + FRAME).astype(np.uint16)
    data[..., 0, 0] = np.arange(np.prod(scan)).reshape(scan)
    path = write_scan(tmp_path / "scan.h5", data, len(scan))
    unchanged(path)
    return path, data


def _same(a, b) -> None:
    """``a`` and ``b`` hold the same bits: arrays, numbers, tuples, dicts, None."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, (tuple, list)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    elif a is None:
        assert b is None
    else:
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()


def test_a_read_of_one_frame_runs_is_applied_once(tmp_path, unchanged) -> None:
    """``:,::2`` gives one-frame runs: each read's are applied in one call (a batched
    function sees one stack per read, of the ROI's frames only), not one per run."""
    path, data = _scan(tmp_path, unchanged)
    info = KeyFollower(path, DATA, [KEY]).data
    wf = Workflow("strided", data=DATA, keys=[KEY])
    seen: list[np.ndarray] = []

    @wf.frames
    def flats(frames, index):
        seen.append(np.ravel_multi_index(tuple(index.T), SCAN))
        return frames[:, 0, 0]

    mask = np.zeros(SCAN, dtype=bool)
    mask[COLS] = True
    runs = _roi_runs(mask)
    assert len(runs) == 30
    parts = process_partition(runs, RunSpec(info, wf, {}, "raise", False, 20))
    assert [len(s) for s in seen] == [10, 10, 10]  # one call per read of 20 frames
    np.testing.assert_array_equal(np.concatenate(seen), np.flatnonzero(mask))
    assert [(p.start, p.stop) for p in parts] == [(0, 19), (20, 39), (40, 59)]
    for p in parts:
        np.testing.assert_array_equal(p.done, mask.ravel()[p.start:p.stop])
        want = data.reshape(-1, *FRAME)[p.start:p.stop, 0, 0] * p.done
        _same(p.stacks["flats"], want)


@pytest.mark.parametrize("on_error, bad", [("raise", ()), ("skip", ((2, 4), (3, 0)))])
def test_one_call_gives_the_bits_of_one_call_per_run(tmp_path, unchanged, on_error, bad) -> None:
    """Runs of 1 to 3 frames with gaps, compacted into one call, give the partial that one
    call per run and :meth:`Workflow.merge` gave: every fold's bits, done, errors, kinds."""
    _, data = _scan(tmp_path, unchanged)
    frames = data.reshape(-1, *FRAME)
    wf = Workflow("bits", data=DATA, keys=[KEY])
    mask = np.zeros(SCAN, dtype=bool)
    mask[1:5, ::2] = True
    mask[2, 2:5] = True  # a run of 3 frames: 22, 23, 24
    mask[3, 9] = False
    _every_fold(wf, mask, bad)
    runs = _roi_runs(mask)
    assert {b - a for a, b in runs} == {1, 3}
    lo, hi = runs[0][0], runs[-1][1]
    flat = np.flatnonzero(mask.ravel())
    one = wf.apply(frames[flat], lo, SCAN, {}, on_error, flat=flat)
    per_run = [wf.apply(frames[a:b], a, SCAN, {}, on_error) for a, b in runs]
    merged = wf.merge(per_run, lo, hi)
    assert (one.start, one.stop) == (lo, hi)
    _same(one.done, merged.done)
    _same(one.stacks, merged.stacks)
    _same(one.accs, merged.accs)
    _same(one.ragged, merged.ragged)
    assert one.errors == merged.errors
    assert one.kinds == merged.kinds
    skipped = [np.ravel_multi_index(i, SCAN) for i in bad]
    assert [e[0] for e in one.errors] == skipped
    np.testing.assert_array_equal(np.flatnonzero(one.done) + lo,
                                  [i for i in flat if i not in skipped])


def test_every_fold_of_a_strided_roi_equals_numpy(tmp_path, unchanged) -> None:
    """``roi=(:, ::2)`` through a real run (each read holds several one-frame runs): each
    result equals numpy over the ROI's frames, and a skipped frame is named by its scan
    index."""
    scan = (8, 40)
    path, data = _scan(tmp_path, unchanged, scan)
    wf = Workflow("numpy", data=DATA, keys=[KEY])
    mask = np.zeros(scan, dtype=bool)
    mask[COLS] = True
    _every_fold(wf, mask, bad=((3, 4),))
    res = wf.run(path, tmp_path / "o.h5", profile="inline", roi=COLS, on_error="skip",
                 progress=False)
    assert [(e[0], e[1]) for e in res.errors] == [((3, 4), "total")]
    assert "bad frame" in res.errors[0][2]
    mask[3, 4] = False
    np.testing.assert_array_equal(res.done, mask)
    sel = data[mask].astype(np.float64)  # the ROI's frames done, in scan order
    np.testing.assert_array_equal(res["total"][mask], data[mask].sum(axis=(1, 2)))
    assert not res["total"][~mask].any()
    np.testing.assert_array_equal(res["isum"], data[mask].sum(axis=0, dtype=np.uint64))
    np.testing.assert_allclose(res["fsum"], (data[mask].astype(np.float32) / 7).sum(
        axis=0, dtype=np.float64), rtol=1e-12)
    np.testing.assert_allclose(res["mean"], (sel / 3).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(res["var"], (sel / 3).var(axis=0), rtol=1e-10)
    np.testing.assert_allclose(res["std"], (sel / 3).std(axis=0), rtol=1e-10)
    np.testing.assert_array_equal(res["min"], (sel / 3).min(axis=0))
    np.testing.assert_array_equal(res["max"], (sel / 3).max(axis=0))
    np.testing.assert_array_equal(res["hist"],
                                  np.histogram(data[mask], bins=16, range=(0, 1000))[0])
    for iy, ix in np.argwhere(mask):
        f = data[iy, ix]
        np.testing.assert_array_equal(res["rows"][iy, ix], f[: int(f[1, 1]) % 3, :2])
        np.testing.assert_array_equal(res["brows"][iy, ix], f[: int(f[2, 2]) % 2])
    assert not res["rows"].counts[~mask].any() and not res["brows"].counts[~mask].any()
    np.testing.assert_array_equal(res["out_s"][mask], data[mask][:, 1])
    np.testing.assert_allclose(res["out_m"], sel.mean(axis=(1, 2)).mean(), rtol=1e-12)
    np.testing.assert_allclose(res["out_t"], (sel / 9).sum(axis=0), rtol=1e-12)
    np.testing.assert_array_equal(res["bs"][mask], data[mask].sum(axis=(1, 2)))
    np.testing.assert_allclose(res["bsum"], (sel / 11).sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(res["bmean"], (sel / 13).mean(axis=0), rtol=1e-12)
    np.testing.assert_array_equal(res["imin"], data[mask].min(axis=0))
    np.testing.assert_array_equal(res["bisum"], data[mask].sum(axis=0, dtype=np.uint64))
    np.testing.assert_array_equal(res["bimax"], data[mask].max(axis=0))


@pytest.mark.parametrize("fails, named", [
    (lambda frame: 1 / 0 if frame[0, 0] == 34 else 1,
     "function 'f' failed on frame (3, 4): ZeroDivisionError"),
    (lambda frame: 1.5 if frame[0, 0] == 26 else 1,
     "returned float of shape () dtype float64 on frame (2, 6), but shape () dtype int64 on "
     "frame (2, 0)"),
    (lambda frame: frame[:2] if frame[0, 0] == 26 else frame[:1],
     "returned ndarray of shape (2, 5) dtype uint16 on frame (2, 6), but shape (1, 5) dtype "
     "uint16 on frame (2, 0)"),
], ids=["raises", "dtype", "shape"])
def test_a_failure_in_a_compacted_read_names_its_frame(tmp_path, unchanged, fails, named) -> None:
    """A function that fails on one frame of a read of one-frame runs, or changes its
    value's kind there, stops the task naming that frame's own scan index."""
    path, _ = _scan(tmp_path, unchanged)
    info = KeyFollower(path, DATA, [KEY]).data
    wf = Workflow("named", data=DATA, keys=[KEY])
    wf.frame(fails, name="f")
    mask = np.zeros(SCAN, dtype=bool)
    mask[COLS] = True
    parts = process_partition(_roi_runs(mask), RunSpec(info, wf, {}, "raise", False, 20))
    assert [bool(p.failure) for p in parts] == [False, True]
    assert named in parts[-1].failure


def test_a_damaged_frame_of_a_read_stops_it_after_the_pieces_before(tmp_path, unchanged) -> None:
    """A read whose span cannot be read (a damaged frame between two ROI frames) is read
    piece by piece; a damaged ROI frame then stops the task, after the pieces before it
    are applied (one call) and kept, and the failure names that frame."""
    import h5py

    data = np.random.default_rng(5).integers(0, 1000, SCAN + FRAME).astype(np.uint16)
    path = tmp_path / "damaged.h5"
    with h5py.File(path, "w", libver="latest") as f:
        f.create_dataset(DATA, data=data, chunks=(1, 1) + FRAME, fletcher32=True)
        f.create_dataset(KEY, data=np.ones(SCAN, dtype="i4"))
        places = [f[DATA].id.get_chunk_info_by_coord(idx + (0, 0)) for idx in [(1, 1), (1, 6)]]
    with open(path, "r+b") as fh:  # (1, 1) lies between ROI frames, (1, 6) is one
        for info in places:
            fh.seek(info.byte_offset + info.size // 2)
            b = fh.read(1)
            fh.seek(info.byte_offset + info.size // 2)
            fh.write(bytes([b[0] ^ 0xFF]))
    unchanged(path)
    info = KeyFollower(path, DATA, [KEY]).data
    wf = Workflow("damaged", data=DATA, keys=[KEY])
    calls: list[int] = []
    wf.frames(lambda frames: calls.append(len(frames)) or frames.sum(axis=(1, 2)), name="s")
    mask = np.zeros(SCAN, dtype=bool)
    mask[COLS] = True
    parts = process_partition(_roi_runs(mask), RunSpec(info, wf, {}, "raise", False, 20))
    assert calls == [8]  # frames 0, 2, ... 14 of the read 0..19, in one call
    kept, failed = parts
    np.testing.assert_array_equal(np.flatnonzero(kept.done) + kept.start, np.arange(0, 16, 2))
    np.testing.assert_array_equal(kept.stacks["s"][kept.done],
                                  data.reshape(-1, *FRAME)[0:16:2].sum(axis=(1, 2)))
    assert (failed.start, failed.stop) == (0, 19) and "(1, 6)" in failed.failure


def test_a_non_numeric_value_of_a_compacted_read_names_its_own_frame(tmp_path, unchanged):
    """A batched function's non-numeric value for one frame of a compacted read is named
    by that frame's scan index, not by ``start + position`` (a frame outside the ROI)."""
    path, data = _scan(tmp_path, unchanged)
    info = KeyFollower(path, DATA, [KEY]).data
    wf = Workflow("obj", data=DATA, keys=[KEY])
    bad = 2 * SCAN[1] + 6  # frame (2, 6): the 4th of its read's stack under ::2

    @wf.frames
    def values(frames):
        out = frames[:, 0, 0]
        if bad in out:  # this read's values only
            out = out.astype(object)
            out[frames[:, 0, 0] == bad] = "x"
        return out

    mask = np.zeros(SCAN, dtype=bool)
    mask[COLS] = True
    parts = process_partition(_roi_runs(mask), RunSpec(info, wf, {}, "raise", False, 20))
    failures = [p.failure for p in parts if p.failure]
    assert len(failures) == 1 and "for frame (2, 6) (in an array" in failures[0], failures


def test_a_batched_failure_in_a_compacted_read_names_its_stack(tmp_path, unchanged) -> None:
    """A batched function that raises on one frame of a compacted read's stack names the
    stack (which frame failed is not known), not its first frame as the one that failed."""
    path, _ = _scan(tmp_path, unchanged)
    info = KeyFollower(path, DATA, [KEY]).data
    wf = Workflow("bnamed", data=DATA, keys=[KEY])

    @wf.frames
    def f(frames):
        if 26 in frames[:, 0, 0]:
            raise ValueError("bad frame 26")
        return frames[:, 0, 0]

    mask = np.zeros(SCAN, dtype=bool)
    mask[COLS] = True
    parts = process_partition(_roi_runs(mask), RunSpec(info, wf, {}, "raise", False, 20))
    assert [bool(p.failure) for p in parts] == [False, True]
    assert "'f' failed on a stack of 10 frames, (2, 0) to (3, 8): ValueError: bad frame 26" \
        in parts[-1].failure, parts[-1].failure
