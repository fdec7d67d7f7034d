"""Ragged results (``fold="ragged"``): per frame an array of rows whose number varies, 0 too.

Stored as one growing table ``<name>/data`` with scan-shaped ``count`` and
``offset``; checked against plain numpy loops offline, while a real SWMR writer
writes the input and a real SWMR reader process watches ``count`` grow, after a
SIGKILL and after a driver that dies between writing rows and its checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framebag import FramebagError, Workflow, load_workflow
from framebag.output import _read_checkpoint
from framebag.simulate import DATA, FINISHED, KEY, expected_frames

from .conftest import write_scan
from .test_live import FRAME, start_writer, stop
from .test_nexus import scan_with_positions
from .test_resume import start_cli

PEAKS = Path(__file__).resolve().parent.parent / "workflows" / "peaks.py"


def rows_of(frame: np.ndarray) -> np.ndarray:
    """``frame[0, 0] % 4`` rows (0 for a quarter of the frames) of 3 int64 built from the frame."""
    k = int(frame[0, 0]) % 4
    return frame[0, 1:4].astype(np.int64)[None, :] + np.arange(k, dtype=np.int64)[:, None]


def ragged_workflow(name: str = "rg", data: str = DATA, keys: list[str] | None = None,
                    finished: str | None = None) -> Workflow:
    """A per-frame ragged result, the same as a batched one, and a stack beside them."""
    wf = Workflow(name, data=data, keys=keys or [KEY], finished=finished)

    @wf.frame(fold="ragged")
    def rows(frame):
        return rows_of(frame)

    @wf.frames(fold="ragged")
    def rows_b(frames):
        return [rows_of(f) * 2 for f in frames]

    @wf.frame
    def total(frame):
        return frame.sum()

    return wf


def check_table(g: h5py.Group, name: str, frames: np.ndarray, done: np.ndarray, scale=1) -> None:
    """``name``'s table in output group ``g`` holds each done frame's rows once, read as the
    README says (plain h5py), and nothing else."""
    count, offset, data = g[name]["count"][()], g[name]["offset"][()], g[name]["data"][()]
    scan = done.shape
    assert count.shape == offset.shape == scan and count.dtype == offset.dtype == np.int64
    np.testing.assert_array_equal(offset[~done], -1)
    np.testing.assert_array_equal(count[~done], 0)
    covered = np.zeros(len(data), dtype=int)
    for idx in zip(*np.nonzero(done)):
        want = rows_of(frames[idx]) * scale
        got = data[offset[idx] : offset[idx] + count[idx]]
        np.testing.assert_array_equal(got, want.reshape(-1, 3))
        assert offset[idx] >= 0 and offset[idx] + count[idx] <= len(data)
        covered[offset[idx] : offset[idx] + count[idx]] += 1
    assert (covered == 1).all(), "a row belongs to no frame, or to two"
    assert count.sum() == len(data)


# the example workflow -----------------------------------------------------------------


def peaks_loop(frame: np.ndarray, threshold: float, min_distance: int) -> np.ndarray:
    """The peaks of ``frame`` by a plain loop over its pixels."""
    fy, fx = frame.shape
    d = min_distance
    out = []
    for y in range(fy):
        for x in range(fx):
            v = frame[y, x]
            near = frame[max(0, y - d) : y + d + 1, max(0, x - d) : x + d + 1]
            if v > threshold and v >= near.max():
                out.append((y, x, v))
    return np.array(out, dtype=np.float32).reshape(-1, 3)


@pytest.mark.parametrize("dtype", ["uint16", "int32", "float32"])
@pytest.mark.parametrize("threshold, min_distance", [(500, 2), (900, 1), (0, 0), (990, 3),
                                                     (2000, 2)])
def test_peaks_equals_a_numpy_loop(dtype, threshold, min_distance):
    peaks = load_workflow(PEAKS).functions["peaks"].func
    rng = np.random.default_rng(3)
    for _ in range(3):
        frame = rng.integers(0, 1000, (13, 17)).astype(dtype)
        frame[4:6, 4:6] = 999  # a plateau: every pixel of it is a peak
        got = peaks(frame, threshold=threshold, min_distance=min_distance)
        assert got.dtype == np.float32 and got.ndim == 2 and got.shape[1] == 3
        np.testing.assert_array_equal(got, peaks_loop(frame, threshold, min_distance))


def test_peaks_workflow_runs_with_empty_frames(tmp_path, client, make_scan):
    path, data = make_scan((3, 4), (12, 12))
    with h5py.File(path, "r") as f:
        assert f[DATA].shape == data.shape
    data = data.copy()
    res = load_workflow(PEAKS).run(path, tmp_path / "o.h5", client=client,
                                   params={"threshold": "990", "min_distance": "2"})
    r = res["peaks"]
    for idx in np.ndindex(3, 4):
        np.testing.assert_array_equal(r[idx], peaks_loop(data[idx], 990, 2))
    assert (r.counts == 0).any() and (r.counts > 0).any()  # k = 0 and k > 0 both occur


# offline ------------------------------------------------------------------------------


def test_ragged_offline_with_empty_frames_and_frames_not_done(tmp_path, client, make_scan):
    complete = np.ones((5, 6), dtype=bool)
    complete[1, 2] = complete[4, 5] = False
    path, data = make_scan((5, 6), (8, 8), complete=complete)
    out = tmp_path / "o.h5"
    # tasks and commits of a few frames: the table is appended to many times
    res = ragged_workflow().run(path, out, client=client, partition_bytes=3 * data[0, 0].nbytes,
                                commit_interval=0)
    np.testing.assert_array_equal(res.done, complete)
    k = data[..., 0, 0].astype(int) % 4
    assert ((k == 0) & complete).any(), "the data must give some frame no rows"
    for name, scale in (("rows", 1), ("rows_b", 2)):
        r = res[name]
        np.testing.assert_array_equal(r.counts, np.where(complete, k, 0))
        for idx in np.ndindex(5, 6):
            want = rows_of(data[idx]) * scale if complete[idx] else np.zeros((0, 3))
            got = r[idx]
            assert got.shape == want.shape and got.dtype == np.int64
            np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(res["total"], np.where(complete, data.sum(axis=(2, 3)), 0))
    assert "rows: ragged, shape (5, 6)" in repr(res)
    with h5py.File(out, "r") as f:
        g = f["entry/rg"]
        check_table(g, "rows", data, complete)
        check_table(g, "rows_b", data, complete, scale=2)
        assert g["rows"].attrs["fold"] == "ragged"
        nx = g["rows_nxdata"]
        assert nx.attrs["signal"] == "count" and list(nx.attrs["axes"]) == ["scan_0", "scan_1"]
        assert nx["count"].id == g["rows/count"].id  # the count map itself, hard-linked


def test_ragged_nxdata_is_plottable_in_nexusformat_and_silx(tmp_path, client, make_scan):
    nexus = pytest.importorskip("nexusformat.nexus")
    silx_nxdata = pytest.importorskip("silx.io.nxdata")
    path, data = make_scan((3, 4), (8, 8))
    out = tmp_path / "o.h5"
    ragged_workflow().run(path, out, client=client)
    plot = nexus.nxload(str(out))["entry/rg/rows_nxdata"].plottable_data
    assert plot is not None and plot.nxsignal.nxname == "count"
    np.testing.assert_array_equal(plot.nxsignal.nxdata, data[..., 0, 0].astype(int) % 4)
    with h5py.File(out, "r") as f:
        default = silx_nxdata.get_default(f)  # the first result is the ragged one
        assert default is not None and default.is_valid
        assert default.signal.name == "/entry/rg/rows_nxdata/count"


def test_an_axis_named_count_beside_a_ragged_result(tmp_path, client, capsys):
    """A motor dataset named ``count`` does not collide with the count map in the NXdata,
    and ``inspect`` tells the axes from the signal."""
    silx_nxdata = pytest.importorskip("silx.io.nxdata")
    path, data, y, x = scan_with_positions(tmp_path)
    with h5py.File(path, "r+") as f:
        f["entry/instrument/count"] = y
    out = tmp_path / "o.h5"
    res = ragged_workflow().run(path, out, client=client,
                                axes=["entry/instrument/count", "entry/instrument/x"])
    assert res.done.all()
    with h5py.File(out, "r") as f:
        nx = f["entry/rg/rows_nxdata"]
        assert nx.attrs["signal"] == "count" and nx["count"].id == f["entry/rg/rows/count"].id
        axis = nx.attrs["axes"][0]
        assert axis != "count" and nx[axis].attrs["source"] == "entry/instrument/count"
        np.testing.assert_array_equal(nx[axis][()], y)
        assert silx_nxdata.NXdata(nx).is_valid
        axes = [a.decode() if isinstance(a, bytes) else str(a) for a in nx.attrs["axes"]]
    from framebag.cli import main

    assert main(["inspect", str(out)]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines()
                if line.strip().startswith("rows "))
    assert line.endswith(f"rows_nxdata: {axes[0]}, {axes[1]} (count: rows per frame)"), line


def bad_rows_workflow() -> Workflow:
    wf = Workflow("bad", data=DATA, keys=[KEY])

    @wf.frame(fold="ragged")
    def spots(frame, index):
        cols = 2 if index == (1, 2) else 3  # one frame gives rows of another shape
        return np.ones((int(frame[0, 0]) % 3, cols), dtype=np.float32)

    @wf.frame
    def total(frame):
        return frame.sum()

    return wf


def test_a_frame_with_other_rows_is_one_sentence_and_skip_skips_it(tmp_path, client, make_scan,
                                                                   unchanged):
    path, data = make_scan((3, 4), (8, 8))
    data = data.copy()
    data[1, 2, 0, 0] = 2  # its rows are not empty, so their shape shows
    with h5py.File(path, "r+") as f:
        f[DATA][1, 2, 0, 0] = 2
    unchanged(path)
    with pytest.raises(FramebagError) as info:
        bad_rows_workflow().run(path, tmp_path / "o.h5", client=client)
    msg = str(info.value)
    assert "'spots'" in msg and "(1, 2)" in msg and "(2, 2)" in msg and "(k, 3)" in msg
    assert "float32" in msg and "--on-error skip" in msg and "\n" not in msg
    res = bad_rows_workflow().run(path, tmp_path / "o.h5", client=client, on_error="skip",
                                  overwrite=True)
    done = np.ones((3, 4), dtype=bool)
    done[1, 2] = False
    np.testing.assert_array_equal(res.done, done)
    assert [(e[0], e[1]) for e in res.errors] == [((1, 2), "spots")]
    r = res["spots"]
    assert r.counts[1, 2] == 0 and r.offsets[1, 2] == -1
    np.testing.assert_array_equal(r.counts, np.where(done, data[..., 0, 0] % 3, 0))
    np.testing.assert_array_equal(res["total"], np.where(done, data.sum(axis=(2, 3)), 0))


@pytest.mark.parametrize("first_k, words", [
    (5, ["returned list of shape (0,)", "rows of shape (k, 2)",
         "for no rows return np.empty((0, 2), 'float64'), not []"]),
    (4, ["rows of shape (k) dtype float64 on frame (0, 0)",
         "which makes rows of shape ()", "return np.empty((0, 2), 'float64')"]),
])
def test_returning_an_empty_list_says_what_to_return(tmp_path, client, make_scan, unchanged,
                                                     first_k, words):
    """``[]`` has no row shape: the message says to return ``np.empty((0, ...))``, whether
    ``[]`` comes after rows or on the first frame (where it fixes rows of shape ())."""
    path, data = make_scan((3, 4), (8, 8))
    with h5py.File(path, "r+") as f:  # the first frame: rows or none; the next one none
        f[DATA][0, 0, 0, 0], f[DATA][0, 1, 0, 0] = first_k, 5 if first_k % 4 == 0 else 4
    unchanged(path)
    wf = Workflow("lists", data=DATA, keys=[KEY])

    @wf.frame(fold="ragged")
    def spots(frame):
        return [[float(frame[0, 1]), float(j)] for j in range(int(frame[0, 0]) % 4)]

    with pytest.raises(FramebagError) as info:
        wf.run(path, tmp_path / "o.h5", client=client)
    msg = str(info.value)
    assert "'spots'" in msg and "\n" not in msg
    for word in words:
        assert word in msg, (word, msg)


# random lengths and completion masks ---------------------------------------------------


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_ragged_lengths_and_masks_equal_a_numpy_loop(client, data):
    ny = data.draw(st.integers(1, 4), label="ny")
    nx = data.draw(st.integers(2, 7), label="nx")  # a last scan dim of 1 reads as a frame dim
    ks = np.array(data.draw(st.lists(st.integers(0, 6), min_size=ny * nx, max_size=ny * nx),
                            label="k")).reshape(ny, nx)
    complete = np.array(data.draw(st.lists(st.booleans(), min_size=ny * nx,
                                           max_size=ny * nx), label="complete"))
    complete = complete.reshape(ny, nx)
    frames_per_task = data.draw(st.integers(1, 5), label="frames per read")
    rng = np.random.default_rng(int(ks.sum()))
    frames = rng.integers(0, 1000, (ny, nx, 4, 4)).astype(np.int32)
    frames[..., 0, 0] = ks  # rows_of gives k = frame[0, 0] % 4: use k directly
    wf = Workflow("hy", data=DATA, keys=[KEY])

    @wf.frame(fold="ragged")
    def rows(frame):
        k = int(frame[0, 0])
        return frame[0, 1:4].astype(np.int64)[None, :] + np.arange(k, dtype=np.int64)[:, None]

    with tempfile.TemporaryDirectory() as tmp:
        path = write_scan(Path(tmp) / "in.h5", frames, 2, complete=complete)
        if not complete.any():
            with pytest.raises(FramebagError, match="no frame"):
                wf.run(path, Path(tmp) / "o.h5", client=client)
            return
        res = wf.run(path, Path(tmp) / "o.h5", client=client, commit_interval=0,
                     partition_bytes=frames_per_task * frames[0, 0].nbytes)
        r = res["rows"]
        np.testing.assert_array_equal(res.done, complete)
        np.testing.assert_array_equal(r.counts, np.where(complete, ks, 0))
        table = []
        for idx in np.ndindex(ny, nx):  # the numpy loop
            want = (frames[idx][0, 1:4].astype(np.int64)[None, :]
                    + np.arange(ks[idx])[:, None]) if complete[idx] else np.zeros((0, 3))
            np.testing.assert_array_equal(r[idx], want)
            if complete[idx]:
                table.append(want)
        assert len(r.rows) == sum(len(t) for t in table)  # no orphan rows, none twice
        np.testing.assert_array_equal(np.sort(r.rows, axis=0),
                                      np.sort(np.concatenate(table), axis=0))


# live -------------------------------------------------------------------------------------

READER = '''
import json, sys, time
import h5py, numpy as np
from framebag.simulate import expected_frames


def rows_of(frame):  # as in test_ragged
    k = int(frame[0, 0]) % 4
    return frame[0, 1:4].astype(np.int64)[None, :] + np.arange(k, dtype=np.int64)[:, None]


out, gate, report, scan = sys.argv[1], sys.argv[2], sys.argv[3], tuple(json.loads(sys.argv[4]))
exp = expected_frames(scan, {frame!r}, "uint16", 0)
seen, past, suspects, gated = [], [], {{}}, None
deadline = time.monotonic() + 120  # a safety net only: a real violation waits it out
while True:
    try:
        f = h5py.File(out, "r", swmr=True)
        break
    except (OSError, FileNotFoundError):
        time.sleep(0.01)
        if time.monotonic() > deadline:
            raise SystemExit("no output")
g = f["entry/live_rg/rows"]
count, offset, data = g["count"], g["offset"], g["data"]
while time.monotonic() < deadline:
    # offset, count, then the table, each refreshed just before it is read: the writer
    # flushes the table before it sets a count and offset that point into it, so the
    # table read last is at least as long as they say (a refresh made earlier would
    # show an older, shorter table)
    try:
        offset.refresh()
        o = offset[()]
        count.refresh()
        c = count[()]
        data.refresh()
        rows = data[()]
    except OSError as exc:
        # a chunk read while the run rewrites it in place (the table's last chunk grows
        # commit by commit) fails its fletcher32 checksum: a torn read, read again
        suspects = {{"read": f"read failed: {{exc}}"}}
        time.sleep(0.005)
        continue
    m = min(len(c), len(o))  # a growing scan may grow between the two refreshes
    c, o = c[:m], o[:m]
    done = o >= 0
    # count and offset of one commit are flushed together, so a read in the middle of
    # that flush can pair a new offset with an old count: a frame with other rows is a
    # violation only while it stays so, and the reader goes on until none is (or the
    # safety net); pointing past the table is one at once
    suspects = {{}}
    for idx in zip(*np.nonzero(done)):
        if o[idx] + c[idx] > len(rows):
            past.append(f"frame {{idx}} points past the table")
        elif not np.array_equal(rows[o[idx] : o[idx] + c[idx]], rows_of(exp[idx])):
            suspects[str(idx)] = f"frame {{idx}} has other rows"
    n = int(done.sum())
    if not seen or n != seen[-1]:
        seen.append(n)
    if n and gated is None:
        gated = n
        open(gate, "w").close()  # the writer goes on only once rows were seen live
    if past or n == int(np.prod(scan)) and not suspects:
        break
    time.sleep(0.005)
violations = past + sorted(suspects.values())
json.dump({{"seen": seen, "violations": violations, "gated": gated}}, open(report, "w"))
'''


@pytest.mark.parametrize("growing", [False, True])
def test_live_swmr_reader_watches_count_grow(tmp_path, client, unchanged, growing):
    path, out = tmp_path / "scan.h5", tmp_path / "out.h5"
    scan = (6, 10)
    gate, report = tmp_path / "rows-seen", tmp_path / "report.json"
    # the writer stops after 15 frames until the reader has seen rows in the output; a
    # growing scan grows the count and offset maps too
    proc = start_writer(path, scan, rate=300, gate=gate, gate_after=15,
                        **({"growing": True} if growing else {}))
    script = tmp_path / "reader.py"
    script.write_text(READER.format(frame=FRAME))
    reader = subprocess.Popen([sys.executable, str(script), str(out), str(gate), str(report),
                               json.dumps(scan)], stderr=subprocess.PIPE, text=True)
    try:
        wf = ragged_workflow("live_rg", finished=FINISHED)
        # the timeout only ends a broken run: the writer waits at its gate until the reader
        # (a process that may be slow to start on a loaded machine) has seen rows
        res = wf.run(path, out, client=client, follow=True, timeout=300.0)
    finally:
        stop(proc)
        try:
            _, err = reader.communicate(timeout=120)
        finally:
            if reader.poll() is None:
                reader.kill()
    assert reader.returncode == 0, err
    got = json.loads(report.read_text())
    assert got["violations"] == []
    assert 0 < got["gated"] <= 15 < 60, got  # rows were readable while the writer waited
    assert got["seen"][-1] == 60 and got["seen"] == sorted(got["seen"])
    exp = expected_frames(scan, FRAME, "uint16", 0)
    unchanged(path)
    np.testing.assert_array_equal(res.done, np.ones(scan, bool))
    with h5py.File(out, "r") as f:
        check_table(f["entry/live_rg"], "rows", exp, np.ones(scan, bool))
        check_table(f["entry/live_rg"], "rows_b", exp, np.ones(scan, bool), scale=2)


# resume ---------------------------------------------------------------------------------

SLOW = '''
import os
import time

import numpy as np

from framebag import Workflow
from framebag.folds import Fold

workflow = Workflow("slowrg", data="entry/data/data", keys=["entry/keys/key_1"])


def rows_of(frame):
    k = int(frame[0, 0]) % 4
    return frame[0, 1:4].astype(np.int64)[None, :] + np.arange(k, dtype=np.int64)[:, None]


@workflow.frame(fold="ragged")
def rows(frame, *, delay=0.01):
    time.sleep(delay)
    while int(frame[0, 1]) == int(os.environ.get("FRAMEBAG_TEST_HOLD_AT", -1)):
        time.sleep(1)  # the run cannot finish: the test kills it first
    if str(int(frame[0, 1]) - 1000) in os.environ.get("FRAMEBAG_TEST_FAIL", "").split(",") \
            and _on_worker():  # the driver's probe, which may pick such a frame, passes
        raise ValueError("failing on purpose")
    return rows_of(frame)


def _on_worker():
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True


def _seen(acc):
    # the driver dies here, after a commit's rows went to the table, before its checkpoint
    at = int(os.environ.get("FRAMEBAG_TEST_EXIT_AT", 0))
    if at and acc >= at:
        os._exit(9)
    return acc


@workflow.frame(fold=Fold("frames", lambda: 0, lambda a, v: a + v, lambda a, b: a + b, _seen))
def frames(frame):
    return 1
'''


@pytest.fixture
def slow_job(tmp_path):
    wf = tmp_path / "slowrg.py"
    wf.write_text(SLOW)
    rng = np.random.default_rng(7)
    data = rng.integers(0, 1000, (20, 20, 4, 4)).astype("uint16")
    data[..., 0, 1] = np.arange(400).reshape(20, 20) + 1000  # frame i: frame[0, 1] == 1000 + i
    return wf, write_scan(tmp_path / "in.h5", data, 2), data


def table_rows(out: Path) -> tuple[int, int]:
    """``(rows in the table, rows the newest checkpoint slot says are committed)``."""
    with h5py.File(out, "r", swmr=True) as f:
        g = f["entry/slowrg"]
        state = _read_checkpoint(g["checkpoint"])
        return g["rows/data"].shape[0], int(state["accs"]["rows"]) if state else 0


@pytest.mark.parametrize("kill_at", [1, 150])
def test_sigkill_then_resume_equals_numpy_with_no_frame_twice(slow_job, client, tmp_path,
                                                             kill_at):
    wf, path, data = slow_job
    out = tmp_path / "out.h5"
    proc = start_cli(str(wf), str(path), "-o", str(out), "--partition-bytes", "320",
                     "--commit-interval", "0", env={"FRAMEBAG_TEST_HOLD_AT": str(1040 + kill_at)})
    try:
        _wait_done(out, kill_at, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with h5py.File(out, "r", swmr=True) as f:
        state = _read_checkpoint(f["entry/slowrg/checkpoint"])
    done_before = np.unpackbits(state["done"], count=400).astype(bool).reshape(20, 20)
    assert kill_at <= done_before.sum() < 400
    res = load_workflow(wf).run(path, out, client=client, resume=True)
    assert res.stats["processed"] == 400 - done_before.sum()
    assert res.done.all() and res["frames"] == 400  # every frame folded once
    with h5py.File(out, "r") as f:
        check_table(f["entry/slowrg"], "rows", data, np.ones((20, 20), bool))


def _wait_done(out: Path, at_least: int, proc: subprocess.Popen) -> None:
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with h5py.File(out, "r", swmr=True) as f:
                if int(f["entry/slowrg/done"][()].sum()) >= at_least:
                    return
        except (OSError, KeyError):
            pass
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.01)
    raise AssertionError(f"fewer than {at_least} frames done")


def test_a_driver_dead_between_rows_and_checkpoint_resumes_without_orphan_rows(
        slow_job, client, tmp_path):
    wf, path, data = slow_job
    out = tmp_path / "out.h5"
    # the driver exits (os._exit, as a kill would) inside the commit that reaches 100 frames:
    # after that commit's rows are in the table, before the checkpoint that counts them
    proc = start_cli(str(wf), str(path), "-o", str(out), "--partition-bytes", "320",
                     "--commit-interval", "0", "--set", "delay=0",
                     env={"FRAMEBAG_TEST_EXIT_AT": "100"})
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 9, err
    rows, committed = table_rows(out)
    assert rows > committed, "the table must hold rows no checkpoint counts"
    with h5py.File(out, "r", swmr=True) as f:
        state = _read_checkpoint(f["entry/slowrg/checkpoint"])
    done_before = np.unpackbits(state["done"], count=400).astype(bool).reshape(20, 20)
    # a resume in which every frame left fails (and is skipped) redoes none of the frames
    # whose rows were left behind: those rows must be gone, not counted or pointed at
    left = ",".join(map(str, np.flatnonzero(~done_before.ravel())))
    proc = start_cli(str(wf), str(path), "-o", str(out), "--resume", "--on-error", "skip",
                     "--set", "delay=0", env={"FRAMEBAG_TEST_FAIL": left})
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err and f"{400 - done_before.sum()} failed and skipped" in err, err
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["entry/slowrg/done"][()].astype(bool), done_before)
        check_table(f["entry/slowrg"], "rows", data, done_before)
    res = load_workflow(wf).run(path, out, client=client, resume=True, params={"delay": "0"})
    assert res.done.all() and res["frames"] == 400
    with h5py.File(out, "r") as f:
        check_table(f["entry/slowrg"], "rows", data, np.ones((20, 20), bool))


def test_inspect_and_plot_show_a_ragged_result(tmp_path, client, make_scan, capsys):
    pytest.importorskip("matplotlib")
    from framebag.cli import main

    complete = np.ones((3, 4), dtype=bool)
    complete[2, 3] = False
    path, data = make_scan((3, 4), (8, 8), complete=complete)
    out = tmp_path / "o.h5"
    ragged_workflow().run(path, out, client=client)
    k = np.where(complete, data[..., 0, 0].astype(int) % 4, 0)
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    line = next(line for line in text.splitlines() if line.strip().startswith("rows "))
    assert "ragged" in line and "(k, 3)" in line and "int64" in line
    # its NXdata: the count map over the scan's axes
    assert line.endswith("rows_nxdata: scan_0, scan_1 (count: rows per frame)"), line
    assert f"{k.sum()} rows" in text and f"min {k[complete].min()}" in text \
        and f"max {k.max()}" in text
    assert main(["plot", str(out), "-o", str(tmp_path / "pics")]) == 0
    assert (tmp_path / "pics" / "rg_rows.png").stat().st_size > 1000



def test_to_xarray_gives_a_ragged_result_as_its_count_map(tmp_path, client, make_scan):
    pytest.importorskip("xarray")
    path, data = make_scan((3, 4), (8, 8))
    res = ragged_workflow().run(path, tmp_path / "o.h5", client=client)
    ds = res.to_xarray()
    assert ds["rows_count"].dims == ("scan_0", "scan_1")
    np.testing.assert_array_equal(ds["rows_count"].values, data[..., 0, 0].astype(int) % 4)
    np.testing.assert_array_equal(ds["scan_1"].values, np.arange(4))
    assert res.dims["rows"] == ("scan_0", "scan_1")  # to_xarray left the results as they were


def test_a_batched_ragged_function_that_fails_skips_only_its_bad_frames():
    wf = Workflow("b", data=DATA, keys=[KEY])

    @wf.frames(fold="ragged")
    def spots(frames):
        if (frames[:, 0, 0] == 13).any():
            raise ValueError("bad frame")
        out = [rows_of(f) for f in frames]
        if len(frames) > 1:
            out[1] = out[1].astype(np.float32)  # another dtype: that frame alone is skipped
        return out

    frames = np.random.default_rng(1).integers(0, 1000, (6, 4, 4)).astype(np.int32)
    frames[:, 0, 0] = [4, 5, 6, 13, 7, 0]
    p = wf.apply(frames, 0, (6,), {}, on_error="skip")
    np.testing.assert_array_equal(p.done, [True, True, True, False, True, True])
    assert [e[0] for e in p.errors] == [3]
    counts, rows = p.ragged["spots"]
    np.testing.assert_array_equal(counts, [0, 1, 2, 0, 3, 0])
    np.testing.assert_array_equal(rows, np.concatenate([rows_of(frames[i]) for i in (1, 2, 4)]))
    p = wf.apply(frames[:3], 0, (6,), {}, on_error="skip")  # the call works: frame 1's dtype
    np.testing.assert_array_equal(p.done, [True, False, True])
    assert "float32" in p.errors[0][2] and "int64" in p.errors[0][2]
    with pytest.raises(FramebagError, match=r"'spots' failed on frame \(1,\).*float32"):
        wf.apply(frames[:3], 0, (6,), {}, on_error="raise")


@pytest.mark.parametrize("returns, words", [
    ("none", ["batched function 'hits' returned None for a stack of 1 frame from (0, 0)",
              "must return a list of numeric arrays of rows (k, ...), one per frame"]),
    ("none_on_workers", ["batched function 'hits' returned None for a stack of ", " frames from (",
                         "must return a list of numeric arrays of rows (k, ...), one per frame",
                         "rerun with --overwrite"]),
    ("number", ["batched function 'hits' returned int", "must return a list"]),
    ("list_of_none", ["batched function 'hits' returned None on frame (0, 0)",
                      "a ragged function (fold='ragged') must return a numeric array of rows"]),
    ("per_frame_none", ["function 'hits' returned None on frame (0, 0)",
                        "a ragged function (fold='ragged') must return a numeric array of rows"]),
])
def test_a_ragged_function_returning_none_says_what_it_must_return(tmp_path, client, make_scan,
                                                                    returns, words):
    """None (or a number) where a ragged function returns rows stops the run in one sentence
    naming the function and what it must return, not with a bare TypeError."""
    path, _ = make_scan((8, 8), (4, 4))  # a read is a 16th of the scan: 4 frames
    wf = Workflow("nothing", data=DATA, keys=[KEY])
    empty = np.empty((0, 3), np.float32)
    if returns == "per_frame_none":
        @wf.frame(fold="ragged")
        def hits(frame):
            return None
    else:
        @wf.frames(fold="ragged")
        def hits(frames):
            if returns == "none_on_workers":  # the driver's probe of one frame passes
                return [empty] if len(frames) == 1 else None
            return {"none": None, "number": 0, "list_of_none": [None] * len(frames)}[returns]

    with pytest.raises(FramebagError) as info:
        wf.run(path, tmp_path / "o.h5", client=client, on_error="skip")
    msg = str(info.value)
    assert "\n" not in msg and "np.empty((0, 3), 'float32')" in msg
    for word in words:
        assert word in msg, (word, msg)


def test_cli_batched_ragged_none_is_one_line_without_traceback(tmp_path, make_scan, capsys):
    from framebag.cli import main

    path, _ = make_scan((2, 3), (8, 8))
    wf = tmp_path / "none.py"
    wf.write_text("from framebag import Workflow\n"
                  f"workflow = Workflow('none', data={DATA!r}, keys=[{KEY!r}])\n\n"
                  "@workflow.frames(fold='ragged')\n"
                  "def hits(frames):\n"
                  "    return [None] * len(frames)\n")
    assert main(["run", str(wf), str(path), "-o", str(tmp_path / "o.h5"),
                 "--profile", "inline", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert err[0].startswith("framebag: error: batched function 'hits' returned None on frame")
    assert "must return a numeric array of rows" in err[0]
