"""Bad input and bad frames: one sentence on stderr naming the culprit, a non-zero exit,
no traceback without --debug, the input untouched and the work done so far kept."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framebag import FramebagError, Workflow
from framebag.cli import main

from .conftest import DATA, KEY, assert_one_sentence, write_scan

FRAME_SUM = "workflows/frame_sum.py"


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    err = capsys.readouterr().err.strip()
    return rc, err


@pytest.fixture
def scan(make_scan, unchanged):
    path, data = make_scan((3, 4), (6, 6))
    unchanged(path)
    return path, data


def test_missing_input(capsys, tmp_path):
    rc, err = run_cli(capsys, "run", FRAME_SUM, str(tmp_path / "nope.h5"))
    assert_one_sentence(rc, err, "nope.h5", "does not exist")


def test_input_not_hdf5(capsys, tmp_path):
    bad = tmp_path / "notes.h5"
    bad.write_text("not hdf5")
    rc, err = run_cli(capsys, "run", FRAME_SUM, str(bad))
    assert_one_sentence(rc, err, "notes.h5", "not an HDF5 file")


def test_input_is_a_directory(capsys, tmp_path):
    rc, err = run_cli(capsys, "run", FRAME_SUM, str(tmp_path))
    assert_one_sentence(rc, err, tmp_path.name, "is a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_input(capsys, scan):
    path = scan[0]
    mode = path.stat().st_mode
    path.chmod(0)
    try:
        rc, err = run_cli(capsys, "run", FRAME_SUM, str(path))
    finally:
        path.chmod(mode)
    assert_one_sentence(rc, err, path.name, "not readable")


def test_missing_workflow_file(capsys, scan, tmp_path):
    rc, err = run_cli(capsys, "run", str(tmp_path / "wf.py"), str(scan[0]))
    assert_one_sentence(rc, err, "wf.py", "does not exist")


def test_workflow_without_a_workflow(capsys, scan, tmp_path):
    wf = tmp_path / "empty.py"
    wf.write_text("x = 1\n")
    rc, err = run_cli(capsys, "run", str(wf), str(scan[0]))
    assert_one_sentence(rc, err, "empty.py", "no framebag.Workflow")
    rc, err = run_cli(capsys, "run", "no.such.module", str(scan[0]))
    assert_one_sentence(rc, err, "no.such.module")


def test_workflow_that_fails_to_import(capsys, scan, tmp_path):
    wf = tmp_path / "broken.py"
    wf.write_text("import numpy\nraise RuntimeError('boom')\n")
    rc, err = run_cli(capsys, "run", str(wf), str(scan[0]))
    assert_one_sentence(rc, err, "broken.py", "boom")


def test_missing_datasets(capsys, scan):
    rc, err = run_cli(capsys, "run", FRAME_SUM, str(scan[0]), "--data", "entry/nothing")
    assert_one_sentence(rc, err, "entry/nothing", str(scan[0]))
    rc, err = run_cli(capsys, "run", FRAME_SUM, str(scan[0]), "--keys", "entry/keys/none")
    assert_one_sentence(rc, err, "entry/keys/none")
    rc, err = run_cli(capsys, "run", FRAME_SUM, str(scan[0]), "--keys", "entry/keys")
    assert_one_sentence(rc, err, "entry/keys", "group")


def test_key_shape_does_not_match_data(capsys, tmp_path):
    path = tmp_path / "mismatch.h5"
    with h5py.File(path, "w") as f:
        f[DATA] = np.zeros((3, 4, 5, 5), dtype="uint16")
        f[KEY] = np.ones((3, 5, 1, 1), dtype="i4")
    rc, err = run_cli(capsys, "run", FRAME_SUM, str(path))
    assert_one_sentence(rc, err, KEY, DATA, "(3, 5)", "(3, 4)")


def test_no_frame_complete_without_follow(capsys, make_scan):
    path, _ = make_scan((3, 4), (5, 5), complete=np.zeros((3, 4), dtype=bool))
    rc, err = run_cli(capsys, "run", FRAME_SUM, str(path))
    assert_one_sentence(rc, err, "no frame", "complete", KEY, "--follow")


def test_set_unknown_and_unconvertible(capsys, scan):
    rc, err = run_cli(capsys, "run", FRAME_SUM, str(scan[0]), "--set", "z0=1")
    assert_one_sentence(rc, err, "'z0'", "y0, y1")
    rc, err = run_cli(capsys, "run", FRAME_SUM, str(scan[0]), "--set", "y0=abc")
    assert_one_sentence(rc, err, "y0=abc", "int")
    rc, err = run_cli(capsys, "run", FRAME_SUM, str(scan[0]), "--set", "y0")
    assert_one_sentence(rc, err, "name=value")


def test_bad_profiles(capsys, scan, tmp_path):
    rc, err = run_cli(capsys, "run", FRAME_SUM, str(scan[0]), "--profile", "nosuchprofile")
    assert_one_sentence(rc, err, "nosuchprofile")
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster: local\noptions:\n  n_workers: [1,\n")
    rc, err = run_cli(capsys, "run", FRAME_SUM, str(scan[0]), "--profile", str(bad))
    assert_one_sentence(rc, err, "bad.yaml", "line")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("cluster: local\noptions:\n  n_wrokers: 2\n")
    rc, err = run_cli(capsys, "run", FRAME_SUM, str(scan[0]), "--profile", str(unknown))
    assert_one_sentence(rc, err, "unknown.yaml", "n_wrokers", "n_workers")


def test_output_exists_or_not_writable(capsys, scan, tmp_path):
    out = tmp_path / "out.h5"
    out.write_bytes(b"")
    rc, err = run_cli(capsys, "run", FRAME_SUM, str(scan[0]), "-o", str(out))
    assert_one_sentence(rc, err, "out.h5", "--overwrite", "--resume")
    rc, err = run_cli(capsys, "run", FRAME_SUM, str(scan[0]), "-o",
                      str(tmp_path / "missing_dir" / "o.h5"))
    assert_one_sentence(rc, err, "missing_dir", "does not exist")
    rc, err = run_cli(capsys, "run", FRAME_SUM, str(scan[0]), "-o", str(tmp_path))
    assert_one_sentence(rc, err, str(tmp_path), "directory")
    rc, err = run_cli(capsys, "run", FRAME_SUM, str(scan[0]), "-o", str(out), "--overwrite",
                      "--resume")
    assert_one_sentence(rc, err, "--overwrite", "--resume")


def test_resume_mismatch(capsys, scan, client, tmp_path):
    from framebag import load_workflow

    out = tmp_path / "out.h5"
    load_workflow(FRAME_SUM).run(scan[0], out, client=client)
    rc, err = run_cli(capsys, "run", FRAME_SUM, str(scan[0]), "-o", str(out), "--resume",
                      "--set", "y0=3")
    assert_one_sentence(rc, err, "out.h5", "parameters")
    rc, err = run_cli(capsys, "run", "workflows/mean_image.py", str(scan[0]), "-o", str(out),
                      "--resume")
    assert_one_sentence(rc, err, "mean_image", "out.h5")
    other = tmp_path / "other.h5"
    write_scan(other, np.zeros((3, 4, 6, 6), dtype="uint16"), 2)
    rc, err = run_cli(capsys, "run", FRAME_SUM, str(other), "-o", str(out), "--resume")
    assert_one_sentence(rc, err, "input file", "other.h5")


def test_debug_shows_the_traceback(capsys, tmp_path):
    rc = main(["--debug", "run", FRAME_SUM, str(tmp_path / "nope.h5")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" in err  # the same exit code as without --debug


# bad frames ------------------------------------------------------------------------


def failing_workflow() -> Workflow:
    wf = Workflow("failing", data=DATA, keys=[KEY])

    @wf.frame
    def total(frame, index, *, bad=(1, 2)):
        if tuple(index) == tuple(bad):
            raise ValueError("detector glitch")
        return frame.sum()

    @wf.frame(fold="sum")
    def summed(frame):
        return frame.astype(np.int64)

    return wf


def test_failing_frame_stops_the_run_naming_function_and_frame(scan, client, tmp_path):
    path, data = scan
    out = tmp_path / "out.h5"
    with pytest.raises(FramebagError) as info:
        failing_workflow().run(path, out, client=client, partition_bytes=2 * data[0, 0].nbytes)
    msg = str(info.value)
    assert "'total'" in msg and "(1, 2)" in msg and "detector glitch" in msg
    assert "--resume" in msg
    # the work already combined stays, consistent, and is resumable after the fix
    with h5py.File(out, "r", swmr=True) as f:
        g = f["entry/failing"]
        done = g["done"][()].astype(bool)
        assert g.attrs["status"] == "failed"
        assert not done[1, 2]
        np.testing.assert_array_equal(g["total"][()][done], data.sum(axis=(2, 3))[done])
    res = failing_workflow().run(path, out, client=client, resume=True, on_error="skip")
    want = np.ones((3, 4), dtype=bool)
    want[1, 2] = False
    np.testing.assert_array_equal(res.done, want)
    np.testing.assert_array_equal(res["total"][want], data.sum(axis=(2, 3))[want])
    np.testing.assert_array_equal(res["summed"], data[want].astype(np.int64).sum(axis=0))


def test_skip_records_failed_frames_and_processes_the_rest(scan, client, tmp_path, capsys):
    path, data = scan
    res = failing_workflow().run(path, tmp_path / "out.h5", client=client, on_error="skip",
                                 partition_bytes=3 * data[0, 0].nbytes)
    want = np.ones((3, 4), dtype=bool)
    want[1, 2] = False
    np.testing.assert_array_equal(res.done, want)
    np.testing.assert_array_equal(res["total"][want], data.sum(axis=(2, 3))[want])
    # the failed frame is left out of every fold, not only of the function that failed
    np.testing.assert_array_equal(res["summed"], data[want].astype(np.int64).sum(axis=0))
    assert res.errors == [((1, 2), "total", "ValueError: detector glitch")]
    assert res.stats["failed"] == 1
    with h5py.File(tmp_path / "out.h5", "r") as f:
        rows = f["entry/failing/errors"][()]
    assert len(rows) == 1 and rows[0]["function"] == b"total"


def test_skip_through_the_cli_reports_the_count(scan, tmp_path, capsys):
    wf = tmp_path / "wf.py"
    wf.write_text(
        "from framebag import Workflow\n"
        f"workflow = Workflow('w', data='{DATA}', keys=['{KEY}'])\n"
        "@workflow.frame\n"
        "def total(frame, index):\n"
        "    if index[1] == 3:\n"
        "        raise ValueError('bad column')\n"
        "    return frame.sum()\n"
    )
    rc = main(["run", str(wf), str(scan[0]), "-o", str(tmp_path / "o.h5"), "--on-error", "skip"])
    err = capsys.readouterr().err
    assert rc == 0
    assert "3 failed" in err


def test_changing_shape_or_dtype_is_a_clear_error(scan, client, tmp_path):
    path, data = scan
    for fold in (None, "max"):
        wf = Workflow("shapes", data=DATA, keys=[KEY])

        @wf.frame(fold=fold)
        def value(frame, index):
            return frame[: 2 + (index[0] == 2)]

        for frames in (1, 6):  # the change seen across partitions, and within one
            with pytest.raises(FramebagError) as info:
                wf.run(path, tmp_path / f"o{fold}{frames}.h5", client=client,
                       partition_bytes=frames * data[0, 0].nbytes)
            msg = str(info.value)
            assert "'value'" in msg and "(2, " in msg  # a frame of the taller row
            assert "(3, 6)" in msg and "(2, 6)" in msg

    wf = Workflow("dtypes", data=DATA, keys=[KEY])

    @wf.frame
    def value2(frame, index):
        return np.float32(1) if index[1] == 3 else np.int64(1)

    with pytest.raises(FramebagError) as info:
        wf.run(path, tmp_path / "d.h5", client=client)
    msg = str(info.value)  # which dtype came first depends on which partition ran first
    assert "'value2'" in msg and "dtype float32" in msg and "dtype int64" in msg


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(keys=st.lists(st.one_of(st.integers(-3, 3), st.just(0)), min_size=12, max_size=12),
       nan_at=st.lists(st.integers(0, 11), max_size=3),
       target=st.integers(-10, 10**6))
def test_random_keys_and_targets_give_a_result_or_a_clear_error(tmp_path_factory, client,
                                                                keys, nan_at, target):
    tmp = tmp_path_factory.mktemp("keys")
    data = np.arange(12 * 4, dtype="uint16").reshape(3, 4, 2, 2)
    k = np.array(keys, dtype=np.float32)
    k[nan_at] = np.nan
    path = write_scan(tmp / "in.h5", data, 2, complete=np.ones((3, 4), bool), key_dtype="f4")
    with h5py.File(path, "r+") as f:
        f[KEY][...] = k.reshape(3, 4, 1, 1)
    complete = ((k != 0) & ~np.isnan(k)).reshape(3, 4)
    wf = Workflow("prop", data=DATA, keys=[KEY])
    wf.frame(lambda frame: frame.sum(), name="total")
    try:
        res = wf.run(path, tmp / "o.h5", client=client, partition_bytes=target)
    except FramebagError as exc:
        msg = str(exc)
        assert len(msg.splitlines()) == 1
        if target <= 0:
            assert "partition" in msg
        else:
            assert not complete.any() and "no frame" in msg
        return
    assert target > 0 and complete.any()
    np.testing.assert_array_equal(res.done, complete)
    np.testing.assert_array_equal(res["total"][complete], data.sum(axis=(2, 3))[complete])
