"""The simulator on its own: what it writes, in which order, and its command line."""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from framebag.cli import main
from framebag.simulate import (
    DATA,
    FINISHED,
    KEY,
    KEY_TIME,
    emission_order,
    expected_frames,
    frame_at,
    simulate,
)


def test_frames_are_a_pure_function_of_seed_and_index():
    a = frame_at(3, 17, (8, 9), "uint16")
    np.testing.assert_array_equal(a, frame_at(3, 17, (8, 9), "uint16"))
    assert not np.array_equal(a, frame_at(3, 18, (8, 9), "uint16"))
    assert not np.array_equal(a, frame_at(4, 17, (8, 9), "uint16"))
    assert frame_at(0, 0, (4,), "uint8").max() < 256
    assert frame_at(0, 0, (4, 4), "float32").dtype == np.float32


@pytest.mark.parametrize("opts", [
    {},
    {"writers": 2, "snake": True, "finished_shape": "1", "dtype": "int32"},
    {"growing": True, "chunk_frames": 5, "compression": "gzip", "finished_shape": "none"},
])
def test_finished_file_holds_the_expected_scan(tmp_path, opts):
    path = tmp_path / "sim.h5"
    n = simulate(path, (4, 5), (6, 7), rate=2000, seed=9, **opts)
    assert n == 20
    dtype = opts.get("dtype", "uint16")
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f[DATA][()], expected_frames((4, 5), (6, 7), dtype, 9))
        assert f[DATA].dtype == np.dtype(dtype)
        assert f[KEY].shape == (4, 5, 1, 1) and (f[KEY][()] == 1).all()
        assert (f[KEY_TIME][()] > 0).all()
        shape = opts.get("finished_shape", "scalar")
        if shape == "none":
            assert FINISHED not in f
        else:
            assert f[FINISHED].shape == (() if shape == "scalar" else (1,))
            assert int(np.asarray(f[FINISHED][()]).ravel()[0]) == 1
        if opts.get("growing"):
            assert f[DATA].maxshape[0] is None and f[KEY].maxshape[0] is None
            assert f[DATA].chunks[:2] == (1, 5) and f[DATA].compression == "gzip"
        else:
            assert f[DATA].maxshape == f[DATA].shape


def test_emission_order_snake_and_writers():
    plain = emission_order((3, 4))
    np.testing.assert_array_equal(plain, np.arange(12))
    snake = emission_order((3, 4), snake=True)
    np.testing.assert_array_equal(snake, [0, 1, 2, 3, 7, 6, 5, 4, 8, 9, 10, 11])
    two = emission_order((10, 10), writers=2, writer_lag=3)
    assert sorted(two.tolist()) == list(range(100))
    assert (np.diff(two) < 0).any(), "two lagging writers should complete keys out of order"


def test_rate_and_stall_shape_the_key_times(tmp_path):
    path = tmp_path / "sim.h5"
    simulate(path, (40,), (4, 4), rate=200, stall_after=10, stall_for=0.5)
    with h5py.File(path, "r") as f:
        t = f[KEY_TIME][()]
    gaps = np.diff(t)
    assert gaps[9] >= 0.45, "no pause after the 10th frame"
    # no key before its time: the schedule restarts after the stall, and the 29 frames
    # after frame 10 take at least 29 / 200 s. Only lower bounds: a loaded machine writes
    # late (and then catches up in bigger batches), never early
    assert t[-1] - t[9] >= 0.5 + 29 / 200 - 0.01


def test_file_is_in_swmr_mode_when_it_appears(tmp_path):
    # a reader that opens the file as soon as the path exists, while it is written
    path = tmp_path / "sim.h5"
    gate = tmp_path / "reader-saw-keys"  # the writer waits after 100 of 200 frames
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=simulate, args=(str(path), (20, 10), (8, 8), 200.0),
                    kwargs={"gate": str(gate), "gate_after": 100})
    p.start()
    try:
        while not path.exists():
            assert p.exitcode is None, "the simulator failed before creating its file"
            time.sleep(0.005)
        with h5py.File(path, "r", swmr=True) as f:
            key = f[KEY]
            seen = []
            while not seen or seen[-1] < 200:  # the gate, not the clock, bounds the loop
                key.refresh()
                seen.append(int((key[()] != 0).sum()))
                if seen[-1] == 100:
                    gate.touch()
                assert p.exitcode is None or seen[-1] == 200, "the simulator failed"
                time.sleep(0.01)
        assert seen[0] <= 100 and max(seen) > seen[0], f"keys did not grow live: {seen[:5]}..."
    finally:
        p.join(timeout=20)
    assert p.exitcode == 0


