"""Live mode: following a file that a real SWMR writer process is still writing.

Every test starts the simulator (``framebag simulate``) as a separate process,
follows its file with the session's LocalCluster and compares the results with
numpy on the frames the simulator is known to write. Where a test needs the
writer and the run in a given order, the writer waits on a gate file
(``--gate``) that the test creates once it has seen what it waits for: no test
rests on how fast this machine is.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from framebag import FramebagError, Workflow
from framebag.dispatch import Dispatcher
from framebag.partitions import by_block
from framebag.simulate import DATA, FINISHED, KEY, emission_order, expected_frames, simulate

FRAME = (16, 16)


#: the first bytes of an HDF5 file (its superblock's signature)
SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _there(path: Path, armed: bool) -> bool:
    """Whether the writer's file is at ``path``; an armed one only once HDF5 has written its
    superblock, which it does after taking the file's lock (a reader that came earlier
    would find an empty, unlocked file, or hold the lock the writer needs)."""
    if not armed:
        return path.exists()  # it appears already in SWMR mode (renamed into place)
    try:
        with open(path, "rb") as f:  # plain bytes: no HDF5 lock taken
            return f.read(len(SIGNATURE)) == SIGNATURE
    except FileNotFoundError:
        return False


def start_writer(path: Path, scan=(10, 20), rate=400.0, **opts) -> subprocess.Popen:
    """Start ``framebag simulate`` on ``path`` and return once the file is there (in SWMR,
    or with ``arm_for`` written and locked by the writer)."""
    cmd = [sys.executable, "-m", "framebag.cli", "simulate", str(path),
           "--scan", "x".join(map(str, scan)), "--frame", "x".join(map(str, FRAME)),
           "--rate", str(rate)]
    for key, value in opts.items():
        flag = "--" + key.replace("_", "-")
        values = value if isinstance(value, (list, tuple)) else [value]  # a repeated flag
        cmd += [flag] if value is True else [x for v in values for x in (flag, str(v))]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while not _there(path, "arm_for" in opts):
        if proc.poll() is not None:
            raise AssertionError(f"simulator exited early: {proc.stderr.read().decode()}")
        assert time.monotonic() < deadline, "simulator did not create its file"
        time.sleep(0.01)
    return proc


def keys_set(path: Path, n: int, proc: subprocess.Popen) -> None:
    """Wait until the writer has set ``n`` keys (read with swmr=True, as a run reads them)."""
    with h5py.File(path, "r", swmr=True) as f:
        key = f[KEY]
        while True:
            key.refresh()
            if int((key[()] != 0).sum()) >= n:
                return
            assert proc.poll() is None, f"simulator exited: {proc.stderr.read().decode()}"
            time.sleep(0.01)


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Let the writer finish within ``grace`` seconds, else terminate it."""
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait(timeout=10)


def workflow(scan: tuple[int, ...], finished: str | None = FINISHED) -> Workflow:
    """Per-frame sums (stack), the mean image, and a one-hot mean that exposes double counts."""
    wf = Workflow("live", data=DATA, keys=[KEY], finished=finished)
    nframes = int(np.prod(scan))

    @wf.frame
    def total(frame):
        return frame.sum()

    @wf.frame(fold="mean")
    def mean_image(frame):
        return frame

    @wf.frame(fold="max")
    def brightest(frame):
        return frame

    @wf.frame(fold="mean")
    def seen(frame, index):
        # the mean of one-hot vectors is exactly 1/n everywhere only if every frame
        # was folded once: a frame folded twice shows as 2/(n+1)
        onehot = np.zeros(nframes)
        onehot[np.ravel_multi_index(index, scan)] = 1.0
        return onehot

    return wf


