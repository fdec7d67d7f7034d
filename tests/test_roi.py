"""Part of a scan (``--roi``, ``roi=``): only the frames inside are read and folded, once.

Real files, the session's real LocalCluster, a real SWMR writer for the live case,
damaged chunks for "never read", and a ROI grown by a second ``--resume`` run whose
folds are compared with numpy over the union of both ROIs.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from framebag import FramebagError, Workflow, load_workflow
from framebag.simulate import DATA as SIM_DATA
from framebag.simulate import FINISHED as SIM_FINISHED
from framebag.simulate import KEY as SIM_KEY
from framebag.simulate import expected_frames

from .conftest import DATA, KEY, assert_one_sentence, run_cli

SCAN = (8, 6)
FRAME = (4, 4)

WF = f'''
import numpy as np

from framebag import Workflow

workflow = Workflow("region", data="{DATA}", keys=["{KEY}"])


@workflow.frame
def total(frame):
    return frame.sum(dtype=np.int64)


@workflow.frame(fold="sum")
def summed(frame):
    return frame.astype(np.int64)


@workflow.frame(fold="sum")
def count(frame):
    return np.int64(1)  # a frame folded twice counts twice
'''


def address_profile(tmp_path: Path, client) -> str:
    """A profile naming the session's LocalCluster, so CLI runs start no cluster of their own."""
    path = tmp_path / "here.yaml"
    path.write_text(f"cluster: address\naddress: {client.scheduler.address}\n")
    return str(path)


def region_mask(*sel) -> np.ndarray:
    m = np.zeros(SCAN, dtype=bool)
    m[sel] = True
    return m


def check(out: Path, data: np.ndarray, inside: np.ndarray) -> None:
    """The output holds exactly the frames ``inside``, each folded once, and keeps the scan."""
    with h5py.File(out, "r") as f:
        g = f["entry/region"]
        np.testing.assert_array_equal(g["done"][()].astype(bool), inside)
        np.testing.assert_array_equal(g["roi_mask"][()].astype(bool), inside)
        np.testing.assert_array_equal(
            g["total"][()], np.where(inside, data.sum(axis=(2, 3), dtype=np.int64), 0))
        np.testing.assert_array_equal(g["summed"][()],
                                      data[inside].astype(np.int64).sum(axis=0))
        assert int(g["count"][()]) == int(inside.sum())


@pytest.fixture
def job(tmp_path, make_scan):
    wf = tmp_path / "region.py"
    wf.write_text(WF)
    path, data = make_scan(SCAN, FRAME)
    return wf, path, data


def test_roi_grown_by_resume_folds_no_frame_twice(tmp_path, client, job, capsys):
    wf, path, data = job
    out = tmp_path / "out.h5"
    prof = address_profile(tmp_path, client)
    rc, text = run_cli(capsys, "run", str(wf), str(path), "-o", str(out), "--profile", prof,
                       "--roi", "1:4,::2")
    assert rc == 0, text
    first = region_mask(slice(1, 4), slice(None, None, 2))
    check(out, data, first)
    with h5py.File(out, "r") as f:
        assert f["entry/region"].attrs["roi"] == "1:4,::2"

    # grow it: the new ROI contains the old one; only the new frames are processed
    rc, text = run_cli(capsys, "run", str(wf), str(path), "-o", str(out), "--profile", prof,
                       "--roi", "0:6", "--resume")
    assert rc == 0, text
    union = first | region_mask(slice(0, 6))
    check(out, data, union)
    new = int(union.sum() - first.sum())
    assert f"{new} frames processed (+{int(first.sum())} done by the earlier run)" in text, text

    # --resume without --roi keeps the recorded ROI: nothing left to do, nothing refolded
    rc, text = run_cli(capsys, "run", str(wf), str(path), "-o", str(out), "--profile", prof,
                       "--resume")
    assert rc == 0, text
    assert "0 frames processed" in text, text
    check(out, data, union)
    rc, text = run_cli(capsys, "inspect", str(out))
    assert f"roi: 0:6: {int(union.sum())}/{int(union.sum())} frames done" in text, text

    # a ROI that does not contain the recorded one is refused, naming both
    rc, text = run_cli(capsys, "run", str(wf), str(path), "-o", str(out), "--profile", prof,
                       "--roi", "2:8", "--resume")
    assert_one_sentence(rc, text, "--roi 2:8 (36 of 48 frames)", "0:6 (36 of 48 frames)",
                        "may only grow")
    check(out, data, union)


