"""Trust at the edges of the output: it is never the input, one run holds it at a time,
``--resume`` continues only the input it was made from, a full disk is one line and
resumable, and created files respect the umask. Real files, processes, signals, tmpfs."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from framebag import FramebagError, load_workflow
from framebag.cli import main
from framebag.lock import lock_path
from framebag.simulate import expected_frames, simulate

from .conftest import KEY

FRAME_SUM = "workflows/frame_sum.py"

GATED = '''
import os
import time
from pathlib import Path

from framebag import Workflow

workflow = Workflow("gated", data="entry/data/data", keys=["entry/keys/key_1"])


@workflow.frame
def total(frame, index, *, gate="", at=0):
    """Frame ``at`` announces itself (GATE.started) and waits for the file GATE."""
    flat = index[0] * 10 + index[1]
    if gate and flat == at:
        Path(gate + ".started").touch()
        while not os.path.exists(gate):
            time.sleep(0.01)
    return frame.sum()
'''


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    return rc, capsys.readouterr().err.strip()


def one_sentence(rc: int, err: str, *names: str) -> str:
    assert rc == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("framebag: error: "), err
    assert "Traceback" not in err and "h5clear" not in err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


@pytest.fixture
def scan(make_scan):
    return make_scan((4, 5), (6, 6))


# 1. the output is never the input ------------------------------------------------------


def _alias(form: str, path: Path) -> str:
    """Another name of the file ``path``."""
    if form == "same":
        return str(path)
    if form == "dotdot":
        (path.parent / "sub").mkdir(exist_ok=True)
        return str(path.parent / "sub" / ".." / path.name)
    if form == "relative":
        return os.path.relpath(path)
    link = path.with_name(f"{form}.h5")
    if form == "symlink":
        link.symlink_to(path.name)
    else:
        os.link(path, link)
    return str(link)


@pytest.mark.parametrize("mode", [(), ("--overwrite",), ("--resume",)])
@pytest.mark.parametrize("form", ["same", "dotdot", "relative", "symlink", "hardlink"])
def test_output_naming_the_input_is_refused(capsys, scan, unchanged, form, mode):
    path, _ = scan
    out = _alias(form, path)
    rc, err = run_cli(capsys, "run", FRAME_SUM, str(path), "-o", out, *mode)
    one_sentence(rc, err, "is the input file", Path(out).name)
    unchanged(path)  # byte-identical at teardown too
    assert not lock_path(path).exists()


def test_output_naming_the_input_is_refused_in_the_python_api(scan, unchanged, tmp_path):
    path, _ = scan
    link = tmp_path / "link.h5"
    link.symlink_to(path)
    wf = load_workflow(FRAME_SUM)
    for out, opts in ((path, {"overwrite": True}), (link, {"resume": True}), (link, {})):
        with pytest.raises(FramebagError, match="is the input file"):
            wf.run(path, out, overwrite=opts.get("overwrite", False),
                   resume=opts.get("resume", False), profile="no-such-profile")
        # the input named through the link, the output by its real path
        with pytest.raises(FramebagError, match="is the input file"):
            wf.run(link, path, profile="no-such-profile", **opts)


# 5. files framebag creates respect the umask ----------------------------------------------


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_created_files_respect_the_umask(tmp_path, client, mask):
    old = os.umask(mask)
    try:
        scan_path = tmp_path / "sim.h5"
        simulate(scan_path, (3, 4), (8, 8), rate=1e6)
        out = tmp_path / "out.h5"
        load_workflow(FRAME_SUM).run(scan_path, out, client=client)
        load_workflow(FRAME_SUM).run(scan_path, out, client=client, overwrite=True)
    finally:
        os.umask(old)
    for p in (scan_path, out):
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask, (p, oct(p.stat().st_mode))


# 3. one run per output ------------------------------------------------------------------


#: the environment of a user's shell: without the test session's dask logging setting
CLI_ENV = {k: v for k, v in os.environ.items() if k != "DASK_LOGGING__DISTRIBUTED"}


def start_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "framebag.cli", "run", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=CLI_ENV)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended first: {proc.communicate()}")
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


@pytest.fixture
def gated(tmp_path, make_scan):
    wf = tmp_path / "gated.py"
    wf.write_text(GATED)
    path, data = make_scan((10, 10), (6, 6))
    return wf, path, data, tmp_path / "gate"


def test_a_second_run_on_the_same_output_is_refused_at_once(gated, capsys, tmp_path):
    wf, path, data, gate = gated
    out = tmp_path / "out.h5"
    first = start_cli(str(wf), str(path), "-o", str(out), "--set", f"gate={gate}",
                      "--set", "at=55", "--partition-bytes", "1000", "--commit-interval", "0")
    try:
        wait_for(Path(f"{gate}.started"), first)  # the first run is mid-way and holds out.h5
        # a scheduler that is not there: had the run tried to reach a cluster before
        # checking the lock, that would be its error
        nowhere = tmp_path / "nowhere.yaml"
        nowhere.write_text("cluster: address\naddress: tcp://127.0.0.1:9\n")
        for mode in ((), ("--overwrite",), ("--resume",)):
            t0 = time.monotonic()
            rc, err = run_cli(capsys, "run", str(wf), str(path), "-o", str(out), *mode,
                              "--profile", str(nowhere))
            took = time.monotonic() - t0
            one_sentence(rc, err, str(out), "in use by another framebag run",
                         f"PID {first.pid}", socket.gethostname())
            # well under 1 s on a quiet machine; the bound here only guards against a wait
            assert took < 5.0, took
        gate.touch()
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert first.returncode == 0, err
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["entry/gated/total"][()], data.sum(axis=(2, 3)))
    assert not lock_path(out).exists()


def test_a_sigkilled_run_does_not_block_resume(gated, client, tmp_path):
    wf, path, data, gate = gated
    out = tmp_path / "out.h5"
    first = start_cli(str(wf), str(path), "-o", str(out), "--set", f"gate={gate}",
                      "--set", "at=77", "--partition-bytes", "1000", "--commit-interval", "0")
    try:
        wait_for(Path(f"{gate}.started"), first)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    # the dead run's lock file is still there, naming it
    assert lock_path(out).read_text().split()[0] == str(first.pid)
    gate.touch()
    res = load_workflow(wf).run(path, out, client=client, resume=True,
                               params={"gate": str(gate), "at": 77})
    assert res.done.all()
    np.testing.assert_array_equal(res["total"], data.sum(axis=(2, 3)))
    assert not lock_path(out).exists()


def test_a_second_run_in_the_same_process_is_refused(scan, tmp_path):
    from framebag.lock import OutputLock

    out = tmp_path / "out.h5"
    with OutputLock(out):
        with pytest.raises(FramebagError, match=f"PID {os.getpid()}"):
            load_workflow(FRAME_SUM).run(scan[0], out, profile="no-such-profile")
    assert not lock_path(out).exists()


# 2. resume identity ----------------------------------------------------------------------


def test_resume_refuses_an_input_with_another_frame_shape(capsys, client, tmp_path):
    path, out = tmp_path / "v.h5", tmp_path / "out.h5"
    simulate(path, (4, 5), (8, 8), rate=1e6)
    load_workflow(FRAME_SUM).run(path, out, client=client)
    simulate(path, (4, 5), (8, 9), rate=1e6)  # re-acquired at the same path
    rc, err = run_cli(capsys, "run", FRAME_SUM, str(path), "-o", str(out), "--resume")
    one_sentence(rc, err, "v.h5", "out.h5", "frame shape (8, 8) there, (8, 9) now")


def test_resume_refuses_an_input_with_new_content(capsys, client, tmp_path):
    path, out = tmp_path / "v.h5", tmp_path / "out.h5"
    simulate(path, (4, 5), (8, 8), rate=1e6, seed=1)
    load_workflow(FRAME_SUM).run(path, out, client=client)
    simulate(path, (4, 5), (8, 8), rate=1e6, seed=2)  # same shape, new frames
    rc, err = run_cli(capsys, "run", FRAME_SUM, str(path), "-o", str(out), "--resume")
    one_sentence(rc, err, "v.h5", "out.h5", "content of frame (0, 0) differs")


def test_resume_refuses_an_input_with_other_dtype_or_keys(capsys, client, make_scan,
                                                          unchanged, tmp_path):
    path, data = make_scan((4, 5), (6, 6))
    out = tmp_path / "out.h5"
    load_workflow(FRAME_SUM).run(path, out, client=client)
    with h5py.File(path, "r+") as f:  # the keys are now counters, not flags
        f[KEY][...] = np.arange(1, 21).reshape(f[KEY].shape)
    unchanged(path)
    rc, err = run_cli(capsys, "run", FRAME_SUM, str(path), "-o", str(out), "--resume")
    one_sentence(rc, err, f"key dataset {KEY!r} at frame (0, 1): 1 there, 2 now")
    other, _ = make_scan((4, 5), (6, 6), dtype="int32")
    shutil.copy(other, tmp_path / "new.h5")
    os.replace(tmp_path / "new.h5", path)  # a new file at the same path
    unchanged(path)
    rc, err = run_cli(capsys, "run", FRAME_SUM, str(path), "-o", str(out), "--resume")
    one_sentence(rc, err, "dtype <u2 there, <i4 now")


def test_a_followed_scan_that_only_grew_resumes(client, tmp_path):
    path, out = tmp_path / "v.h5", tmp_path / "out.h5"
    wf = load_workflow(FRAME_SUM)
    simulate(path, (5, 8), (8, 8), rate=1e6, growing=True)
    first = wf.run(path, out, client=client, follow=True, timeout=30)
    assert first.done.shape == (5, 8) and first.done.all()
    simulate(path, (10, 8), (8, 8), rate=1e6, growing=True)  # the same scan, grown
    res = wf.run(path, out, client=client, follow=True, timeout=30, resume=True)
    assert res.done.shape == (10, 8) and res.done.all()
    assert res.stats["processed"] == 40 and res.stats["resumed"] == 40
    expected = expected_frames((10, 8), (8, 8))
    np.testing.assert_array_equal(res["total"], expected.sum(axis=(2, 3)))


# 4. write failures -----------------------------------------------------------------------

STACK = '''
import os
import time

from framebag import Workflow

workflow = Workflow("stacked", data="entry/data/data", keys=["entry/keys/key_1"])


@workflow.frame
def image(frame, index, *, gate="", at=0):
    """Frames from flat index ``at`` on wait for the file GATE."""
    while gate and index[0] * 40 + index[1] >= at and not os.path.exists(gate):
        time.sleep(0.01)
    return frame.astype("float64")


@workflow.frame(fold="sum")
def summed(frame):
    return frame.astype("int64")
'''


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 32 MiB tmpfs, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "fs"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs: {proc.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def done_count(out: Path, group: str) -> int:
    try:
        with h5py.File(out, "r", swmr=True) as f:
            return int(f[f"entry/{group}/done"][()].sum())
    except (OSError, KeyError):
        return 0


def fill(directory: Path) -> Path:
    """Write a file into ``directory`` until its file system is full."""
    filler = directory / "filler"
    block = b"\0" * (1 << 16)
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def test_a_full_disk_is_one_line_and_the_output_resumes(small_tmpfs, tmp_path, client):
    wf = tmp_path / "stacked.py"
    wf.write_text(STACK)
    path = tmp_path / "v.h5"
    simulate(path, (10, 40), (64, 64), rate=1e6)  # a stack of 12.5 MiB of float64 frames
    out, gate = small_tmpfs / "out.h5", tmp_path / "gate"
    proc = start_cli(str(wf), str(path), "-o", str(out), "--set", f"gate={gate}",
                     "--set", "at=200", "--partition-bytes", "256KiB", "--commit-interval", "0")
    try:
        deadline = time.monotonic() + 120
        while done_count(out, "stacked") < 100:  # frames before 200 are committed
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        filler = fill(small_tmpfs)  # the disk is full: the frames from 200 on cannot be written
        gate.touch()
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 2, err
    assert err.strip().splitlines()[-1] == (
        f"framebag: error: cannot write output file {str(out)!r}: No space left on device "
        "(errno 28); what was committed before is kept: fix the cause and rerun with --resume"
    ), err
    assert "Exception ignored" not in err and "Traceback" not in err
    done_before = done_count(out, "stacked")
    assert 100 <= done_before < 400
    filler.unlink()  # the cause is fixed
    res = load_workflow(wf).run(path, out, client=client, resume=True,
                                params={"gate": str(gate), "at": 200})
    expected = expected_frames((10, 40), (64, 64))
    assert res.done.all() and res.stats["resumed"] >= done_before
    np.testing.assert_array_equal(res["image"], expected.astype("float64"))
    np.testing.assert_array_equal(res["summed"], expected.astype("int64").sum(axis=(0, 1)))


@pytest.mark.parametrize("left", [0, 8192], ids=["no-room-for-the-lock", "room-for-the-lock"])
def test_a_full_disk_before_the_output_exists_is_one_line_and_leaves_nothing(
        small_tmpfs, tmp_path, left):
    path = tmp_path / "v.h5"
    simulate(path, (4, 5), (16, 16), rate=1e6)
    filler = fill(small_tmpfs)
    if left:  # the lock file fits; the output's layout does not (HDF5 crashed here once)
        os.truncate(filler, filler.stat().st_size - left)
    out = small_tmpfs / "out.h5"
    proc = subprocess.run([sys.executable, "-m", "framebag.cli", "run",
                           "framebag.workflows.frame_sum", str(path), "-o", str(out)],
                          capture_output=True, text=True, env=CLI_ENV, timeout=300)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("framebag: error: cannot write ") and str(out) in last, last
    assert "No space left on device" in last, last
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["filler"]  # no lock, no temp


def test_simulate_on_a_full_disk_is_one_line(small_tmpfs, capsys):
    (small_tmpfs / "filler").write_bytes(b"\0" * ((32 << 20) - (256 << 10)))  # 256 kB left
    rc, err = run_cli(capsys, "simulate", str(small_tmpfs / "sim.h5"), "--scan", "20x20",
                      "--frame", "64x64", "--rate", "1e6")
    one_sentence(rc, err, "sim.h5", "No space left on device (errno 28)")
    assert "Exception ignored" not in err


def test_an_output_removed_while_written_is_one_line(tmp_path, gated, client):
    wf, path, _, gate = gated
    out_dir = tmp_path / "outdir"
    out_dir.mkdir()
    out = out_dir / "out.h5"
    proc = start_cli(str(wf), str(path), "-o", str(out), "--set", f"gate={gate}",
                     "--set", "at=55", "--partition-bytes", "1000", "--commit-interval", "0")
    try:
        wait_for(Path(f"{gate}.started"), proc)
        shutil.rmtree(out_dir)  # the directory vanishes under the running job
        gate.touch()
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 2, err
    assert err.strip().splitlines()[-1].startswith(
        f"framebag: error: cannot write output file {str(out)!r}: it was removed"), err
    assert "Exception ignored" not in err and "Traceback" not in err