def check(res, scan, done=None, seed=0):
    """The results equal numpy over the frames that are done (all of them by default)."""
    exp = expected_frames(scan, FRAME, "uint16", seed)
    n = int(np.prod(scan))
    done = np.ones(scan, dtype=bool) if done is None else done
    np.testing.assert_array_equal(res.done, done)
    np.testing.assert_array_equal(res["total"], np.where(done, exp.sum(axis=(2, 3)), 0))
    np.testing.assert_allclose(res["mean_image"], exp[done].mean(axis=0), rtol=1e-12)
    np.testing.assert_array_equal(res["brightest"], exp[done].max(axis=0))
    want_seen = np.where(done.ravel(), 1.0 / done.sum(), 0.0)
    np.testing.assert_allclose(res["seen"], want_seen, rtol=1e-12, atol=0)
    assert res["seen"].shape == (n,)


def follow(path: Path, out: Path, client, scan, **opts):
    wf = workflow(tuple(scan), opts.pop("finished", FINISHED))
    opts.setdefault("timeout", 10.0)
    return wf.run(path, out, client=client, follow=True, **opts)


#: how a fixed-size scan whose writer sets every key and then the flag may end: the last keys
#: and the flag land in two flushes, so a poll between them ends the run on the keys. Either
#: is right; test_ending_on_flag_forms_or_full_keys tells the two apart on purpose.
ON_DATA = ("finished_flag", "keys_full")


def ended_attr(out: Path) -> str:
    with h5py.File(out, "r") as f:
        value = f["entry/live"].attrs["ended_by"]
    return value.decode() if isinstance(value, bytes) else str(value)


def test_live_results_equal_numpy_and_arrive_while_writer_runs(tmp_path, client, unchanged):
    path, out = tmp_path / "scan.h5", tmp_path / "out.h5"
    scan = (12, 25)
    # 300 frames, but the writer stops after 60 until the first result has arrived: a run
    # that held its results back until the end would end on the timeout with 60 frames
    gate = tmp_path / "first-result"
    proc = start_writer(path, scan, rate=250, gate=gate, gate_after=60)
    alive_at_first_result = []

    def progress(p):
        if p["processed"] and not alive_at_first_result:
            # the first partial has been gathered and combined
            alive_at_first_result.append(proc.poll() is None)
            gate.touch()

    try:
        res = follow(path, out, client, scan, progress=progress)
    finally:
        stop(proc)
    assert proc.returncode == 0
    assert alive_at_first_result == [True], "no result reached the output while the writer ran"
    unchanged(path)
    check(res, scan)
    assert res.stats["ended_by"] in ON_DATA
    assert ended_attr(out) == res.stats["ended_by"]
    assert res.stats["processed"] == 300


def test_out_of_order_keys_two_writers_snake(tmp_path, client):
    path, out = tmp_path / "scan.h5", tmp_path / "out.h5"
    scan = (10, 20)
    # the writer stops at each of STOPS until the run has processed every frame written so
    # far: the run sees each of these out-of-order states, however slow this machine is
    stops = [50, 120]
    written = emission_order(scan, writers=2, snake=True, writer_lag=7)
    for n in stops:  # the scenario really is out of order: no stop is at a prefix of the scan
        assert not np.array_equal(np.sort(written[:n]), np.arange(n))
    gate = tmp_path / "caught-up"
    proc = start_writer(path, scan, rate=400, writers=2, writer_lag=7, snake=True, gate=gate,
                        gate_after=stops)
    released = []

    def progress(p):
        if len(released) < len(stops) and p["processed"] == stops[len(released)]:
            released.append(p["processed"])
            gate.touch()  # the writer removes it as it goes on, to wait at the next stop

    try:
        # the timeout only ends a broken run: at a stop, nothing completes until released
        res = follow(path, out, client, scan, latency=0.05, progress=progress, timeout=60.0)
    finally:
        stop(proc)
    assert released == stops, "the run never caught up with a stop"
    check(res, scan)
    assert res.stats["ended_by"] in ON_DATA
    assert proc.returncode == 0


@pytest.mark.parametrize("shape, ended", [("scalar", "finished_flag"), ("1", "finished_flag"),
                                          ("none", "keys_full")])