def test_resume_of_a_whole_scan_output_refuses_a_smaller_roi(tmp_path, client, job, capsys):
    wf, path, data = job
    out = tmp_path / "out.h5"
    prof = address_profile(tmp_path, client)
    rc, text = run_cli(capsys, "run", str(wf), str(path), "-o", str(out), "--profile", prof)
    assert rc == 0, text
    rc, text = run_cli(capsys, "run", str(wf), str(path), "-o", str(out), "--profile", prof,
                       "--roi", "0:2", "--resume")
    assert_one_sentence(rc, text, "--roi 0:2", "the whole scan (48 frames)")


def _damage_chunks(path: Path, frames: np.ndarray) -> None:
    """Flip a byte inside the data chunk of every scan index in ``frames`` (fletcher32)."""
    with h5py.File(path, "r") as f:
        ds = f[DATA]
        places = [ds.id.get_chunk_info_by_coord(tuple(int(i) for i in idx) + (0, 0))
                  for idx in np.argwhere(frames)]
    with open(path, "r+b") as fh:
        for info in places:
            fh.seek(info.byte_offset + info.size // 2)
            b = fh.read(1)
            fh.seek(info.byte_offset + info.size // 2)
            fh.write(bytes([b[0] ^ 0xFF]))


def test_frames_outside_the_roi_are_never_read(tmp_path, client, unchanged):
    data = np.random.default_rng(3).integers(0, 1000, SCAN + FRAME).astype("uint16")
    path = tmp_path / "damaged.h5"
    with h5py.File(path, "w", libver="latest") as f:
        f.create_dataset(DATA, data=data, chunks=(1, 1) + FRAME, fletcher32=True)
        f.create_dataset(KEY, data=np.ones(SCAN, dtype="i4"))
    inside = region_mask(2)  # an integer selects one row
    _damage_chunks(path, ~inside)
    unchanged(path)
    source = tmp_path / "region.py"
    source.write_text(WF)
    wf = load_workflow(source)  # the workflow the other tests run, from its file
    with pytest.raises(FramebagError, match="(?i)checksum|fletcher|filter"):
        wf.run(path, tmp_path / "whole.h5", client=client)  # the damage is real
    res = wf.run(path, tmp_path / "out.h5", client=client, roi=(2,))
    check(tmp_path / "out.h5", data, inside)
    np.testing.assert_array_equal(res.roi, inside)
    assert "6/6 frames of the ROI done" in repr(res)
    # a boolean array selects the same frames
    wf.run(path, tmp_path / "mask.h5", client=client, roi=inside)
    check(tmp_path / "mask.h5", data, inside)


def test_frames_between_the_roi_frames_of_one_read_are_never_read(tmp_path, client,
                                                                  unchanged):
    # every other column, as the README's example: the frames between two ROI frames lie in
    # the same read of the grid, and one damaged there must not stop the run
    scan = (8, 40)  # reads of several frames
    data = np.random.default_rng(4).integers(0, 1000, scan + FRAME).astype("uint16")
    path = tmp_path / "damaged.h5"
    with h5py.File(path, "w", libver="latest") as f:
        f.create_dataset(DATA, data=data, chunks=(1, 1) + FRAME, fletcher32=True)
        f.create_dataset(KEY, data=np.ones(scan, dtype="i4"))
    inside = np.zeros(scan, dtype=bool)
    inside[:, ::2] = True
    _damage_chunks(path, ~inside)
    unchanged(path)
    source = tmp_path / "region.py"
    source.write_text(WF)
    wf = load_workflow(source)
    with pytest.raises(FramebagError, match="(?i)checksum|fletcher|filter"):
        wf.run(path, tmp_path / "whole.h5", client=client)  # the damage is real
    wf.run(path, tmp_path / "out.h5", client=client, roi=(slice(None), slice(None, None, 2)))
    check(tmp_path / "out.h5", data, inside)


def test_mask_from_a_previous_output(tmp_path, client, job, capsys):
    """A mask computed from an earlier result (thresholded, in another file) is a ROI."""
    wf, path, data = job
    prof = address_profile(tmp_path, client)
    first = tmp_path / "first.h5"
    rc, text = run_cli(capsys, "run", str(wf), str(path), "-o", str(first), "--profile", prof)
    assert rc == 0, text
    with h5py.File(first, "r") as f:
        sums = f["entry/region/total"][()]
    bright = sums > np.median(sums)
    with h5py.File(tmp_path / "mask.h5", "w") as f:
        f["bright"] = bright
    out = tmp_path / "out.h5"
    rc, text = run_cli(capsys, "run", str(wf), str(path), "-o", str(out), "--profile", prof,
                       "--roi", f"{tmp_path / 'mask.h5'}:/bright")
    assert rc == 0, text
    check(out, data, bright)
    # the done mask of an output (uint8 0/1) is a ROI too
    rc, text = run_cli(capsys, "run", str(wf), str(path), "-o", str(tmp_path / "again.h5"),
                       "--profile", prof, "--roi", f"{out}:/entry/region/done")
    assert rc == 0, text
    check(tmp_path / "again.h5", data, bright)


@pytest.fixture
def masks(job, unchanged):
    """Masks in the input: float, integers beyond 0/1, all False, and the wrong shape."""
    wf, path, data = job
    with h5py.File(path, "a") as f:
        f["float_mask"] = np.ones(SCAN)
        f["int_mask"] = np.full(SCAN, 2)
        f["none"] = np.zeros(SCAN, dtype=bool)
        f["short"] = np.ones((4, 6), dtype=bool)
        f.create_group("group")
    unchanged(path)  # changed on purpose; the runs must not change it
    return wf, path


@pytest.mark.parametrize("roi, says", [
    ("1:2,0:3,::2", "3 dims given, but the scan has 2"),
    ("::0", "step 0"),
    ("9:20", "selects nothing in scan dim 0"),
    ("2,6", "index 6 is outside scan dim 1"),
    ("1:x", "is not a slice"),
    ("float_mask", "dtype float64"),
    ("int_mask", "holds 2"),
    ("none", "selects no frame"),
    ("short", "shape (4, 6) but the scan has shape (8, 6)"),
    ("nothere", "'nothere' is not in input file"),
    ("group", "is a group, not a dataset"),
    ("missing.h5:/m", "does not exist"),
])
def test_bad_roi_is_one_sentence(tmp_path, masks, capsys, roi, says):
    wf, path = masks
    out = tmp_path / "out.h5"
    rc, text = run_cli(capsys, "run", str(wf), str(path), "-o", str(out), f"--roi={roi}")
    assert_one_sentence(rc, text, "--roi", says)
    assert rc == 2
    assert not out.exists()


def test_roi_on_a_plain_file_without_keys(tmp_path, client, capsys, unchanged):
    data = np.random.default_rng(4).integers(0, 1000, SCAN + FRAME).astype("uint16")
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f["images"] = data
    unchanged(path)
    out = tmp_path / "out.h5"
    rc, text = run_cli(capsys, "run", "framebag.workflows.frame_sum", str(path), "--data",
                       "images", "--no-keys", "--roi", "::3,1:", "-o", str(out), "--profile",
                       address_profile(tmp_path, client))
    assert rc == 0, text
    inside = region_mask(slice(None, None, 3), slice(1, None))
    with h5py.File(out, "r") as f:
        g = f["entry/frame_sum"]
        np.testing.assert_array_equal(g["done"][()].astype(bool), inside)
        np.testing.assert_array_equal(g["total"][()],
                                      np.where(inside, data.sum(axis=(2, 3)), 0))
        np.testing.assert_array_equal(g["brightest"][()], data[inside].max(axis=0))


def test_run_many_same_roi_a_scan_it_does_not_fit_fails_alone(tmp_path, client, make_scan):
    (a, da), (b, _) = make_scan(SCAN, FRAME, seed=1), make_scan((8, 3), FRAME, seed=2)
    wf = Workflow("region", data=DATA, keys=[KEY])

    @wf.frame
    def total(frame):
        return frame.sum(dtype=np.int64)

    done = wf.run_many([a, b], tmp_path, client=client, roi=(slice(0, 2), 4))
    assert list(done.failed) == [b]
    assert re.fullmatch(r"--roi 0:2,4: index 4 is outside scan dim 1 of length 3 .*",
                        str(done.failed[b]))
    res = done.succeeded[a]
    inside = region_mask(slice(0, 2), 4)
    np.testing.assert_array_equal(res.done, inside)
    np.testing.assert_array_equal(res["total"], np.where(inside, da.sum(axis=(2, 3)), 0))
    with pytest.raises(FramebagError, match="step 0"):  # bad syntax: before any scan runs
        wf.run_many([a, b], tmp_path, client=client, roi="::0")


@pytest.mark.parametrize("growing", [False, True])
def test_followed_scan_ends_when_its_roi_is_complete(tmp_path, client, growing):
    """The writer holds after the ROI's frames, flag unset: the run must end on the ROI
    being complete, not on the flag or the (long) timeout."""
    scan, frame = (6, 10), (16, 16)
    path, gate = tmp_path / "live.h5", tmp_path / "gate"
    cmd = [sys.executable, "-m", "framebag.cli", "simulate", str(path), "--scan", "6x10",
           "--frame", "16x16", "--rate", "400", "--gate", str(gate), "--gate-after", "30"]
    proc = subprocess.Popen(cmd + (["--growing"] if growing else []),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while not path.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.01)
        wf = Workflow("live", data=SIM_DATA, keys=[SIM_KEY], finished=SIM_FINISHED)

        @wf.frame
        def total(frame):
            return frame.sum(dtype=np.int64)

        res = wf.run(path, tmp_path / "out.h5", client=client, follow=True, timeout=300,
                     roi=(slice(1, 3), slice(None, None, 2)))
        assert proc.poll() is None  # the writer is still waiting at its gate
    finally:
        gate.touch()
        proc.wait(timeout=60)
    assert res.stats["ended_by"] == "keys_full"
    inside = np.zeros(scan, dtype=bool)
    inside[1:3, ::2] = True
    rows = res.done.shape[0]  # a growing scan: the rows written before the gate
    assert rows == (3 if growing else 6)
    exp = expected_frames(scan, frame)[:rows]
    np.testing.assert_array_equal(res.done, inside[:rows])
    np.testing.assert_array_equal(res["total"], np.where(inside[:rows], exp.sum(axis=(2, 3)), 0))


def test_follow_lines_of_a_roi_run_count_the_roi_not_the_scan(tmp_path, job):
    """``--follow --roi``: the progress lines and the summary's end call what they count (the
    ROI's frames) the ROI, also when ``--resume`` keeps the ROI the output records. They
    said ``scan 12/12 complete`` of a scan of 48 frames."""
    wf, path, _ = job
    out = tmp_path / "out.h5"
    argv = [sys.executable, "-m", "framebag.cli", "run", str(wf), str(path), "-o", str(out),
            "--follow", "--timeout", "60", "--profile", "inline", "--log-interval", "0"]
    for extra in (["--roi", "1:3"], ["--resume"]):
        run = subprocess.run(argv + extra, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        lines = run.stderr.splitlines()
        assert any(line.endswith("; ROI 12/12 complete, following it") for line in lines), lines
        assert any(line.endswith("; ROI 12/12 complete, 0 not yet") for line in lines), lines
        assert lines[-1].endswith("(ended: every frame of the ROI complete)"), lines
        assert not any("; scan " in line or "of the scan complete" in line for line in lines)
        assert "12/48 of the scan done" in lines[-1]  # there, the scan's frames are counted


def _growing_scan(path: Path, data: np.ndarray, rows: int) -> None:
    """A finished scan whose first scan dim is unlimited, holding the first ``rows`` rows."""
    with h5py.File(path, "a", libver="latest") as f:
        if DATA not in f:
            f.create_dataset(DATA, shape=(0, *data.shape[1:]), dtype=data.dtype,
                             maxshape=(None, *data.shape[1:]), chunks=(1, 1) + FRAME)
            f.create_dataset(KEY, shape=(0, data.shape[1]), dtype="i4",
                             maxshape=(None, data.shape[1]), chunks=(1, data.shape[1]))
        f[DATA].resize(rows, axis=0)
        f[KEY].resize(rows, axis=0)
        f[DATA][:rows] = data[:rows]
        f[KEY][:rows] = 1


def _every_other_row_of_a_growing_scan(tmp_path, client, job, capsys):
    """An output of ``--roi ::2`` over a growing scan of 4 rows so far: ``(wf, path, out,
    profile, data)``."""
    wf, _, data = job
    path = tmp_path / "growing.h5"
    _growing_scan(path, data, 4)
    out = tmp_path / "out.h5"
    prof = address_profile(tmp_path, client)
    rc, text = run_cli(capsys, "run", str(wf), str(path), "-o", str(out), "--profile", prof,
                       "--roi", "::2")
    assert rc == 0, text
    return wf, path, out, prof, data


def test_open_roi_of_a_growing_scan_is_kept_on_resume(tmp_path, client, job, capsys):
    """``::2`` over a scan that grew between two runs: the resumed run (no --roi) keeps the
    recorded slices, takes the new rows they select, and records them in roi_mask."""
    wf, path, out, prof, data = _every_other_row_of_a_growing_scan(tmp_path, client, job,
                                                                   capsys)
    check(out, data[:4], region_mask(slice(0, 4, 2))[:4])
    _growing_scan(path, data, 8)
    rc, text = run_cli(capsys, "run", str(wf), str(path), "-o", str(out), "--profile", prof,
                       "--resume")
    assert rc == 0, text
    check(out, data, region_mask(slice(None, None, 2)))
    assert "12 frames processed (+12 done by the earlier run)" in text, text
    rc, text = run_cli(capsys, "run", str(wf), str(path), "-o", str(out), "--profile", prof,
                       "--resume", "--roi", "0:4")
    assert_one_sentence(rc, text, "--roi 0:4", "::2 (24 of 48 frames)")


def test_open_roi_of_a_growing_scan_is_not_closed_on_resume(tmp_path, client, job, capsys):
    """An output made with ``::2`` over a growing scan, resumed with ``0:8``: that holds every
    row written so far, but not rows 8, 10, ... that ``::2`` takes as the scan grows, so it is
    refused (it was taken, and the output's ROI silently became ``0:8``); ``0:`` grows it."""
    wf, path, out, prof, data = _every_other_row_of_a_growing_scan(tmp_path, client, job,
                                                                   capsys)
    rc, text = run_cli(capsys, "run", str(wf), str(path), "-o", str(out), "--profile", prof,
                       "--resume", "--roi", "0:8")
    assert_one_sentence(rc, text, "--roi 0:8", "::2", "rows the growing scan has yet to write",
                        "(8, 0)")
    check(out, data[:4], region_mask(slice(0, 4, 2))[:4])
    with h5py.File(out, "r") as f:
        assert f["entry/region"].attrs["roi"] == "::2"
    rc, text = run_cli(capsys, "run", str(wf), str(path), "-o", str(out), "--profile", prof,
                       "--resume", "--roi", "0:")
    assert rc == 0, text
    check(out, data[:4], region_mask(slice(0, 4))[:4])


def test_roi_over_frames_not_complete_says_so(tmp_path, make_scan, capsys):
    complete = region_mask(slice(0, 4))
    path, _ = make_scan(SCAN, FRAME, complete=complete)
    rc, text = run_cli(capsys, "run", "framebag.workflows.frame_sum", str(path), "--roi", "5:",
                       "-o", str(tmp_path / "out.h5"))
    assert_one_sentence(rc, text, "inside --roi 5: (18 of 48 frames)", "outside it are")


def test_mask_path_with_colons(tmp_path, client, job, capsys):
    """``FILE.h5:PATH`` splits where an existing file ends, so PATH may hold colons."""
    wf, path, data = job
    inside = region_mask(slice(2, 5), slice(1, 4))
    with h5py.File(tmp_path / "masks.h5", "w") as f:
        f["t:12:30/m"] = inside
    out = tmp_path / "out.h5"
    rc, text = run_cli(capsys, "run", str(wf), str(path), "-o", str(out), "--profile",
                       address_profile(tmp_path, client),
                       "--roi", f"{tmp_path / 'masks.h5'}:t:12:30/m")
    assert rc == 0, text
    check(out, data, inside)


@pytest.mark.parametrize("name", ["masks", "2024"])
def test_mask_in_a_file_named_like_a_word_is_a_mask_not_slices(tmp_path, client, job, capsys,
                                                                monkeypatch, name):
    """``FILE:PATH`` with no ``/`` or ``.`` in it (``masks:bool``, ``2024:bool``) reads the mask
    from the file when it exists; it once went to the slice parser (``is not a slice``)."""
    wf, path, data = job
    inside = region_mask(slice(2, 5), slice(1, 4))
    with h5py.File(tmp_path / name, "w") as f:
        f["bool"] = inside
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out.h5"
    rc, text = run_cli(capsys, "run", str(wf), str(path), "-o", str(out), "--profile",
                       address_profile(tmp_path, client), "--roi", f"{name}:bool")
    assert rc == 0, text
    check(out, data, inside)
    with h5py.File(out, "r") as f:
        assert f["entry/region"].attrs["roi"] == f"mask {name}:bool"
    # no such file: one sentence that names both readings of the spec
    rc, text = run_cli(capsys, "run", str(wf), str(path), "-o", str(tmp_path / "no.h5"),
                       "--roi", "nofile:bool")
    assert_one_sentence(rc, text, "--roi nofile:bool", "is not a slice",
                        "no file 'nofile' exists for a mask FILE:PATH")


def test_wrong_shape_mask_is_refused_before_it_is_read(tmp_path, job, capsys):
    """A data dataset given as the mask is refused by its shape, never loaded whole: here
    its values live in a raw file that does not exist, so any read would fail."""
    wf, path, _ = job
    frames = int(np.prod(SCAN)) * 16
    with h5py.File(tmp_path / "big.h5", "w") as f:
        f.create_dataset("data", shape=SCAN + (4, 4), dtype="u1",
                         external=[(str(tmp_path / "gone.raw"), 0, frames)])
    rc, text = run_cli(capsys, "run", str(wf), str(path), "-o", str(tmp_path / "out.h5"),
                       "--roi", f"{tmp_path / 'big.h5'}:data")
    assert_one_sentence(rc, text, "--roi", "shape (8, 6, 4, 4) but the scan has shape (8, 6)")


def test_damaged_mask_file_fails_at_once(tmp_path, job):
    """A mask file with a damaged checksum is refused in one sentence; read with SWMR,
    HDF5 retries the bad checksum for many minutes, so this would hang."""
    wf, path, _ = job
    damaged = tmp_path / "damaged.h5"
    with h5py.File(damaged, "w", libver="latest") as f:
        for k in range(40):  # enough links for a dense (checksummed) link storage
            f[f"m{k}"] = region_mask(slice(0, 2))
    raw = bytearray(damaged.read_bytes())
    for k in range(2000, len(raw), 97):
        raw[k] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    cli = "import sys; from framebag.cli import main; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", cli, "run", str(wf), str(path),
                           "-o", str(tmp_path / "out.h5"), "--profile", "inline",
                           "--roi", f"{damaged}:m3"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert_one_sentence(proc.returncode, proc.stderr.strip(), "--roi", "damaged.h5", "m3")
