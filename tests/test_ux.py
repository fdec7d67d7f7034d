"""What users see: inspect, plot, workflows, progress and the summary, on real files and runs."""

from __future__ import annotations

import os
import pty
import select
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from framebag import Workflow
from framebag.cli import main
from framebag.progress import Progress, configure

from .conftest import DATA, KEY, write_scan

pytest.importorskip("matplotlib")


def _blob_scan(path: Path, scan=(6, 8), frame=(24, 24), complete=None, **kw) -> np.ndarray:
    """A scan whose frames hold a spot moving with the scan index (centre of mass is known)."""
    yy, xx = np.mgrid[: frame[0], : frame[1]]
    data = np.zeros(scan + frame, dtype=np.uint16)
    for idx in np.ndindex(*scan):
        cy, cx = 4 + 2 * idx[0], 3 + 2 * idx[1]
        data[idx] = (500 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8.0)).astype(np.uint16)
    write_scan(path, data, len(scan), complete=complete, **kw)
    return data


def _env() -> dict[str, str]:
    env = dict(os.environ, DASK_LOGGING__DISTRIBUTED="error", PYTHONUNBUFFERED="1")
    env["COLUMNS"] = "120"
    return env


# inspect ------------------------------------------------------------------------------


def test_inspect_input_then_run_its_command_with_plot_and_log_lines(tmp_path, unchanged):
    """The printed command line runs as printed; the run logs lines, a summary and pictures."""
    path = tmp_path / "scan.h5"
    complete = np.ones((6, 8), dtype=bool)
    complete[4:, 5:] = False
    second = np.ones((6, 8), dtype=bool)
    second[0, 0] = False
    data = _blob_scan(path, complete=complete, compression="gzip",
                      extra_keys=[second.astype("i4")])
    with h5py.File(path, "a") as f:
        f["entry/instrument/finished"] = np.int8(1)
        f["entry/instrument/x"] = np.linspace(0, 1, 8)
    unchanged(path)

    out = subprocess.run([sys.executable, "-m", "framebag.cli", "inspect", str(path)],
                         capture_output=True, text=True, env=_env(), timeout=60)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    lines = {ln.split()[0]: ln for ln in text.splitlines() if ln.startswith("  entry/")}
    assert lines[DATA].split()[1:] == ["(6,", "8,", "24,", "24)", "uint16", "(1,", "1,", "24,",
                                       "24)", "gzip(4)"]
    assert "(6, 8, 1, 1)" in lines[KEY] and "int32" in lines[KEY] and "contiguous" in lines[KEY]
    assert "float64" in lines["entry/instrument/x"]
    assert f"likely data: {DATA}  (scan shape (6, 8), frame shape (24, 24), uint16)" in text
    assert f"likely keys: {KEY}, entry/keys/key_2" in text
    n = int((complete & second).sum())
    assert f"complete frames: {n}/48 " in text
    assert "finished flag: entry/instrument/finished = 1 (set)" in text
    cmd = next(ln.strip() for ln in text.splitlines() if ln.strip().startswith("framebag run"))
    assert "--follow" not in cmd  # the flag is set: the scan is over

    argv = shlex.split(cmd)[2:]
    output = tmp_path / "out.h5"
    run = subprocess.run(
        [sys.executable, "-m", "framebag.cli", "run", *argv, "-o", str(output), "--plot",
         "--log-interval", "0.1"],
        capture_output=True, text=True, env=_env(), timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    err = run.stderr
    # stderr is a pipe: plain progress lines, no bar
    assert "\r" not in err and "done/complete" not in err
    assert f"framebag: {n} complete frames to process\n" in err
    summary = [ln for ln in err.splitlines() if "frames processed" in ln]
    assert len(summary) == 1
    assert summary[0].startswith(f"framebag: {n} frames processed, none failed in ")
    assert "frames/s" in summary[0] and f"{n}/48 of the scan done" in summary[0]
    assert summary[0].endswith(f"output {output}")
    with h5py.File(output, "r") as f:
        done = f["entry/frame_sum/done"][()].astype(bool)
        np.testing.assert_array_equal(done, complete & second)
        np.testing.assert_array_equal(f["entry/frame_sum/total"][()][done],
                                      data.sum(axis=(2, 3), dtype=np.uint64)[done])
    plots = tmp_path / "out_plots"
    assert f"pictures in {plots}" in err
    names = sorted(p.name for p in plots.iterdir())
    assert names == ["frame_sum_brightest.png", "frame_sum_roi.png", "frame_sum_total.png"]
    import matplotlib.image

    img = matplotlib.image.imread(plots / "frame_sum_total.png")
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200
    assert img[..., :3].std() > 0.05  # a picture, not a blank canvas


def test_inspect_output_shows_provenance_done_and_errors(tmp_path, client, capsys):
    path = tmp_path / "scan.h5"
    complete = np.ones((3, 4), dtype=bool)
    complete[2, 3] = False
    _blob_scan(path, scan=(3, 4), complete=complete)
    wf = Workflow("picky", data=DATA, keys=[KEY])

    @wf.frame
    def total(frame, index, *, bad=((0, 1), (1, 3))):
        if tuple(index) in bad:
            raise ValueError(f"frame {tuple(index)} is bad")
        return int(frame.sum())

    out = tmp_path / "out.h5"
    res = wf.run(path, out, client=client, on_error="skip")
    assert len(res.errors) == 2
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"framebag output {out} ")
    assert "workflow picky  (/entry/picky, NXprocess)" in text
    assert "  status: complete" in text
    assert f"  input {path.resolve()}: data {DATA}, keys {KEY}" in text
    assert '"bad": [[0, 1], [1, 3]]' in text
    assert "  done: 9/12 frames (75.0%) of scan shape (3, 4)" in text
    assert sorted(e[0] for e in res.errors) == [(0, 1), (1, 3)]
    assert "total   (3, 4)" in text and "stack" in text
    assert "  errors: 2 (frames skipped by --on-error skip)" in text
    for where, _fn, message in res.errors:
        assert f"    frame {where} total: {message}" in text