def test_ending_on_flag_forms_or_full_keys(tmp_path, client, shape, ended):
    path, out = tmp_path / "scan.h5", tmp_path / "out.h5"
    scan = (6, 20)
    # with a flag, one key is never set: only the flag can end the run before the timeout
    drop = {} if shape == "none" else {"drop": 37}
    proc = start_writer(path, scan, rate=400, finished_shape=shape, **drop)
    with h5py.File(path, "r", swmr=True) as f:
        if shape == "none":
            assert FINISHED not in f
        else:
            assert f[FINISHED].shape == (() if shape == "scalar" else (1,))
    try:
        # with no flag in the file, the workflow's default flag is only warned about;
        # a run that missed the end of the scan would end on the timeout, not on `ended`
        res = follow(path, out, client, scan, timeout=30.0)
    finally:
        stop(proc)
    done = np.ones(scan, dtype=bool)
    done.flat[drop.get("drop", [])] = False
    check(res, scan, done)
    assert res.stats["ended_by"] == ended
    assert ended_attr(out) == ended


def test_timeout_with_a_stalled_writer(tmp_path, client):
    path, out = tmp_path / "scan.h5", tmp_path / "out.h5"
    scan = (8, 20)
    proc = start_writer(path, scan, rate=400, stall_after=45)
    try:
        # the run starts once the writer has stalled: the timeout then counts from the
        # first poll, however slowly this machine wrote the 45 frames
        keys_set(path, 45, proc)
        t0 = time.monotonic()
        res = follow(path, out, client, scan, timeout=1.0)
        wall = time.monotonic() - t0
        assert proc.poll() is None, "the stalled writer should still hold the file"
    finally:
        stop(proc, grace=0)
    done = np.zeros(160, dtype=bool)
    with h5py.File(path, "r", swmr=True) as f:
        done[:] = f[KEY][()].ravel() != 0
    assert done.sum() == 45
    check(res, scan, done.reshape(scan))
    assert res.stats["ended_by"] == "timeout"
    assert ended_attr(out) == "timeout"
    assert wall >= 1.0  # not before the timeout (how long after depends on the machine)


def test_growing_layout(tmp_path, client):
    path, out = tmp_path / "scan.h5", tmp_path / "out.h5"
    scan = (12, 15)
    # the writer waits after 30 frames until the run has processed some: the run follows
    # a scan that is still growing, however slow this machine is
    gate = tmp_path / "run-has-results"
    proc = start_writer(path, scan, rate=300, growing=True, writers=2, snake=True, gate=gate,
                        gate_after=30)
    with h5py.File(path, "r", swmr=True) as f:
        assert f[KEY].maxshape[0] is None and f[DATA].maxshape[0] is None
        assert f[KEY].shape[0] < scan[0], "the scan should start smaller than it ends"

    def progress(p):
        if p["processed"] and not gate.exists():
            assert p["total"] < 180, "the run saw the whole scan before the writer went on"
            gate.touch()

    try:
        res = follow(path, out, client, scan, latency=0.1, progress=progress)
    finally:
        stop(proc)
    check(res, scan)
    assert res.stats["ended_by"] == "finished_flag"
    with h5py.File(out, "r") as f:
        g = f["entry/live"]
        assert g["done"].maxshape[0] is None and g["total"].shape == scan
        assert tuple(g.attrs["scan_shape"]) == scan


def _watch_done(out: str, inp: str, total: int, gate: str, queue) -> None:
    """A separate reader process: what ``done`` looks like over time, read with swmr=True.

    The writer waits on ``gate`` after some frames; this reader opens the gate once it
    has seen results, then watches for more, so it sees done grow during the run.
    """
    deadline = time.monotonic() + 60  # a safety net only: the gate sequences the test
    while not os.path.exists(out):
        if time.monotonic() > deadline:
            queue.put(([], None))
            return
        time.sleep(0.005)
    counts: list[int] = []
    flag_at_first = None
    with h5py.File(out, "r", swmr=True) as f, h5py.File(inp, "r", swmr=True) as src:
        done = f["entry/live/done"]
        flag = src[FINISHED]
        while time.monotonic() < deadline:
            done.refresh()
            n = int(done[()].sum())
            if n and flag_at_first is None:
                flag.refresh()
                flag_at_first = int(flag[()])
                Path(gate).touch()
            if not counts or counts[-1] != n:
                counts.append(n)
            # stop once growth is proven: a reader still open when the run ends would
            # block the output's final stamping (see OutputFile.close)
            if n == total or len([c for c in counts if c > 0]) >= 2:
                break
            time.sleep(0.01)
    queue.put((counts, flag_at_first))


