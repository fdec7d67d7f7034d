"""Inputs that cannot be trusted, and values that cannot be stored: refused in one sentence.

Real faults only: a file cut short with ``truncate``, a SWMR writer process killed
with SIGKILL, a byte flipped in a fletcher32-checked chunk, a filter plugin that is
not installed, a live writer that sets keys before it grows the data (sequenced by
gate files the test releases), and functions that return what no result can hold.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from framebag import FramebagError, Workflow
from framebag.folds import Fold
from framebag.workflow import load_workflow

from .conftest import DATA, KEY, assert_one_sentence, run_cli

FRAME_SUM = "workflows/frame_sum.py"
FINISHED = "entry/finished"
REPO = Path(__file__).resolve().parents[1]


def totals_workflow(name: str = "tot") -> Workflow:
    wf = Workflow(name, data=DATA, keys=[KEY], finished=FINISHED)

    @wf.frame
    def total(frame):
        return frame.sum()

    return wf


def wait_for(path: Path, proc: subprocess.Popen | None = None) -> None:
    """Wait for a gate file; fail with the writer's stderr if it dies first."""
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"writer exited early: {proc.stderr.read().decode()}")
        time.sleep(0.005)


# 1. a truncated input ---------------------------------------------------------------


@pytest.mark.parametrize("keep", [0.999, 0.75, 0.5, 0.1, 0.02, 100])
def test_truncated_input_is_refused_before_any_cluster(make_scan, unchanged, capsys, tmp_path,
                                                       keep):
    path, _ = make_scan((10, 20), (16, 16))
    size = path.stat().st_size
    cut = keep if keep > 1 else int(size * keep)
    subprocess.run(["truncate", "-s", str(cut), str(path)], check=True)
    unchanged(path)
    out = tmp_path / "out.h5"
    rc, err = run_cli(capsys, "run", FRAME_SUM, str(path), "-o", str(out))
    assert_one_sentence(rc, err, str(path), "truncated", f"holds {cut} bytes")
    assert not out.exists()
    with pytest.raises(FramebagError, match="truncated"):
        totals_workflow().run(path, out)  # the Python API too, and no client needed to refuse


def test_damaged_key_header_is_refused_at_once(make_scan, unchanged, capsys, tmp_path):
    """A flipped byte in a dataset's object header fails at once, not after SWMR's retries."""
    path, _ = make_scan((10, 20), (16, 16))
    with h5py.File(path, "r") as f:
        addr = h5py.h5o.get_info(f[KEY].id).addr
    with open(path, "r+b") as fh:
        fh.seek(addr + 20)
        byte = fh.read(1)
        fh.seek(addr + 20)
        fh.write(bytes([byte[0] ^ 0xFF]))
    unchanged(path)
    rc, err = run_cli(capsys, "run", FRAME_SUM, str(path), "-o", str(tmp_path / "o.h5"))
    assert_one_sentence(rc, err, str(path), KEY, "damaged", "checksum")


CRASHING_WRITER = textwrap.dedent("""
    import os, sys, time
    import h5py, numpy as np
    path, gates = sys.argv[1], sys.argv[2]
    f = h5py.File(path, "w", libver="latest")
    data = np.arange(10 * 20 * 16 * 16, dtype="uint32").reshape(10, 20, 16, 16) % 977
    d = f.create_dataset("entry/data/data", shape=data.shape, dtype="u2", chunks=(1, 1, 16, 16))
    k = f.create_dataset("entry/keys/key_1", shape=(10, 20, 1, 1), dtype="i4", fillvalue=0)
    f.swmr_mode = True
    for row in range(10):
        d[row] = data[row]
        d.flush()
        k[row] = 1
        f.flush()
    open(os.path.join(gates, "written"), "w").close()
    while True:
        time.sleep(60)
""")


