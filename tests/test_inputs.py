"""The inputs users bring: plain arrays without keys, keys and data of different lengths,
external links (the Eiger master file layout) and virtual datasets, float keys, odd flags.

Real files only: an external-link master next to its data file, a VDS over 3 source
files, and a SWMR writer process that grows a keyless array, sequenced by gate files
the test releases.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from framebag import FramebagError, Workflow
from framebag.inspect import inspect_file

from .conftest import assert_one_sentence, run_cli

REPO = Path(__file__).resolve().parents[1]
FRAME_SUM = "framebag.workflows.frame_sum"


def address_profile(tmp_path: Path, client) -> str:
    """A profile naming the session's LocalCluster, so CLI runs start no cluster of their own."""
    path = tmp_path / "here.yaml"
    path.write_text(f"cluster: address\naddress: {client.scheduler.address}\n")
    return str(path)


def suggested(text: str) -> list[str]:
    """The arguments of the ``framebag run`` line inspect printed, after ``framebag``."""
    line = next(ln.strip() for ln in text.splitlines() if ln.strip().startswith("framebag run"))
    return shlex.split(line)[1:]


def totals(name: str = "tot", **kwargs) -> Workflow:
    wf = Workflow(name, **kwargs)

    @wf.frame
    def total(frame):
        return frame.sum(dtype=np.float64)

    return wf


def frames(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1000, size=shape).astype("u2")


# 1. keyless inputs ----------------------------------------------------------------------


def test_plain_array_without_keys_inspect_line_runs_and_equals_numpy(tmp_path, client, capsys,
                                                                      unchanged):
    path = tmp_path / "plain.h5"
    data = frames((4, 5, 8, 8))
    with h5py.File(path, "w") as f:
        f["measurement/images"] = data
    unchanged(path)
    text = inspect_file(path)
    assert "likely data: measurement/images  (scan shape (4, 5), frame shape (8, 8)" in text
    assert "likely keys: none" in text
    assert "complete frames: 20/20 (100.0%)" in text
    argv = suggested(text)
    assert argv == ["run", FRAME_SUM, str(path), "--data", "measurement/images", "--no-keys"]
    out = tmp_path / "out.h5"
    rc, err = run_cli(capsys, *argv, "-o", str(out), "--profile", address_profile(tmp_path, client))
    assert rc == 0, err
    with h5py.File(out, "r") as f:
        g = f["entry/frame_sum"]
        assert g["done"][()].all()
        np.testing.assert_array_equal(g["total"][()], data.sum(axis=(2, 3), dtype=np.uint64))
        np.testing.assert_array_equal(g["brightest"][()], data.max(axis=(0, 1)))


def test_a_workflow_without_keys_runs_with_only_data(tmp_path, client, capsys):
    path = tmp_path / "plain.h5"
    data = frames((12, 6, 6))
    with h5py.File(path, "w") as f:
        f["d"] = data
    wf = tmp_path / "mine.py"
    wf.write_text(textwrap.dedent("""
        from framebag import Workflow
        workflow = Workflow("mine")

        @workflow.frame
        def total(frame):
            return frame.sum()
    """))
    out = tmp_path / "out.h5"
    rc, err = run_cli(capsys, "run", str(wf), str(path), "--data", "d", "-o", str(out),
                      "--profile", address_profile(tmp_path, client))
    assert rc == 0, err
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["entry/mine/total"][()], data.sum(axis=(1, 2)))
        assert json_list(f["entry/mine"].attrs["keys"]) == []


def json_list(value) -> list:
    import json

    return json.loads(value.decode() if isinstance(value, bytes) else value)


def test_python_api_keys_empty_and_scan_rank(tmp_path, client):
    path = tmp_path / "plain.h5"
    data = frames((3, 4, 5, 6))
    with h5py.File(path, "w") as f:
        f["d"] = data
    keyed = totals(data="d", keys=["entry/keys/key_1"])  # keys=[] overrides the workflow's
    res = keyed.run(path, tmp_path / "a.h5", client=client, keys=[])
    np.testing.assert_array_equal(res["total"], data.sum(axis=(2, 3)))
    res = totals(data="d").run(path, tmp_path / "b.h5", client=client, scan_rank=1)
    np.testing.assert_array_equal(res["total"], data.sum(axis=(1, 2, 3)))
    res = totals(data="d").run(path, tmp_path / "c.h5", client=client, scan_rank=3)
    assert res.done.shape == (3, 4, 5)
    np.testing.assert_array_equal(res["total"], data.sum(axis=3))
    with pytest.raises(FramebagError, match=r"--scan-rank 5 does not fit .* \(3, 4, 5, 6\)"):
        totals(data="d").run(path, tmp_path / "d.h5", client=client, scan_rank=5)