def test_reader_sees_done_grow_during_the_run(tmp_path, client):
    path, out = tmp_path / "scan.h5", tmp_path / "out.h5"
    scan = (10, 30)
    gate = tmp_path / "reader-saw-results"
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    reader = ctx.Process(target=_watch_done, args=(str(out), str(path), 300, str(gate), queue))
    reader.start()
    proc = start_writer(path, scan, rate=300, gate=gate, gate_after=100)
    try:
        res = follow(path, out, client, scan, latency=0.1)
        counts, flag_at_first = queue.get(timeout=60)
    finally:
        stop(proc)
        reader.join(timeout=10)
    check(res, scan)
    seen = [c for c in counts if c > 0]
    # results before the gate (at most the 100 frames written), then more after it
    assert len(seen) >= 2 and seen == sorted(seen) and 0 < seen[0] <= 100, counts
    assert flag_at_first == 0, "the reader saw the first results only after the scan finished"


def test_no_frame_counted_twice_when_blocks_go_out_in_pieces(tmp_path, client):
    # one block of 200 frames (the whole scan) arrives out of order and in pieces: the
    # writer stops at each of STOPS until the run has processed every frame written so
    # far, so the latency bound must send the block piece by piece; each frame must
    # still be folded once
    path, out = tmp_path / "scan.h5", tmp_path / "out.h5"
    scan = (10, 20)
    stops = [40, 90, 150]
    gate = tmp_path / "piece-processed"
    proc = start_writer(path, scan, rate=400, writers=2, writer_lag=11, gate=gate,
                        gate_after=stops)
    processed = []
    released = []

    def progress(p):
        processed.append(p["processed"])
        if len(released) < len(stops) and p["processed"] == stops[len(released)]:
            released.append(p["processed"])
            gate.touch()  # the writer removes it as it goes on, to wait at the next stop

    try:
        # the timeout only ends a broken run: at a stop, no frame completes until the
        # run has caught up
        res = follow(path, out, client, scan, latency=0.02, partition_bytes=200 * 512,
                     progress=progress, timeout=60.0)
    finally:
        stop(proc)
    # the block went out in pieces: the run stood at each stop with the block part done
    assert released == stops, f"the run stood at no stop: processed {sorted(set(processed))}"
    check(res, scan)
    assert res.stats["processed"] == 200
    assert proc.returncode == 0
    # and out of order: the frames written before the first stop are not the first 40
    written = emission_order(scan, writers=2, writer_lag=11)[:stops[0]]
    assert not np.array_equal(np.sort(written), np.arange(stops[0]))


def test_a_partial_block_goes_at_once_to_an_idle_worker(tmp_path, client):
    # --latency bounds the wait while every worker is busy; with the workers idle, the
    # first frames of a block far from complete go out at the next poll. The writer stops
    # after 30 frames of the one 200-frame block until the run has processed them: with a
    # latency of a day, only the idle workers get them processed (else the run would end
    # on the timeout, the rest of the scan never written)
    path, out = tmp_path / "scan.h5", tmp_path / "out.h5"
    scan = (10, 20)
    gate = tmp_path / "first-frames-processed"
    proc = start_writer(path, scan, rate=400, gate=gate, gate_after=[30])
    released = []

    def progress(p):
        if not released and p["processed"] == 30:
            released.append(p["processed"])
            gate.touch()

    try:
        res = follow(path, out, client, scan, latency=86400.0,
                     partition_bytes=200 * int(np.prod(FRAME)) * 2, progress=progress,
                     timeout=20.0)
    finally:
        stop(proc)
    assert released == [30]
    assert res.stats["ended_by"] in ON_DATA, res.stats
    check(res, scan)


# the Dispatcher on its own: every frame handed out exactly once, whatever the arrival order


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 200), st.integers(1, 40), st.randoms(use_true_random=False),
       st.booleans())