def _keys_set(path) -> int:
    with h5py.File(path, "r", swmr=True) as f:
        return int((f[KEY][()] != 0).sum())


def test_gate_stops_the_writer_at_each_stop_until_released(tmp_path):
    # the writer stops at 5 and again at 12 frames; each release (the gate file) opens one
    # stop, and the writer removes the file as it passes a stop that is not the last
    path, gate = tmp_path / "sim.h5", tmp_path / "gate"
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=simulate, args=(str(path), (20,), (4, 4), 10_000.0),
                    kwargs={"gate": str(gate), "gate_after": (12, 5)})
    p.start()
    try:
        for stop, left in ((5, True), (12, False)):
            n = 0
            while n < stop:  # a safety net only: the writer cannot pass the stop unreleased
                assert p.exitcode is None, "the simulator failed"
                n = _keys_set(path) if path.exists() else 0
                time.sleep(0.005)
            assert n == stop and not gate.exists()
            gate.touch()
            while left and gate.exists():  # consumed: the next stop waits for a new release
                assert p.exitcode is None, "the simulator failed"
                time.sleep(0.005)
        p.join(timeout=60)
        assert p.exitcode == 0 and _keys_set(path) == 20 and gate.exists()
        with h5py.File(path, "r") as f:
            assert f[FINISHED][()] == 1
    finally:
        if p.is_alive():
            p.kill()


def test_cli_writes_a_scan_and_rejects_bad_options(tmp_path, capsys):
    out = tmp_path / "cli.h5"
    proc = subprocess.run(
        [sys.executable, "-m", "framebag.cli", "simulate", str(out), "--scan", "3x4",
         "--frame", "5x5", "--rate", "1000", "--snake", "--writers", "2"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "simulated 12 frames" in proc.stdout
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f[DATA][()], expected_frames((3, 4), (5, 5)))
    capsys.readouterr()
    assert main(["simulate", str(out), "--scan", "2x2", "--rate", "1e5", "-q"]) == 0
    assert capsys.readouterr().out == ""  # -q: "no progress display and no summary line"
    assert main(["simulate", str(out), "--dtype", "nonsense"]) == 2
    assert "--dtype 'nonsense'" in capsys.readouterr().err
    assert main(["simulate", str(out), "--rate", "0"]) == 2
    assert "--rate" in capsys.readouterr().err
    assert main(["simulate", str(out), "--scan", "3xq"]) == 2
    assert main(["simulate", str(tmp_path / "no" / "x.h5")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_dropped_frames_keep_their_keys_zero(tmp_path):
    from framebag.simulate import KEY, simulate

    path = tmp_path / "s.h5"
    simulate(path, (3, 4), (2, 2), rate=1e5, drop=(5, 7))
    with h5py.File(path, "r") as f:
        keys = f[KEY][()].reshape(3, 4)
        assert f["entry/finished"][()] == 1
    want = np.ones((3, 4), dtype=bool)
    want.flat[[5, 7]] = False
    np.testing.assert_array_equal(keys != 0, want)


def test_simulate_replaces_only_its_own_scans(tmp_path, capsys):
    """A mistyped OUTPUT must not destroy a real file: only an earlier simulated scan is
    replaced, anything else only with --overwrite."""
    import hashlib

    real = tmp_path / "real.h5"
    with h5py.File(real, "w") as f:
        f["entry/data/data"] = np.arange(12).reshape(3, 4)
    notes = tmp_path / "notes.txt"
    notes.write_text("beamtime notes\n")
    for victim in (real, notes):
        before = hashlib.sha256(victim.read_bytes()).hexdigest()
        rc = main(["simulate", str(victim), "--scan", "2x2", "--frame", "4x4", "--rate", "1e6"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1, err
        assert str(victim) in err and "--overwrite" in err, err
        assert hashlib.sha256(victim.read_bytes()).hexdigest() == before
    sim = tmp_path / "sim.h5"
    args = ["--scan", "2x2", "--frame", "4x4", "--rate", "1e6"]
    assert main(["simulate", str(sim), *args]) == 0
    assert main(["simulate", str(sim), "--scan", "3x2", "--frame", "4x4", "--rate", "1e6"]) == 0
    with h5py.File(sim, "r") as f:  # an earlier simulation is replaced, as the quick start needs
        assert f["entry/data/data"].shape[:2] == (3, 2)
    assert main(["simulate", str(real), *args, "--overwrite"]) == 0
    with h5py.File(real, "r") as f:
        assert f["entry/data"].attrs["simulated"]