def test_missing_workflow_keys_point_at_no_keys(tmp_path, capsys):
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f["d"] = frames((3, 4, 4))
    rc, err = run_cli(capsys, "run", FRAME_SUM, str(path), "--data", "d", "-o",
                      str(tmp_path / "o.h5"))
    assert_one_sentence(rc, err, "entry/keys/key_1", str(path), "--no-keys")
    rc, err = run_cli(capsys, "run", FRAME_SUM, str(path), "--data", "d", "--no-keys",
                      "--keys", "k", "-o", str(tmp_path / "o.h5"))
    assert_one_sentence(rc, err, "--no-keys", "--keys")


KEYLESS_WRITER = textwrap.dedent("""
    import os, sys, time
    import h5py, numpy as np
    path, gates, flag = sys.argv[1], sys.argv[2], sys.argv[3] == "flag"
    N, FRAME = 12, (6, 6)
    data = np.random.default_rng(1).integers(0, 1000, size=(N, *FRAME)).astype("u2")

    def gate(name):
        while not os.path.exists(os.path.join(gates, name)):
            time.sleep(0.005)

    tmp = path + ".tmp"
    f = h5py.File(tmp, "w", libver="latest")
    d = f.create_dataset("d", shape=(0, *FRAME), maxshape=(None, *FRAME), dtype="u2",
                         chunks=(1, *FRAME))
    done = f.create_dataset("finished", shape=(), dtype="i4", data=0)
    f.swmr_mode = True
    os.rename(tmp, path)

    def write(lo, hi):
        for i in range(lo, hi):  # the frame's data go with the extent, in one flush
            d.resize(i + 1, axis=0)
            d[i] = data[i]
            d.flush()

    write(0, 5)
    open(os.path.join(gates, "half"), "w").close()
    gate("release")
    write(5, N)
    if flag:
        done[()] = 1
        done.flush()
    open(os.path.join(gates, "written"), "w").close()
    gate("exit")
    f.close()
""")


def wait_for(path: Path, proc: subprocess.Popen) -> None:
    """Wait for a gate file; fail with the writer's stderr if it dies first."""
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"writer exited early: {proc.stderr.read().decode()}")
        time.sleep(0.005)


@pytest.mark.parametrize("end", ["flag", "timeout"])
def test_follow_without_keys_a_growing_array(tmp_path, client, end):
    """A keyless followed run processes the frames the data hold while the writer waits."""
    path = tmp_path / "live.h5"
    proc = subprocess.Popen([sys.executable, "-c", KEYLESS_WRITER, str(path), str(tmp_path), end],
                            cwd=REPO, stderr=subprocess.PIPE)
    seen = []

    def progress(p):
        if not seen and p["processed"] == 5:  # the first 5 frames are done: let it go on
            seen.append(dict(p))
            (tmp_path / "release").touch()
        if p["processed"] == 12 and not (tmp_path / "exit").exists():
            (tmp_path / "exit").touch()

    try:
        wait_for(tmp_path / "half", proc)
        text = inspect_file(path)  # while the writer holds it
        assert "complete frames: 5/5 " in text and "safe only for a writer" in text
        assert suggested(text)[-4:] == ["--no-keys", "--follow", "--finished", "finished"]
        wf = totals(data="d", finished="finished" if end == "flag" else None)
        res = wf.run(path, tmp_path / "out.h5", client=client, follow=True,
                     timeout=60 if end == "flag" else 1.0, poll_interval=0.01,
                     progress=progress)
    finally:
        (tmp_path / "release").touch()
        (tmp_path / "exit").touch()
        proc.wait(timeout=60)
    assert proc.returncode == 0, proc.stderr.read().decode()
    assert seen and seen[0]["processed"] == 5, "frames were not processed while the writer waited"
    want = np.random.default_rng(1).integers(0, 1000, size=(12, 6, 6)).astype("u2")
    assert res.done.shape == (12,) and res.done.all()
    np.testing.assert_array_equal(res["total"], want.sum(axis=(1, 2)))
    assert res.stats["ended_by"] == ("finished_flag" if end == "flag" else "timeout")