def test_dispatcher_hands_out_every_frame_once(n, size, rnd, growing):
    order = list(range(n))
    rnd.shuffle(order)
    start = n // 2 if growing else n
    d = Dispatcher(start, size, latency=0.5, growing=growing)
    complete = np.zeros(start, dtype=bool)
    count = np.zeros(n, dtype=int)
    now = 0.0
    for step, i in enumerate(order):
        if growing and i >= complete.size:
            complete = np.r_[complete, np.zeros(n - complete.size, dtype=bool)]
            d.grow(n)
        complete[i] = True
        now += 0.1
        for a, b in d.due(complete, now, flush=step == len(order) - 1):
            assert a // size == (b - 1) // size, "a run crossed a block boundary"
            count[a:b] += 1
    assert (count == 1).all()


def test_dispatcher_full_block_at_once_partial_after_latency():
    d = Dispatcher(100, 10, latency=0.25)
    complete = np.zeros(100, dtype=bool)
    complete[0:10] = True
    complete[10:13] = True
    assert d.due(complete, now=0.0) == [(0, 10)]
    assert d.due(complete, now=0.2) == []
    assert d.due(complete, now=0.26) == [(10, 13)]
    complete[13:20] = True  # the rest of that block: it completes the block, so it goes at once
    assert d.due(complete, now=0.27) == [(13, 20)]


def test_dispatcher_growing_does_not_take_a_cut_short_block_as_full():
    d = Dispatcher(15, 10, latency=0.25, growing=True)
    complete = np.ones(15, dtype=bool)
    assert d.due(complete, now=0.0) == [(0, 10)]
    assert d.due(complete, now=0.1) == []  # frames 10..14 may be joined by 15..19
    assert d.due(complete, now=0.3) == [(10, 15)]
    fixed = Dispatcher(15, 10, latency=0.25)
    assert fixed.due(complete, now=0.0) == [(0, 10), (10, 15)]


def test_by_block_groups_runs_of_one_block():
    assert by_block([(0, 3), (5, 7), (10, 12), (25, 30)], 10) == [[(0, 3), (5, 7)], [(10, 12)],
                                                                  [(25, 30)]]


def test_chunks_of_many_frames_read_while_partly_written(tmp_path, client):
    # chunks of 10 frames, gzip: a partition can read a chunk whose later frames are not
    # written yet; the rest of that chunk must be read fresh later, not from a stale cache
    path, out = tmp_path / "scan.h5", tmp_path / "out.h5"
    scan = (8, 30)
    proc = start_writer(path, scan, rate=300, chunk_frames=10, compression="gzip")
    try:
        res = follow(path, out, client, scan, latency=0.01, poll_interval=0.01,
                     partition_bytes=3 * 512)
    finally:
        stop(proc)
    with h5py.File(path, "r") as f:
        assert f[DATA].chunks[:2] == (1, 10) and f[DATA].compression == "gzip"
    check(res, scan)


def test_nothing_ever_completes_is_an_error_and_writes_no_output(tmp_path, client):
    path, out = tmp_path / "scan.h5", tmp_path / "out.h5"
    proc = start_writer(path, (4, 5), rate=100, stall_after=0)
    try:
        with pytest.raises(FramebagError, match="no frame of .* became complete .*timeout"):
            follow(path, out, client, (4, 5), timeout=0.5)
    finally:
        stop(proc, grace=0)
    assert not out.exists()


class _OnLog(logging.Handler):
    """Calls ``action`` once, when the run logs a message containing ``text``."""

    def __init__(self, text: str, action) -> None:
        super().__init__()
        self.text, self.action, self.fired = text, action, False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.fired and self.text in record.getMessage():
            self.fired = True
            self.action()


def _on_log(text: str, action) -> _OnLog:
    handler = _OnLog(text, action)
    logger = logging.getLogger("framebag.progress")
    logger.addHandler(handler)
    handler.old_level = logger.level
    logger.setLevel(logging.INFO)
    return handler


def _off_log(handler: _OnLog) -> None:
    logger = logging.getLogger("framebag.progress")
    logger.removeHandler(handler)
    logger.setLevel(handler.old_level)