def test_inspect_output_left_open_by_a_killed_run(tmp_path, client, capsys):
    """A killed SWMR writer leaves the file flagged; inspect still opens it and says so."""
    path = tmp_path / "scan.h5"
    _blob_scan(path, scan=(2, 3))
    wf = Workflow("killed", data=DATA, keys=[KEY])

    @wf.frame
    def total(frame):
        return frame.sum()

    out = tmp_path / "out.h5"
    wf.run(path, out, client=client)
    code = ("import h5py, sys, time\n"
            f"f = h5py.File({str(out)!r}, 'r+', libver='latest')\n"
            "f['entry/killed'].attrs['status'] = 'running'\n"
            "f.swmr_mode = True\nf.flush()\nprint('ready', flush=True)\ntime.sleep(60)\n")
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
    finally:
        if writer.poll() is None:
            writer.kill()
    with pytest.raises(OSError):
        h5py.File(out, "r").close()  # flagged "open for write"
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "  status: running - being written now; if its run was killed, continue it" in text
    assert "done: 6/6 frames (100.0%)" in text


def test_inspect_bad_file_is_one_sentence(tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("not hdf5")
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"framebag: error: file {str(bad)!r} is not an HDF5 file"
    assert main(["inspect", str(tmp_path / "missing.h5")]) == 2
    assert "does not exist" in capsys.readouterr().err


# plot ---------------------------------------------------------------------------------


def test_plot_pictures_show_results_with_not_done_frames_masked(tmp_path, client, capsys):
    from framebag.plot import _about, _figure_for

    path = tmp_path / "scan.h5"
    complete = np.ones((6, 8), dtype=bool)
    complete[1, 2] = complete[5, 7] = False
    data = _blob_scan(path, complete=complete)
    wf = Workflow("look", data=DATA, keys=[KEY])

    @wf.frame
    def total(frame):
        return frame.sum(dtype=np.float64)

    @wf.frames
    def com(frames):
        f = frames.astype(np.float64)
        n = f.sum(axis=(1, 2))
        return np.stack([(f.sum(axis=2) @ np.arange(f.shape[1])) / n,
                         (f.sum(axis=1) @ np.arange(f.shape[2])) / n], axis=1)

    @wf.frame
    def rows(frame):
        return frame.mean(axis=1)

    @wf.frame(fold="mean")
    def mean(frame):
        return frame

    @wf.frame
    def tilt(frame, *, offset=30.0):  # both signs
        return frame.mean() - offset

    @wf.frame(fold="histogram", bins=8, range=(0, 512))
    def counts(frame):
        return frame

    out = tmp_path / "out.h5"
    middle = float(np.median(data.mean(axis=(2, 3))))
    wf.run(path, out, client=client, params={"offset": middle})
    pics = tmp_path / "pics"
    assert main(["plot", str(out), "-o", str(pics)]) == 0
    printed = capsys.readouterr().out.split()
    expect = [str(pics / f"look_{n}.png")
              for n in ("com", "counts", "mean", "rows", "tilt", "total")]
    assert sorted(printed) == expect
    assert all(Path(p).stat().st_size > 5000 for p in expect)

    done = complete
    with h5py.File(out, "r") as f:
        g = f["entry/look"]
        about = _about(g)
        fig = _figure_for("look", "total", g["total"], (6, 8), done, about)
        im = fig.axes[0].images[0].get_array()
        np.testing.assert_array_equal(im.mask, ~done)
        np.testing.assert_allclose(im.data[done], data.sum(axis=(2, 3))[done])
        assert fig.axes[0].get_xlabel() == "scan axis 1 (fast), index"
        assert fig.axes[0].get_ylabel() == "scan axis 0 (slow), index"
        assert any(ax.get_ylabel() == "total" for ax in fig.axes[1:])  # the colour bar
        title = fig.texts[0].get_text()
        assert f"workflow look: total (fold stack); offset={middle}" in title
        assert "input scan.h5, 46/48 frames done" in title
        assert fig.axes[0].images[0].get_cmap().name.startswith("viridis")

        fig = _figure_for("look", "tilt", g["tilt"], (6, 8), done, about)
        image = fig.axes[0].images[0]
        assert image.get_cmap().name.startswith("RdBu_r")  # signed: diverging, 0 in the middle
        assert image.norm.vcenter == 0.0

        fig = _figure_for("look", "counts", g["counts"], (6, 8), done, about)
        assert "counts (fold histogram)" in fig.texts[0].get_text()
        line = fig.axes[0].lines[0]
        np.testing.assert_allclose(line.get_xdata(), np.arange(32, 512, 64))  # bin centres
        np.testing.assert_array_equal(
            line.get_ydata(), np.histogram(data[done], bins=8, range=(0, 512))[0])
        assert fig.axes[0].get_ylabel() == "counts"

        fig = _figure_for("look", "com", g["com"], (6, 8), done)
        maps = [ax.images[0].get_array() for ax in fig.axes if ax.images]
        assert len(maps) == 2  # one scan map per component, each with a colour bar
        iy, ix = np.indices((6, 8))
        np.testing.assert_allclose(maps[0][done], (4 + 2 * iy)[done], atol=0.2)
        np.testing.assert_allclose(maps[1][done], (3 + 2 * ix)[done], atol=0.2)
        assert maps[0].mask[1, 2] and maps[1].mask[5, 7]

        fig = _figure_for("look", "rows", g["rows"], (6, 8), done)
        water = fig.axes[0].images[0].get_array()
        assert water.shape == (48, 24)
        assert water.mask[1 * 8 + 2].all() and not water.mask[0].any()
        curve = fig.axes[1].lines[0].get_ydata()  # axes: waterfall, mean, colour bar
        np.testing.assert_allclose(curve, data.mean(axis=3)[done].mean(axis=0))

        fig = _figure_for("look", "mean", g["mean"], (6, 8), done)
        np.testing.assert_allclose(fig.axes[0].images[0].get_array(), data[done].mean(axis=0))
        assert fig.axes[0].get_xlabel() == "frame x (pixel)"


def test_plot_of_a_fold_of_one_number_prints_it_and_says_there_is_nothing_to_draw(
        tmp_path, capsys):
    """``plot`` (and ``run --plot``) draws what it can and, for a result it cannot draw,
    prints one line saying why: a fold of one number gives its value."""
    path = tmp_path / "scan.h5"
    complete = np.ones((3, 4), dtype=bool)
    complete[2, 3] = False
    data = _blob_scan(path, scan=(3, 4), frame=(8, 8), complete=complete)
    wf_file = tmp_path / "one.py"
    wf_file.write_text(
        "from framebag import Workflow\n"
        f"workflow = Workflow('one', data={DATA!r}, keys=[{KEY!r}])\n\n"
        "@workflow.frame(fold='sum')\n"
        "def total(frame):\n"
        "    return int(frame.sum())\n\n"
        "@workflow.frame(fold='mean', units='counts')\n"
        "def level(frame):\n"
        "    return float(frame.mean())\n\n"
        "@workflow.frame\n"
        "def peak(frame):\n"
        "    return frame.max()\n")
    out, pics = tmp_path / "out.h5", tmp_path / "pics"
    assert main(["run", str(wf_file), str(path), "-o", str(out), "--profile", "inline",
                 "--plot"]) == 0
    err = capsys.readouterr().err
    total = int(data[complete].astype(np.int64).sum())
    with h5py.File(out, "r") as f:
        assert f["entry/one/total"][()] == total
        level = float(f["entry/one/level"][()])  # the mean's own rounding
    want = [f"one/total (fold sum) = {total} over 11/12 frames done: one number, nothing to "
            "draw", f"one/level (fold mean) = {level!r} counts over 11/12 frames done"]
    for line in want:
        assert line in err, (line, err)
    assert main(["plot", str(out), "-o", str(pics)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == str(pics / "one_peak.png") and len(printed) == 3
    for line in want:
        assert any(p.startswith("framebag: ") and line in p for p in printed[1:]), printed
    assert sorted(p.name for p in pics.iterdir()) == ["one_peak.png"]


def test_plot_of_a_non_framebag_file_is_an_error(tmp_path, capsys):
    path = tmp_path / "scan.h5"
    _blob_scan(path, scan=(2, 2))
    assert main(["plot", str(path)]) == 2
    assert "holds no framebag output" in capsys.readouterr().err


# workflows ----------------------------------------------------------------------------


def test_workflows_lists_examples_and_local_files(tmp_path, monkeypatch, capsys):
    local = tmp_path / "workflows"
    local.mkdir()
    (local / "mine.py").write_text(
        '"""My beamline\'s workflow."""\n'
        "from framebag import Workflow\n"
        "workflow = Workflow('mine', data='d', keys=['k'])\n\n"
        "@workflow.frames(fold='sum')\n"
        "def where(frames, index, *, scale=2.5):\n"
        "    return index * scale\n")
    (local / "broken.py").write_text("import not_a_module_anywhere\n")
    monkeypatch.chdir(tmp_path)
    assert main(["workflows"]) == 0
    text = capsys.readouterr().out
    blocks = {b.splitlines()[0]: b for b in text.strip().split("\n\n")}
    fs = blocks["framebag.workflows.frame_sum"]
    assert "workflow 'frame_sum': data entry/data/data, keys entry/keys/key_1" in fs
    assert [ln.split()[:3] for ln in fs.splitlines()[4:7]] == [
        ["total", "stack", "per"], ["roi", "stack", "per"], ["brightest", "max", "per"]]
    assert "y0=0 y1=10" in fs and "parameters: --set y0=0 --set y1=10" in fs
    assert "com_intensity  stack  batched" in blocks["framebag.workflows.centre_of_mass"]
    mine = blocks[str(Path("workflows") / "mine.py")]
    assert "My beamline's workflow." in mine
    assert "where  sum  batched, gets index  scale=2.5" in mine
    broken = blocks[str(Path("workflows") / "broken.py")]
    assert "cannot load:" in broken and "not_a_module_anywhere" in broken


# progress -----------------------------------------------------------------------------


def _read_pty(fd: int, deadline: float) -> bytes:
    out = b""
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.2)
        if not r:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return out


def test_a_reader_that_stops_early_ends_the_command_quietly():
    # `framebag workflows | head -1`, with the reader gone before the first write
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", "framebag.cli", "workflows"], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (141, "")


def test_progress_bar_on_a_terminal_shows_done_complete_rate_and_scan(tmp_path):
    """On a real pseudo-terminal the bar redraws in place; following, the bar is the scan.

    Frames complete but not done show apart, and the last rate drawn is the summary's.
    """
    master, slave = pty.openpty()
    code = ("import time\n"
            "from framebag.progress import Progress, configure\n"
            "configure()\n"
            "p = Progress(follow=True)\n"
            "assert p.tty\n"
            "for i in range(6):\n"
            "    p({'processed': 20 * i, 'complete': 40 + 12 * i, 'total': 200, 'inflight': 1})\n"
            "    time.sleep(0.25)\n"
            "p.finish({'processed': 100, 'resumed': 0, 'wall': 4.0})\n"
            "p.close()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=slave, stdout=slave)
    os.close(slave)
    try:
        raw = _read_pty(master, time.monotonic() + 30)
        proc.wait(30)
    finally:
        os.close(master)
    assert proc.returncode == 0, raw
    text = raw.decode("utf-8", "replace")
    states = [s for s in text.split("\r") if "done/scan" in s]
    assert len(states) >= 3  # redrawn in place
    assert any(" 20/200 " in s and "32 complete, waiting" in s for s in states)
    last = states[-1]
    assert " 50%|" in last and "100/200" in last
    assert "25.00frame/s" in last  # 100 frames in 4.0 s, as the summary line says


def test_progress_lines_quiet_and_resume_summary(tmp_path):
    import io

    from framebag.progress import summary_line

    stream = io.StringIO()
    configure(stream=stream)
    p = Progress(follow=True, stream=stream, interval=0.0)
    assert not p.tty
    p({"processed": 0, "complete": 0, "total": 50, "inflight": 0})  # nothing complete yet
    p({"processed": 10, "complete": 20, "total": 50, "inflight": 1})  # resumed with 10 done
    time.sleep(0.05)
    p({"processed": 15, "complete": 30, "total": 50, "inflight": 1})
    lines = stream.getvalue().splitlines()
    assert lines[0] == "framebag: waiting for the first complete frame of 50"
    assert lines[1] == ("framebag: 10 complete frames to process (10 done before); "
                        "scan 20/50 complete, following it")
    assert lines[2].startswith("framebag: 15/30 complete frames done (50%), ")
    assert "ETA" in lines[2] and lines[2].endswith("; scan 30/50 complete, 20 not yet")

    class Res:
        done = np.ones(50, dtype=bool)
        output = Path("o.h5")
        stats = {"processed": 40, "resumed": 10, "failed": 3, "wall": 2.0, "done": 47,
                 "ended_by": "finished_flag"}

    assert p.resumed == 10
    line = summary_line(Res(), follow=True)
    assert line == ("40 frames processed (+10 done by the earlier run), 3 failed and skipped in "
                    "2.00 s (20 frames/s); 47/50 of the scan done; output o.h5 "
                    "(ended: finished flag set)")

    quiet = io.StringIO()
    configure(quiet=True, stream=quiet)
    q = Progress(stream=quiet, interval=0.0)
    q({"processed": 1, "complete": 2, "total": 2, "inflight": 0})
    assert quiet.getvalue() == ""
    configure()


def test_run_quiet_prints_no_progress_and_report_is_written(tmp_path):
    path = tmp_path / "scan.h5"
    _blob_scan(path, scan=(4, 5))
    report = tmp_path / "report.html"
    argv = [sys.executable, "-m", "framebag.cli", "run", "framebag.workflows.frame_sum",
            str(path), "-o", str(tmp_path / "o.h5"), "-q", "--log-interval", "0"]
    if subprocess.run([sys.executable, "-c", "import bokeh"]).returncode == 0:
        argv += ["--report", str(report)]
    else:  # bokeh is optional: without it --report fails at once, in one sentence
        bad = subprocess.run([*argv, "--report", str(report)], capture_output=True, text=True,
                             env=_env(), timeout=120)
        assert bad.returncode == 2 and "needs bokeh" in bad.stderr
    # as a user runs it: no DASK_LOGGING__DISTRIBUTED, so framebag keeps distributed's own
    # records (such as its heartbeat race at shutdown, dask/distributed#7105) quiet
    env = {k: v for k, v in _env().items() if k != "DASK_LOGGING__DISTRIBUTED"}
    run = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""  # not even the dashboard link
    if "--report" in argv:
        assert "Dask Performance Report" in report.read_text()
    with h5py.File(tmp_path / "o.h5", "r") as f:
        assert f["entry/frame_sum/done"][()].all()


def test_resumed_run_reports_only_its_own_frames(tmp_path, client):
    """A resumed run's bar/lines start from the earlier frames; the summary counts them apart."""
    import io

    from framebag.progress import summary_line

    path = tmp_path / "scan.h5"
    first = np.zeros((4, 5), dtype=bool)
    first[:2] = True
    data = _blob_scan(path, scan=(4, 5), complete=first)
    wf = Workflow("again", data=DATA, keys=[KEY])

    @wf.frame
    def total(frame):
        return frame.sum()

    out = tmp_path / "out.h5"
    res = wf.run(path, out, client=client)
    assert summary_line(res).startswith("10 frames processed, none failed in ")
    with h5py.File(path, "r+") as f:  # the scan goes on: the rest of the keys arrive
        f[KEY][...] = 1
    stream = io.StringIO()
    configure(stream=stream)
    try:
        progress = Progress(stream=stream, interval=0.0)
        res = wf.run(path, out, client=client, resume=True, progress=progress)
    finally:
        configure()
    assert progress.resumed == 10
    assert stream.getvalue().splitlines()[0] == (
        "framebag: 10 complete frames to process (10 done before)")
    line = summary_line(res)
    assert line.startswith("10 frames processed (+10 done by the earlier run), none failed in ")
    assert f"20/20 of the scan done; output {out}" in line
    np.testing.assert_array_equal(res["total"], data.sum(axis=(2, 3)))


def test_missing_optional_packages_are_one_line_errors_before_anything_starts(tmp_path):
    """Without matplotlib (or bokeh) --plot, plot and --report fail at once, in one sentence."""
    path = tmp_path / "scan.h5"
    _blob_scan(path, scan=(2, 2))
    code = ("import sys\n"
            "sys.modules['matplotlib'] = None\n"
            "sys.modules['bokeh'] = None\n"
            "from framebag.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    runs = {
        "plot": ["plot", str(path)],
        "run --plot": ["run", "framebag.workflows.frame_sum", str(path), "--plot"],
        "run --report": ["run", "framebag.workflows.frame_sum", str(path), "--report", "r.html"],
    }
    for what, argv in runs.items():
        t0 = time.monotonic()
        out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                             env=_env(), timeout=60, cwd=tmp_path)
        assert out.returncode == 2, (what, out.stderr)
        err = out.stderr.strip().splitlines()
        assert len(err) == 1, (what, err)
        want = "needs bokeh" if "report" in what else "matplotlib: pip install 'framebag[plot]'"
        assert want in err[0], (what, err)
        assert time.monotonic() - t0 < 20  # no cluster was started
    assert not (tmp_path / "scan_frame_sum.h5").exists()


def test_follow_lines_count_frames_seen_but_not_complete():
    import io

    from framebag.progress import Progress, configure

    stream = io.StringIO()
    configure(stream=stream)
    p = Progress(follow=True, stream=stream, tty=False, interval=0.0)
    p({"processed": 0, "complete": 10, "seen": 14, "total": 40, "inflight": 1})
    p({"processed": 5, "complete": 12, "seen": 15, "total": 40, "inflight": 1})
    assert "scan 12/40 complete (+3 partly keyed), 28 not yet" in stream.getvalue()


# messages that lead somewhere (issue 14) ---------------------------------------------


def _cli(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "framebag.cli", *argv], capture_output=True,
                          text=True, env=_env(), timeout=120, cwd=cwd)


def test_global_flags_work_after_the_subcommand(tmp_path):
    """--debug, -v and -q before or after the subcommand; --debug there shows the traceback."""
    for argv in (["--debug", "inspect", str(tmp_path / "nope.h5")],
                 ["inspect", str(tmp_path / "nope.h5"), "--debug"]):
        out = _cli(*argv)
        assert out.returncode != 0 and "Traceback" in out.stderr, (argv, out.stderr)
    out = _cli("inspect", str(tmp_path / "nope.h5"), "-v", "-q")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith("framebag: error: ") and out.stderr.count("\n") == 1
    out = _cli("profiles", "show", "local", "--debug")
    assert out.returncode == 0, out.stderr


def test_help_is_plain_and_run_help_shows_every_default():
    top = _cli("--help").stdout
    assert "``" not in top and ":class:" not in top and "Per-frame jobs" in top
    text = " ".join(_cli("run", "--help").stdout.split())
    for default in ("(default: 60.0)", "(default: 0.25)", "(default: 2)", "(default: raise)",
                    "(default: 10.0)", "(default: 32MiB)", "(default: local)"):
        assert default in text, default
    workflows = _cli("workflows").stdout
    assert "seeds" not in workflows
    assert f"  file {Path(__file__).parents[1] / 'workflows' / 'frame_sum.py'}" in workflows \
        or "/workflows/frame_sum.py" in workflows
    assert "sum of every frame" in workflows


@pytest.mark.parametrize("argv, says", [
    (["run", "wf.py", "scan.h5", "out.h5"], "there is no input file out.h5: to name the output "
                                            "file, use -o out.h5"),
    (["run", "wf.py", "scan.h5", "--follow", "out.h5"], "use -o out.h5"),
    (["run", "scan.h5", "wf.py"], "the arguments are swapped: the WORKFLOW comes first, then "
                                  "the INPUT file: framebag run wf.py scan.h5"),
    (["run", "wf.py", "scan.h5", "-o", "a.h5", "-o", "b.h5"], "-o given twice (a.h5 and b.h5)"),
    (["run", "wf.py", "scan.h5", "--profile", "slrum"],
     "no profile named 'slrum'; did you mean 'slurm'? the profiles are address, inline, local, "
     "pbs, sge, slurm"),
])
def test_usual_slips_in_run_arguments_say_what_to_do(tmp_path, argv, says):
    (tmp_path / "wf.py").write_text("")
    (tmp_path / "scan.h5").write_bytes(b"")
    (tmp_path / "a.h5").write_bytes(b"x")
    out = _cli(*argv, cwd=tmp_path)
    assert out.returncode == 2 or out.returncode == 1
    assert says in " ".join(out.stderr.split()), out.stderr
    assert "Traceback" not in out.stderr


def test_function_error_advice_and_resume_rule_agree(tmp_path, client):
    """The advice after a function error is one that the rules then accept."""
    path = tmp_path / "scan.h5"
    _blob_scan(path, scan=(3, 4))
    wf_file = tmp_path / "wf.py"
    body = ('from framebag import Workflow\n'
            f'workflow = Workflow("w", data="{DATA}", keys=["{KEY}"])\n'
            '@workflow.frame\n'
            'def total(frame, index):\n'
            '    if tuple(index) == (1, 2):\n'
            '        raise ValueError("bad frame")\n'
            '    return int(frame.sum())\n')
    wf_file.write_text(body)
    from framebag import FramebagError, load_workflow

    out = tmp_path / "out.h5"
    with pytest.raises(FramebagError) as err:
        load_workflow(wf_file).run(path, out, client=client)
    text = str(err.value)
    assert "fix the function and rerun with --overwrite" in text
    assert "--resume --on-error skip" in text
    # the advice's two ways both work: unchanged function with skip ...
    res = load_workflow(wf_file).run(path, out, client=client, resume=True, on_error="skip")
    assert len(res.errors) == 1
    # ... and the fixed function: --resume is refused in words, --overwrite works
    wf_file.write_text(body.replace('raise ValueError("bad frame")', 'pass'))
    with pytest.raises(FramebagError) as err:
        load_workflow(wf_file).run(path, out, client=client, resume=True)
    text = str(err.value)
    assert "the workflow's source file changed" in text and "use --overwrite" in text
    import re

    assert not re.search(r"[0-9a-f]{20}", text), text  # no raw hash
    assert "its sha256 was" in text
    res = load_workflow(wf_file).run(path, out, client=client, overwrite=True)
    assert res.done.all()


def test_shape_mismatch_advice_is_a_fixed_shape_not_skip(tmp_path, client):
    path = tmp_path / "scan.h5"
    _blob_scan(path, scan=(3, 4))
    wf = Workflow("ragged", data=DATA, keys=[KEY])

    @wf.frame
    def peaks(frame, index):
        return np.zeros(1 + (index[1] % 2))

    from framebag import FramebagError

    with pytest.raises(FramebagError) as err:
        wf.run(path, tmp_path / "out.h5", client=client)
    text = str(err.value)
    assert "return one fixed shape for every frame" in text
    assert "use --on-error skip" not in text and "or use --on-error skip" not in text


def test_warnings_and_errors_from_workers_name_the_workflow_file_and_line(tmp_path):
    """Functions reach workers pickled by value; their warnings still point into the file."""
    path = tmp_path / "scan.h5"
    _blob_scan(path, scan=(4, 6))
    wf_file = tmp_path / "mywf.py"
    wf_file.write_text(
        "import numpy as np\n"
        "from framebag import Workflow\n"
        f"workflow = Workflow('w', data='{DATA}', keys=['{KEY}'])\n"
        "def helper(frame):\n"
        "    return np.float64(frame.sum()) / np.float64(0)\n"
        "@workflow.frame\n"
        "def ratio(frame, index):\n"
        "    if tuple(index) == (3, 5):\n"
        "        raise ValueError('bad frame')\n"
        "    return helper(frame)\n")
    out = _cli("run", str(wf_file), str(path), "-o", str(tmp_path / "out.h5"), "-q",
               "--profile", "local", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    err = out.stderr
    assert "<dynamic-code>" not in err
    # the warning raised on a worker names the file, its line and shows the source line
    assert f"{wf_file}:5: RuntimeWarning: divide by zero" in err, err
    assert "return np.float64(frame.sum()) / np.float64(0)" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("framebag: error: function 'ratio' failed on frame (3, 5): "
                           f"ValueError: bad frame (at {wf_file}:9)"), last


@pytest.mark.parametrize("option, value", [("--timeout", "-3"), ("--timeout", "0"),
                                           ("--latency", "-1"), ("--retries", "-1"),
                                           ("--commit-interval", "-0.5")])
def test_negative_run_options_are_refused_naming_the_option(make_scan, capsys, tmp_path,
                                                            option, value):
    from framebag.cli import main

    path, _ = make_scan((2, 3))
    rc = main(["run", "framebag.workflows.frame_sum", str(path), "-o", str(tmp_path / "o.h5"),
               option, value])
    err = capsys.readouterr().err.strip()
    what = "positive" if option == "--timeout" else "zero or more"
    got = int(value) if option == "--retries" else float(value)
    assert rc == 2 and err.splitlines() == [f"framebag: error: {option} must be {what}, got {got}"]
    assert not (tmp_path / "o.h5").exists()