def test_follow_without_keys_refuses_a_fixed_shape(tmp_path, capsys, caplog):
    path = tmp_path / "fixed.h5"
    with h5py.File(path, "w") as f:
        f["d"] = frames((4, 6, 6))
    with caplog.at_level(logging.WARNING, logger="framebag"):
        rc, err = run_cli(capsys, "run", FRAME_SUM, str(path), "--data", "d", "--no-keys",
                          "--follow", "-o", str(tmp_path / "o.h5"))
    assert_one_sentence(rc, err, "--follow", "'d'", str(path), "(4, 6, 6)", "--keys")
    assert "finished flag" not in caplog.text  # the refusal is the one line said


# 2. tolerant shapes -------------------------------------------------------------------


@pytest.mark.parametrize("nkeys,ndata", [(20, 10), (10, 13)], ids=["keys_longer", "data_longer"])
def test_keys_and_data_of_different_lengths_process_what_both_cover(tmp_path, client, caplog,
                                                                    nkeys, ndata):
    """swmr_tools' writer: keys of maxshape (20,) next to 10 frames; a detector past its keys."""
    path = tmp_path / "scan.h5"
    data = frames((ndata, 6, 6))
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=data, maxshape=(ndata, 6, 6))
        f.create_dataset("key", data=np.ones(nkeys, "i4"), maxshape=(nkeys,))
    with caplog.at_level(logging.WARNING, logger="framebag"):
        res = totals(data="data", keys=["key"]).run(path, tmp_path / "o.h5", client=client)
    both = min(nkeys, ndata)
    warned = [r.getMessage() for r in caplog.records if "both cover" in r.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0], caplog.text
    assert f"({nkeys},)" in warned[0] and f"({ndata},)" in warned[0]
    assert res.done.shape == (both,) and res.done.all()
    np.testing.assert_array_equal(res["total"], data[:both].sum(axis=(1, 2)))


@pytest.mark.parametrize("key_shape,data_shape,names", [
    ((4, 5), (4, 6, 3, 3), ["(4, 5)", "(4, 6)"]),  # a later scan dim differs
    ((4, 5, 3), (4, 5), ["rank 2", "scan rank 3"]),  # the data have fewer dims than the scan
])
def test_other_shape_disagreements_are_still_refused(tmp_path, capsys, key_shape, data_shape,
                                                     names):
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.ones(data_shape, "u2")
        f["key"] = np.ones(key_shape, "i4")
    rc, err = run_cli(capsys, "run", FRAME_SUM, str(path), "--data", "data", "--keys", "key",
                      "-o", str(tmp_path / "o.h5"))
    assert_one_sentence(rc, err, str(path), *names)


# 3. real file layouts in inspect ------------------------------------------------------