def test_follow_waits_for_a_file_that_appears_later(tmp_path, client):
    path, out = tmp_path / "scan.h5", tmp_path / "out.h5"
    scan = (4, 10)
    started: list[subprocess.Popen] = []
    threads: list[threading.Thread] = []

    def start():  # in a thread: the run's own thread must go on waiting
        t = threading.Thread(target=lambda: started.append(start_writer(path, scan, rate=200)))
        threads.append(t)
        t.start()

    # the run starts first; the detector's file appears once the run says it waits for it
    handler = _on_log("waiting up to", start)
    try:
        res = follow(path, out, client, scan, timeout=20)
    finally:
        _off_log(handler)
        for t in threads:
            t.join()
        for proc in started:
            stop(proc)
    assert handler.fired and started
    check(res, scan)


def test_follow_waits_while_the_writer_holds_its_file_before_swmr(tmp_path, client):
    path, out = tmp_path / "scan.h5", tmp_path / "out.h5"
    scan = (4, 10)
    gate = tmp_path / "run-is-waiting"
    # created in place and held, unreadable, until the run says it waits for it
    proc = start_writer(path, scan, rate=200, arm_for=0, gate=gate)
    handler = _on_log("waiting up to", gate.touch)
    try:
        with pytest.raises(OSError, match="lock"):
            h5py.File(path, "r", swmr=True)
        res = follow(path, out, client, scan, timeout=20)
    finally:
        _off_log(handler)
        gate.touch()
        stop(proc)
    assert handler.fired and proc.returncode == 0
    check(res, scan)


def test_follow_gives_up_on_a_file_that_never_appears(tmp_path, client):
    path, out = tmp_path / "scan.h5", tmp_path / "out.h5"
    t0 = time.monotonic()
    with pytest.raises(FramebagError, match=r"scan\.h5' does not exist, after waiting 0\.5 s"):
        follow(path, out, client, (4, 5), timeout=0.5)
    assert time.monotonic() - t0 >= 0.5
    assert not out.exists()


def test_a_named_finished_flag_that_is_missing_is_an_error(tmp_path, client):
    path = tmp_path / "scan.h5"
    simulate(path, (2, 3), FRAME, rate=10_000, finished_shape="none")
    wf = workflow((2, 3))
    with pytest.raises(FramebagError, match="entry/nope"):
        wf.run(path, tmp_path / "out.h5", client=client, follow=True, finished="entry/nope")
    assert not (tmp_path / "out.h5").exists()


def _hold_open(out: str, gate: str, opened, release) -> None:
    """A reader (say, a viewer) that keeps the output open with swmr=True until released;
    the writer goes on past its gate only once this reader has the output open."""
    while not os.path.exists(out):
        time.sleep(0.005)
    with h5py.File(out, "r", swmr=True):
        opened.set()
        Path(gate).touch()
        release.wait(60)


def test_a_reader_holding_the_output_open_does_not_break_the_end(tmp_path, client):
    path, out = tmp_path / "scan.h5", tmp_path / "out.h5"
    scan = (4, 20)
    ctx = mp.get_context("spawn")
    opened, release = ctx.Event(), ctx.Event()
    gate = tmp_path / "reader-has-it-open"
    reader = ctx.Process(target=_hold_open, args=(str(out), str(gate), opened, release))
    reader.start()
    proc = start_writer(path, scan, rate=100, gate=gate, gate_after=10)
    try:
        res = follow(path, out, client, scan)
        assert opened.is_set()
    finally:
        release.set()
        reader.join(timeout=10)
        stop(proc)
    check(res, scan)
    assert ended_attr(out) in ON_DATA


def test_simulate_gate_after_without_a_gate_is_refused(tmp_path):
    out = tmp_path / "scan.h5"
    for extra in (["--gate-after", "3"], ["--gate", str(tmp_path / "g"), "--gate-after", "99"]):
        r = subprocess.run([sys.executable, "-m", "framebag.cli", "simulate", str(out), "--scan",
                            "2x3", "--frame", "2x2", *extra], capture_output=True, text=True)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert "--gate-after" in r.stderr and "Traceback" not in r.stderr
        assert not out.exists()