def test_crashed_swmr_writer_is_read_but_truncated_one_is_refused(tmp_path, unchanged, capsys,
                                                                  client):
    """A file left flagged "open for write" by a SIGKILLed SWMR writer still runs."""
    path = tmp_path / "crashed.h5"
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_WRITER, str(path), str(tmp_path)],
                            stderr=subprocess.PIPE)
    try:
        wait_for(tmp_path / "written", proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with pytest.raises(OSError, match="open for write"):
        h5py.File(path, "r")  # the crash left the file flagged: HDF5 refuses a plain open
    unchanged(path)
    want = (np.arange(10 * 20 * 16 * 16).reshape(10, 20, 16, 16) % 977).sum(axis=(2, 3))
    res = load_workflow(FRAME_SUM).run(path, tmp_path / "o.h5", client=client)
    np.testing.assert_array_equal(res["total"], want)
    subprocess.run(["truncate", "-s", str(path.stat().st_size // 2), str(path)], check=True)
    unchanged(path)
    rc, err = run_cli(capsys, "run", FRAME_SUM, str(path), "-o", str(tmp_path / "o2.h5"))
    assert_one_sentence(rc, err, str(path), "truncated")


# 2. a chunk that fails to read -------------------------------------------------------


def flip_chunk_byte(path: Path, coord: tuple[int, ...]) -> None:
    with h5py.File(path, "r") as f:
        info = f[DATA].id.get_chunk_info_by_coord(coord)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        byte = fh.read(1)
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(bytes([byte[0] ^ 0x5A]))


def test_checksum_error_names_dataset_and_frame_and_is_never_retried(tmp_path, unchanged,
                                                                     client, caplog):
    data = np.random.default_rng(3).integers(0, 1000, (10, 20, 16, 16)).astype("uint16")
    path = tmp_path / "in.h5"
    with h5py.File(path, "w", libver="latest") as f:
        f.create_dataset(DATA, data=data, chunks=(1, 1, 16, 16), fletcher32=True)
        f.create_dataset(KEY, data=np.ones((10, 20, 1, 1), "i4"))
    flip_chunk_byte(path, (6, 4, 0, 0))
    unchanged(path)
    out = tmp_path / "out.h5"
    with caplog.at_level(logging.WARNING, logger="framebag"):
        with pytest.raises(FramebagError) as info:
            # one task per scan row, and retries that would be spent if it were retried
            totals_workflow().run(path, out, client=client, partition_bytes=data[0].nbytes,
                                  retries=5)
    msg = str(info.value)
    assert len(msg.splitlines()) == 1
    assert f"'{DATA}'" in msg and "frame (6, 4)" in msg and "fletcher32" in msg, msg
    assert "retry" not in caplog.text
    with h5py.File(out, "r") as f:
        done = f["entry/tot/done"][()].astype(bool)
        total = f["entry/tot/total"][()]
    assert not done[6, 4]  # a failed read is never a result, zeros or otherwise
    np.testing.assert_array_equal(total[done], data.sum(axis=(2, 3))[done])


def test_checksum_error_on_the_probed_frame(tmp_path, unchanged, client):
    data = np.random.default_rng(4).integers(0, 1000, (3, 4, 8, 8)).astype("uint16")
    path = tmp_path / "in.h5"
    with h5py.File(path, "w", libver="latest") as f:
        f.create_dataset(DATA, data=data, chunks=(1, 2, 8, 8), fletcher32=True)
        f.create_dataset(KEY, data=np.ones((3, 4), "i4"))
    flip_chunk_byte(path, (0, 0, 0, 0))
    unchanged(path)
    with pytest.raises(FramebagError) as info:
        totals_workflow().run(path, tmp_path / "o.h5", client=client)
    # the chunk holds two frames: the read of one frame names that frame
    assert "frame (0, 0) of" in str(info.value) and "fletcher32" in str(info.value)


NO_PLUGIN = textwrap.dedent("""
    import sys
    sys.modules["hdf5plugin"] = None  # as if it were not installed: importing it fails
    from framebag.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_missing_filter_plugin_names_the_filter(tmp_path, unchanged):
    hdf5plugin = pytest.importorskip("hdf5plugin")
    data = np.random.default_rng(5).integers(0, 1000, (4, 5, 16, 16)).astype("uint16")
    path = tmp_path / "lz4.h5"
    with h5py.File(path, "w", libver="latest") as f:
        f.create_dataset(DATA, data=data, chunks=(1, 1, 16, 16), **hdf5plugin.LZ4())
        f.create_dataset(KEY, data=np.ones((4, 5, 1, 1), "i4"))
    unchanged(path)
    out = tmp_path / "o.h5"
    env = {**os.environ, "HDF5_PLUGIN_PATH": str(tmp_path)}  # no plugin library there
    cmd = [sys.executable, "-c", NO_PLUGIN, "run", FRAME_SUM, str(path), "-o", str(out),
           "--quiet"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    err = proc.stderr.strip()
    assert proc.returncode != 0 and "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert f"'{DATA}'" in err and "frame (0, 0)" in err and "32004" in err and "lz4" in err
    assert "hdf5plugin" in err
    assert not out.exists()
    with h5py.File(path, "r") as f:  # with the plugin (imported here), the same file reads
        np.testing.assert_array_equal(f[DATA][()], data)


# 3. live: keys ahead of the data ------------------------------------------------------


KEYS_FIRST_WRITER = textwrap.dedent("""
    import os, sys, time
    import h5py, numpy as np
    from framebag.simulate import frames_at
    path, gates, layout = sys.argv[1], sys.argv[2], sys.argv[3]
    W, FRAME = 20, (16, 16)

    def gate(name):
        while not os.path.exists(os.path.join(gates, name)):
            time.sleep(0.005)

    tmp = path + ".tmp"
    f = h5py.File(tmp, "w", libver="latest")
    d = f.create_dataset("entry/data/data", shape=(0, W) + FRAME, maxshape=(None, W) + FRAME,
                         dtype="u2", chunks=(1, 1) + FRAME)
    krows = 0 if layout == "growing" else 3  # "growing": keys grow too; else preallocated
    k = f.create_dataset("entry/keys/key_1", shape=(krows, W, 1, 1),
                         maxshape=(None if layout == "growing" else 3, W, 1, 1),
                         dtype="i4", chunks=(1, W, 1, 1), fillvalue=0)
    flag = f.create_dataset("entry/finished", shape=(), dtype="i4", data=0)
    f.swmr_mode = True
    os.rename(tmp, path)

    def data_rows(rows):
        n = d.shape[0]
        d.resize(rows, axis=0)
        d[n:rows] = frames_at(0, np.arange(n * W, rows * W), FRAME).reshape(rows - n, W, *FRAME)
        d.flush()

    def key_rows(a, b):
        if k.shape[0] < b:
            k.resize(b, axis=0)
        k[a:b] = 1
        k.flush()

    data_rows(2)
    key_rows(0, 2)
    key_rows(2, 3)  # the keys of row 2 run ahead of the data, which hold two rows
    open(os.path.join(gates, "ahead"), "w").close()
    gate("release")
    data_rows(3)
    flag[()] = 1
    flag.flush()
    f.close()
""")


def start_keys_first_writer(tmp_path: Path, layout: str) -> tuple[Path, subprocess.Popen]:
    path = tmp_path / "live.h5"
    proc = subprocess.Popen([sys.executable, "-c", KEYS_FIRST_WRITER, str(path), str(tmp_path),
                             layout], cwd=REPO, stderr=subprocess.PIPE)
    wait_for(tmp_path / "ahead", proc)
    return path, proc


@pytest.mark.parametrize("layout", ["growing", "data_growing"])
def test_keys_ahead_of_data_are_waited_for(tmp_path, client, caplog, layout):
    from framebag.simulate import expected_frames

    path, proc = start_keys_first_writer(tmp_path, layout)
    held = []

    def progress(p):
        # rows 0-1 processed while the keys of row 2 are seen but held back: release the data
        if p["processed"] == 40 and p["seen"] == 60 and p["complete"] == 40 and not held:
            held.append(p)
            (tmp_path / "release").touch()

    try:
        with caplog.at_level(logging.WARNING, logger="framebag"):
            res = totals_workflow().run(path, tmp_path / "out.h5", client=client, follow=True,
                                        timeout=60, poll_interval=0.01, progress=progress)
    finally:
        (tmp_path / "release").touch()
        proc.wait(timeout=60)
    assert proc.returncode == 0, proc.stderr.read().decode()
    assert held, "the frames whose data were there were not processed while row 2 waited"
    assert "retry" not in caplog.text and "failed" not in caplog.text
    want = expected_frames((3, 20), (16, 16)).sum(axis=(2, 3))
    assert res.done.all() and res.stats["ended_by"] in ("finished_flag", "keys_full")
    np.testing.assert_array_equal(res["total"], want)


def test_keys_ahead_of_data_that_never_comes_end_on_the_timeout(tmp_path, client):
    from framebag.simulate import expected_frames

    path, proc = start_keys_first_writer(tmp_path, "growing")
    try:
        res = totals_workflow().run(path, tmp_path / "out.h5", client=client, follow=True,
                                    timeout=1.0, poll_interval=0.01)
    finally:
        (tmp_path / "release").touch()
        proc.wait(timeout=60)
    assert res.stats["ended_by"] == "timeout"
    done = np.zeros((3, 20), bool)
    done[:2] = True
    np.testing.assert_array_equal(res.done, done)
    want = expected_frames((3, 20), (16, 16)).sum(axis=(2, 3))
    np.testing.assert_array_equal(res["total"][:2], want[:2])


def test_keys_beyond_the_data_of_a_finished_file_process_what_both_cover(tmp_path, unchanged,
                                                                          capsys, caplog):
    """Issue 13, item 6: the frames both cover are processed, with one warning naming both."""
    path = tmp_path / "short.h5"
    with h5py.File(path, "w", libver="latest") as f:
        f.create_dataset(DATA, data=np.ones((2, 5, 4, 4), "u2"), maxshape=(None, 5, 4, 4))
        f.create_dataset(KEY, data=np.ones((3, 5), "i4"), maxshape=(None, 5))
    unchanged(path)
    with caplog.at_level(logging.WARNING, logger="framebag"):
        rc, err = run_cli(capsys, "run", FRAME_SUM, str(path), "-o", str(tmp_path / "o.h5"))
    assert rc == 0, err
    warned = [r.getMessage() for r in caplog.records if "both cover" in r.getMessage()]
    assert len(warned) == 1 and "(3, 5)" in warned[0] and "(2, 5)" in warned[0], caplog.text
    with h5py.File(tmp_path / "o.h5", "r") as f:
        assert f["entry/frame_sum/done"].shape == (2, 5) and f["entry/frame_sum/done"][()].all()


# 4. return values -------------------------------------------------------------------


BAD_VALUES = {
    "None": None,
    "str": "12",
    "dict": {"a": 1},
    "ndarray of dtype object": np.array([1, None], dtype=object),
}
FOLDS = [None, "mean", "sum", "max", "var",
         Fold("custom", lambda: 0.0, lambda a, v: a + np.sum(v), lambda a, b: a + b)]


def bad_workflow(value, fold, batched: bool, at: int = 5) -> Workflow:
    wf = Workflow("bad", data=DATA, keys=[KEY])

    if batched:
        def values(frames, index):
            out = frames.sum(axis=(1, 2)).astype(float)
            hit = np.flatnonzero((index[:, 0] * 4 + index[:, 1]) == at)
            if hit.size:  # numpy makes an object array of numbers and anything else
                out = out.astype(object)
                out[hit[0]] = value
            return out

        wf.frames(values, fold=fold)
    else:
        def values(frame, index):
            return value if index[0] * 4 + index[1] == at else float(frame.sum())

        wf.frame(values, fold=fold)
    return wf


@pytest.mark.parametrize("batched", [False, True], ids=["per_frame", "batched"])
@pytest.mark.parametrize("fold", FOLDS, ids=lambda f: getattr(f, "name", f) or "stack")
@pytest.mark.parametrize("kind", list(BAD_VALUES))
def test_non_numeric_value_names_function_frame_and_type(kind, fold, batched):
    frames = np.arange(12 * 16, dtype="uint16").reshape(12, 4, 4)
    wf = bad_workflow(BAD_VALUES[kind], fold, batched)
    with pytest.raises(FramebagError) as info:
        # on_error="skip" does not skip it: the function is wrong, not the frame
        wf.apply(frames, 0, (3, 4), {}, on_error="skip")
    msg = str(info.value)
    assert "'values'" in msg and "(1, 1)" in msg and kind.split()[0] in msg, msg
    if kind.startswith("ndarray"):
        assert "object" in msg


def test_mean_of_none_through_the_cli_stops_with_one_sentence(make_scan, capsys, tmp_path):
    path, _ = make_scan((3, 4), (4, 4))
    wf = tmp_path / "wf.py"
    wf.write_text(
        "from framebag import Workflow\n"
        f"workflow = Workflow('w', data='{DATA}', keys=['{KEY}'])\n"
        "@workflow.frame(fold='mean')\n"
        "def level(frame, index):\n"
        "    return None if index == (2, 1) else frame.mean()\n"
    )
    out = tmp_path / "o.h5"
    rc, err = run_cli(capsys, "run", str(wf), str(path), "-o", str(out), "--quiet")
    assert_one_sentence(rc, err, "'level'", "(2, 1)", "None")


@pytest.mark.parametrize("batched", [False, True], ids=["per_frame", "batched"])
@pytest.mark.parametrize("fold", [None, "sum"], ids=["stack", "sum"])
def test_float64_after_float32_across_tasks_is_named_not_cast(make_scan, client, tmp_path,
                                                              fold, batched):
    path, data = make_scan((3, 4), (4, 4))
    wf = Workflow("dt", data=DATA, keys=[KEY])
    if batched:
        def value(frames, index):
            sums = frames.sum(axis=(1, 2))
            return sums.astype(np.float64 if index[0, 0] == 2 else np.float32)

        wf.frames(value, fold=fold)
    else:
        def value(frame, index):  # float32 for the probe's frame (0, 0), float64 on row 2
            return np.float64(frame.sum()) if index[0] == 2 else np.float32(frame.sum())

        wf.frame(value, fold=fold)
    with pytest.raises(FramebagError) as info:  # one frame per task
        wf.run(path, tmp_path / "o.h5", client=client, partition_bytes=data[0, 0].nbytes)
    msg = str(info.value)
    assert len(msg.splitlines()) == 1
    assert "'value'" in msg and "(2, " in msg and "float64" in msg and "float32" in msg, msg


@pytest.mark.parametrize("fold", [None, "mean"], ids=["stack", "mean"])
def test_float64_after_float32_within_a_task_is_named_not_cast(fold):
    frames = np.arange(12 * 16, dtype="uint16").reshape(12, 4, 4)
    wf = Workflow("dt", data=DATA, keys=[KEY])

    @wf.frame(fold=fold)
    def value(frame, index):
        return np.float64(frame.sum()) if index == (2, 1) else np.float32(frame.sum())

    with pytest.raises(FramebagError) as info:
        wf.apply(frames, 0, (3, 4), {})
    msg = str(info.value)
    assert "'value'" in msg and "(2, 1)" in msg and "float64" in msg and "float32" in msg, msg
    # and a later slab whose first value differs from an earlier slab's (or the probe's)
    first = wf.apply(frames[:1], 0, (3, 4), {})
    with pytest.raises(FramebagError, match=r"\(2, 1\).*float32"):
        wf.apply(frames[9:10], 9, (3, 4), {}, expect=first.kinds)


def test_one_value_type_per_function_passes_and_mixed_python_numpy_scalars_are_fine():
    frames = np.arange(12 * 16, dtype="uint16").reshape(12, 4, 4)
    wf = Workflow("ok", data=DATA, keys=[KEY])

    @wf.frame
    def mixed(frame, index):  # a Python float and np.float64 are both float64
        return float(frame.sum()) if index[1] % 2 else np.float64(frame.sum())

    @wf.frame(fold="max")
    def image(frame):
        return frame

    p = wf.apply(frames, 0, (3, 4), {})
    np.testing.assert_array_equal(p.stacks["mixed"], frames.sum(axis=(1, 2)))
    assert p.stacks["mixed"].dtype == np.float64
    np.testing.assert_array_equal(p.accs["image"], frames.max(axis=0))
    assert p.kinds["mixed"][0] == np.float64 and p.kinds["image"][0] == np.uint16


def test_damaged_chunk_index_is_one_sentence_and_never_hangs(tmp_path):
    """Flipped bytes all over a finished input's metadata: an SWMR read retried them for
    good (SIGTERM did not stop it); now the read fails after bounded tries."""
    from framebag.simulate import simulate

    good = tmp_path / "scan.h5"
    simulate(good, (4, 5), (16, 16), rate=1e6)
    raw = bytearray(good.read_bytes())
    for i in range(2000, min(20000, len(raw)), 97):
        raw[i] ^= 0xFF
    bad = tmp_path / "flip.h5"
    bad.write_bytes(bytes(raw))
    before = bad.read_bytes()
    env = {k: v for k, v in os.environ.items() if k != "DASK_LOGGING__DISTRIBUTED"}
    proc = subprocess.run(  # a hang is the test's timeout, not a pass
        [sys.executable, "-m", "framebag.cli", "run", "framebag.workflows.frame_sum", str(bad),
         "-o", str(tmp_path / "out.h5"), "--profile", "inline"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("framebag: error: ") and str(bad) in last, proc.stderr
    assert "Traceback" not in proc.stderr
    assert bad.read_bytes() == before