def eiger(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A Dectris-style master file whose data live in a data file behind an external link."""
    data = frames((10, 8, 8))
    with h5py.File(tmp_path / "scan_data_000001.h5", "w") as f:
        f["entry/data/data"] = data
    master = tmp_path / "scan_master.h5"
    with h5py.File(master, "w") as f:
        f["entry/data/data_000001"] = h5py.ExternalLink("scan_data_000001.h5", "/entry/data/data")
        f["entry/instrument/detector/count_time"] = 0.001
    return master, data


def test_inspect_follows_external_links_and_its_line_runs(tmp_path, client, capsys, unchanged):
    master, data = eiger(tmp_path)
    unchanged(master)
    unchanged(tmp_path / "scan_data_000001.h5")
    text = inspect_file(master)
    row = next(ln for ln in text.splitlines() if ln.strip().startswith("entry/data/data_000001"))
    assert "(10, 8, 8)" in row and "external link to scan_data_000001.h5:/entry/data/data" in row
    assert "likely data: entry/data/data_000001  (scan shape (10,)" in text
    argv = suggested(text)
    assert argv[argv.index("--data") + 1] == "entry/data/data_000001" and "--no-keys" in argv
    out = tmp_path / "out.h5"
    rc, err = run_cli(capsys, *argv, "-o", str(out), "--profile", address_profile(tmp_path, client))
    assert rc == 0, err
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["entry/frame_sum/total"][()],
                                      data.sum(axis=(1, 2), dtype=np.uint64))

    # a wrong path lists what is there, the linked dataset with its target file
    rc, err = run_cli(capsys, "run", FRAME_SUM, str(master), "--data", "entry/data/nope",
                      "--no-keys", "-o", str(tmp_path / "o2.h5"))
    assert_one_sentence(rc, err, "entry/data/nope",
                        "entry/data/data_000001 (external link to scan_data_000001.h5:")
    # the data file moved away: the link is named, with its file
    os.rename(tmp_path / "scan_data_000001.h5", tmp_path / "elsewhere.h5")
    rc, err = run_cli(capsys, "run", FRAME_SUM, str(master), "--data", "entry/data/data_000001",
                      "--no-keys", "-o", str(tmp_path / "o3.h5"))
    assert_one_sentence(rc, err, "external link", "scan_data_000001.h5", str(master))
    text = inspect_file(master)
    row = next(ln for ln in text.splitlines() if ln.strip().startswith("entry/data/data_000001"))
    assert "cannot be opened" in row and "scan_data_000001.h5" in row
    os.rename(tmp_path / "elsewhere.h5", tmp_path / "scan_data_000001.h5")


def test_inspect_shows_a_virtual_dataset_over_three_files(tmp_path, client, capsys):
    data = frames((12, 8, 8))
    layout = h5py.VirtualLayout(shape=(12, 8, 8), dtype="u2")
    for i, name in enumerate(["part_a.h5", "part_b.h5", "part_c.h5"]):
        with h5py.File(tmp_path / name, "w") as f:
            f["frames"] = data[4 * i : 4 * i + 4]
        layout[4 * i : 4 * i + 4] = h5py.VirtualSource(name, "frames", shape=(4, 8, 8))
    path = tmp_path / "vds.h5"
    with h5py.File(path, "w", libver="latest") as f:
        f.create_virtual_dataset("entry/data", layout, fillvalue=0)
        key = np.ones(12, "i4")
        key[7] = 0
        f["entry/keys/key"] = key
    text = inspect_file(path)
    row = next(ln for ln in text.splitlines() if ln.strip().startswith("entry/data "))
    assert "virtual over 3 files: part_a.h5, part_b.h5, part_c.h5" in row
    assert "likely keys: entry/keys/key" in text and "complete frames: 11/12" in text
    out = tmp_path / "out.h5"
    suggested_from_before = suggested(text)
    rc, err = run_cli(capsys, *suggested_from_before, "-o", str(out), "--profile",
                      address_profile(tmp_path, client))
    assert rc == 0, err
    with h5py.File(out, "r") as f:
        done = f["entry/frame_sum/done"][()].astype(bool)
        np.testing.assert_array_equal(done, key != 0)
        np.testing.assert_array_equal(f["entry/frame_sum/total"][()][done],
                                      data.sum(axis=(1, 2), dtype=np.uint64)[done])

    # a source file gone: HDF5 would read its frames as zeros; the run refuses, inspect says
    (tmp_path / "part_b.h5").unlink()
    text = inspect_file(path)
    assert "part_a.h5, part_b.h5 (missing), part_c.h5" in text
    assert "the run would refuse this layout" in text and "framebag run" not in text
    rc, err = run_cli(capsys, *suggested_from_before, "-o", str(tmp_path / "o2.h5"))
    assert_one_sentence(rc, err, str(path), "entry/data", "part_b.h5", "fill value")


def test_float_keys_are_offered_and_counted_as_the_run_counts(tmp_path, client, capsys):
    """One integer and one float key: inspect's count is the run's (13, not 21)."""
    path = tmp_path / "scan.h5"
    data = frames((5, 6, 4, 4))
    ints = np.zeros((5, 6), "i4")
    ints.flat[:21] = 1
    floats = np.zeros((5, 6), "f4")
    floats.flat[8:21] = 0.5
    floats.flat[3] = np.nan  # NaN is not set
    with h5py.File(path, "w") as f:
        f["entry/data/data"] = data
        f["entry/keys/unique"] = ints
        f["entry/keys/timestamp"] = floats
        f["entry/sample/x"] = np.linspace(0, 1, 5)  # a motor position, not a key
    text = inspect_file(path)
    assert "likely keys: entry/keys/timestamp, entry/keys/unique" in text
    assert "complete frames: 13/30 " in text
    out = tmp_path / "out.h5"
    rc, err = run_cli(capsys, *suggested(text), "-o", str(out), "--profile",
                      address_profile(tmp_path, client))
    assert rc == 0, err
    with h5py.File(out, "r") as f:
        assert int(f["entry/frame_sum/done"][()].sum()) == 13


def test_a_finished_flag_of_several_elements_is_refused(tmp_path, capsys):
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as f:
        f["entry/data/data"] = frames((6, 4, 4))
        f.create_dataset("entry/keys/key_1", data=np.ones(6, "i4"), maxshape=(None,))
        f["entry/finished"] = np.array([1, 0], "i4")
    text = inspect_file(path)
    assert "finished flag: finished flag 'entry/finished'" in text and "(2,)" in text
    assert "--finished" not in text
    rc, err = run_cli(capsys, "run", FRAME_SUM, str(path), "--follow", "--timeout", "5",
                      "-o", str(tmp_path / "o.h5"))
    assert_one_sentence(rc, err, "finished flag", "entry/finished", "(2,)", "single value")


def test_no_complete_frame_names_only_the_keys_that_are_zero(tmp_path, capsys):
    path = tmp_path / "scan.h5"
    a = np.zeros(6, "i4")
    a[:3] = 1
    with h5py.File(path, "w") as f:
        f["data"] = frames((6, 4, 4))
        f["k_a"] = a
        f["k_b"] = np.zeros(6, "i4")
        f["k_c"] = 1 - a
    argv = ["run", FRAME_SUM, str(path), "--data", "data", "-o", str(tmp_path / "o.h5")]
    rc, err = run_cli(capsys, *argv, "--keys", "k_a", "--keys", "k_b")
    assert_one_sentence(rc, err, "key dataset k_b is zero everywhere")
    assert "k_a" not in err
    rc, err = run_cli(capsys, *argv, "--keys", "k_a", "--keys", "k_c")
    assert_one_sentence(rc, err, "no frame has all of its keys set", "k_a", "k_c")
    assert "zero everywhere" not in err


def test_a_nexus_soft_link_is_shown_but_not_guessed_twice(tmp_path):
    path = tmp_path / "nexus.h5"
    with h5py.File(path, "w") as f:
        f["entry/instrument/detector/data"] = frames((6, 4, 4))
        f["entry/instrument/detector/key"] = np.ones(6, "i4")
        f["entry/data/data"] = h5py.SoftLink("/entry/instrument/detector/data")
        f["entry/data/key"] = h5py.SoftLink("/entry/instrument/detector/key")
    text = inspect_file(path)
    row = next(ln for ln in text.splitlines() if ln.strip().startswith("entry/data/data "))
    assert "soft link to /entry/instrument/detector/data" in row
    assert "likely data: entry/instrument/detector/data " in text
    assert "likely keys: entry/instrument/detector/key\n" in text


def test_a_keyless_output_resumes_over_frames_the_data_gained(tmp_path, client):
    """Followed once, then resumed after the array grew: only the new frames are processed."""
    path = tmp_path / "grow.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("d", data=np.ones((6, 4, 4), "u2"), maxshape=(None, 4, 4))
    wf = totals(data="d")
    out = tmp_path / "out.h5"
    res = wf.run(path, out, client=client, follow=True, timeout=0.3, poll_interval=0.01)
    assert res.stats["processed"] == 6 and res.stats["ended_by"] == "timeout"
    with h5py.File(path, "a") as f:
        f["d"].resize(9, axis=0)
        f["d"][6:] = 2
    res = wf.run(path, out, client=client, resume=True)
    assert res.stats["processed"] == 3 and res.stats["resumed"] == 6
    np.testing.assert_array_equal(res["total"], [16] * 6 + [32] * 3)
