"""The output as NeXus clients no one here wrote see it, and the Python ``Results``.

Every result must be reachable from an ``NXdata`` group that nexusformat and
silx accept as plottable, with real axes: scan indices or the input's motor
positions (``--axes``), pixel indices, a histogram's bin centres. The NXdata
groups hold hard links to the result datasets, so nothing is written twice.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest

from framebag import Workflow
from framebag.engine import Results
from framebag.inspect import inspect_file
from framebag.output import NXDATA_SUFFIX, _unflag

from .conftest import DATA, KEY, write_scan
from .test_errors import assert_one_sentence, run_cli

nexus = pytest.importorskip("nexusformat.nexus")
silx_nxdata = pytest.importorskip("silx.io.nxdata")

BINS, RANGE = 8, (0, 1000)
RESULTS = ["total", "profile", "com", "brightest", "spread", "hist", "mean_total"]


def make_workflow(name: str = "nx") -> Workflow:
    """One result of each kind: stacked scalar, vector, short vector; frame fold, histogram,
    scalar folds."""
    wf = Workflow(name, data=DATA, keys=[KEY])

    @wf.frame(units="counts")
    def total(frame):
        return frame.sum()

    @wf.frame
    def profile(frame):
        return frame.sum(axis=1).astype(np.float64)

    @wf.frames(units="pixel")
    def com(frames):
        return np.stack([frames.mean(axis=(1, 2)), frames.max(axis=(1, 2))], axis=1)

    @wf.frame(fold="max")
    def brightest(frame):
        return frame

    @wf.frame(fold="var", units="counts")
    def spread(frame):
        return frame.astype(np.float64)

    @wf.frame(fold="histogram", bins=BINS, range=RANGE, units="counts")
    def hist(frame):
        return frame

    @wf.frame(fold="mean", units="counts")
    def mean_total(frame):
        return float(frame.sum())

    return wf


def scan_with_positions(tmp_path, scan=(3, 5), frame=(6, 7), growing=False):
    """A finished scan with motor positions: y 1-d (mm), x scan-shaped (a snake's jitter)."""
    rng = np.random.default_rng(1)
    data = rng.integers(0, 1000, size=scan + frame).astype("uint16")
    path = write_scan(tmp_path / "scan.h5", data, len(scan))
    y = np.linspace(-1.0, 1.0, scan[0])
    x = np.linspace(0.0, 4.0, scan[1])[None, :] + rng.normal(0, 0.01, scan)
    with h5py.File(path, "a") as f:
        if growing:  # keys with an unlimited first dim: the output is laid out growing
            keys = f[KEY][()]
            del f[KEY]
            f.create_dataset(KEY, data=keys, maxshape=(None,) + keys.shape[1:])
        f.create_dataset("entry/instrument/y", data=y,
                         maxshape=(None,) if growing else None).attrs["units"] = "mm"
        f.create_dataset("entry/instrument/x", data=x)
        f.create_dataset("entry/instrument/label", data=np.array([b"a"] * scan[1]))
    return path, data, y, x


def run_wf(wf, path, out, client, **kw):
    return wf.run(path, out, client=client, overwrite=True, **kw)


# the two clients -------------------------------------------------------------------


def test_every_result_is_plottable_in_nexusformat_and_silx(tmp_path, client, make_scan):
    path, data = make_scan((4, 5), (6, 7))
    out = tmp_path / "out.h5"
    wf = make_workflow()
    res = run_wf(wf, path, out, client)

    root = nexus.nxload(str(out))
    assert root.plottable_data.nxsignal.nxname == "total"  # /@default -> entry -> nx -> first
    for name in RESULTS:
        nxd = root[f"entry/nx/{name}{NXDATA_SUFFIX}"]
        plot = nxd.plottable_data
        assert plot is not None, name
        assert plot.nxsignal.nxname == name
        np.testing.assert_array_equal(plot.nxsignal.nxdata, res[name])
        axes = plot.nxaxes or []
        assert len(axes) == np.ndim(res[name]), (name, axes)

    with h5py.File(out, "r") as f:
        default = silx_nxdata.get_default(f)
        assert default is not None and default.is_valid
        assert default.signal.name == "/entry/nx/total_nxdata/total"
        np.testing.assert_array_equal(default.signal[()], res["total"])
        g = f["entry/nx"]
        assert g.attrs["default"] == f"total{NXDATA_SUFFIX}"
        assert f["entry"].attrs["default"] == "nx" and f.attrs["default"] == "entry"
        for name in RESULTS:
            nx = silx_nxdata.NXdata(g[name + NXDATA_SUFFIX])
            assert nx.is_valid, (name, nx.issues)
            # a hard link: the very dataset, not a copy
            assert g[name + NXDATA_SUFFIX][name].id == g[name].id
            assert h5py.h5o.get_info(g[name].id).rc == 2


def test_result_attributes_and_axes_match_numpy(tmp_path, client, make_scan):
    path, data = make_scan((4, 5), (6, 7))
    out = tmp_path / "out.h5"
    res = run_wf(make_workflow(), path, out, client)
    with h5py.File(out, "r") as f:
        g = f["entry/nx"]
        folds = {n: g[n].attrs["fold"] for n in RESULTS}
        assert folds == {"total": "stack", "profile": "stack", "com": "stack",
                         "brightest": "max", "spread": "var", "hist": "histogram",
                         "mean_total": "mean"}
        assert g["total"].attrs["units"] == "counts"
        assert g["spread"].attrs["units"] == "counts^2"  # a variance squares the units
        assert g["com"].attrs["units"] == "pixel"
        assert "units" not in g["profile"].attrs and "units" not in g["hist"].attrs
        hist = g["hist" + NXDATA_SUFFIX]
        edges = np.histogram_bin_edges([], bins=BINS, range=RANGE)
        np.testing.assert_allclose(hist["bin_edges"][()], edges)
        np.testing.assert_allclose(hist["bin_centres"][()], (edges[1:] + edges[:-1]) / 2)
        assert hist["bin_centres"].attrs["units"] == "counts"
        np.testing.assert_array_equal(res["hist"], np.histogram(data, bins=edges)[0])
        total = g["total" + NXDATA_SUFFIX]
        assert list(total.attrs["axes"]) == ["scan_0", "scan_1"]
        np.testing.assert_array_equal(total["scan_0"][()], np.arange(4))
        np.testing.assert_array_equal(total["scan_1"][()], np.arange(5))
        # the scan axes are made once and linked into every stacked result's group
        assert g["com" + NXDATA_SUFFIX]["scan_1"].id == total["scan_1"].id
        assert list(g["com" + NXDATA_SUFFIX].attrs["axes"]) == ["scan_0", "scan_1", "."]
        bright = g["brightest" + NXDATA_SUFFIX]
        assert list(bright.attrs["axes"]) == ["frame_y", "frame_x"]
        np.testing.assert_array_equal(bright["frame_x"][()], np.arange(7))
        np.testing.assert_array_equal(res["brightest"], data.max(axis=(0, 1)))
        assert "axes" not in g["mean_total" + NXDATA_SUFFIX].attrs  # a scalar has none


# motor positions ---------------------------------------------------------------------


def test_axes_copy_the_motor_positions(tmp_path, client, unchanged):
    path, data, y, x = scan_with_positions(tmp_path)
    unchanged(path)
    out = tmp_path / "out.h5"
    res = run_wf(make_workflow(), path, out, client,
                 axes=["entry/instrument/y", "entry/instrument/x"])
    with h5py.File(out, "r") as f:
        total = f["entry/nx/total" + NXDATA_SUFFIX]
        assert list(total.attrs["axes"]) == ["y", "scan_1"]
        np.testing.assert_array_equal(total["y"][()], y)
        assert total["y"].attrs["units"] == "mm"
        assert total["y"].attrs["source"] == "entry/instrument/y"
        # scan-shaped positions: beside the index axis, on every scan dim
        np.testing.assert_array_equal(total["x"][()], x)
        assert list(total.attrs["x_indices"]) == [0, 1]
        nx = silx_nxdata.get_default(f)
        assert nx.is_valid and nx.axes_dataset_names == ["y", "scan_1"]
        np.testing.assert_array_equal(nx.axes[0], y)
    plot = nexus.nxload(str(out)).plottable_data
    np.testing.assert_array_equal(plot.nxaxes[0].nxdata, y)

    ds = res.to_xarray()
    assert ds["total"].dims == ("y", "scan_1")
    np.testing.assert_array_equal(ds["y"].values, y)
    np.testing.assert_array_equal(ds["x"].values, x)
    assert ds["x"].dims == ("y", "scan_1")
    np.testing.assert_array_equal(ds["total"].values, data.sum(axis=(2, 3)))
    assert ds["total"].attrs == {"fold": "stack", "units": "counts"}
    assert ds["brightest"].dims == ("frame_y", "frame_x")
    assert ds["hist"].dims == ("hist_bin",)
    assert ds["done"].dims == ("y", "scan_1") and bool(ds["done"].all())


def test_workflow_axes_and_a_growing_layout(tmp_path, client):
    path, data, y, x = scan_with_positions(tmp_path, growing=True)
    wf = make_workflow()
    wf.axes = ["entry/instrument/y", "entry/instrument/x"]
    out = tmp_path / "out.h5"
    run_wf(wf, path, out, client)
    with h5py.File(out, "r") as f:
        total = f["entry/nx/total" + NXDATA_SUFFIX]
        assert total["y"].maxshape == (None,) and total["x"].maxshape[0] is None
        np.testing.assert_array_equal(total["y"][()], y)
        np.testing.assert_array_equal(total["x"][()], x)
        assert silx_nxdata.get_default(f).is_valid


@pytest.mark.parametrize("axes, words", [
    (["entry/instrument/y"], ["--axes", "1 dataset", "rank 2"]),
    (["entry/instrument/x", "entry/instrument/y"],
     ["--axes entry/instrument/y", "(3,)", "scan dim 1", "length 5"]),
    (["entry/instrument/y", "entry/nothing"], ["--axes entry/nothing", "not in input file"]),
    (["entry/instrument/y", "entry/instrument/label"],
     ["--axes entry/instrument/label", "not numeric"]),
])
def test_bad_axes_fail_in_one_sentence(tmp_path, capsys, axes, words):
    path, *_ = scan_with_positions(tmp_path)
    out = tmp_path / "out.h5"
    rc, err = run_cli(capsys, "run", "workflows/frame_sum.py", str(path), "-o", str(out),
                      "--axes", *axes)
    assert_one_sentence(rc, err, *words)
    assert not out.exists()


@pytest.mark.parametrize("again, words", [
    (["--axes", "entry/instrument/x", "entry/instrument/x"],
     ["made with --axes entry/instrument/y entry/instrument/x",
      "gives --axes entry/instrument/x entry/instrument/x"]),
    ([], ["gives no --axes", "resume with --axes entry/instrument/y entry/instrument/x"]),
])
def test_resume_with_other_axes_is_refused(tmp_path, capsys, again, words):
    """--resume keeps the output's axes: other --axes (or none) would be silently ignored."""
    path, *_ = scan_with_positions(tmp_path)
    out = tmp_path / "out.h5"
    axes = ["--axes", "entry/instrument/y", "entry/instrument/x"]
    rc, _ = run_cli(capsys, "run", "workflows/frame_sum.py", str(path), "-o", str(out), *axes)
    assert rc == 0
    before = out.read_bytes()
    rc, err = run_cli(capsys, "run", "workflows/frame_sum.py", str(path), "-o", str(out),
                      "--resume", *again)
    assert_one_sentence(rc, err, "--resume", *words)
    assert out.read_bytes() == before
    rc, _ = run_cli(capsys, "run", "workflows/frame_sum.py", str(path), "-o", str(out),
                    "--resume", *axes)
    assert rc == 0


def test_cli_axes_reach_the_output(tmp_path, capsys):
    path, data, y, x = scan_with_positions(tmp_path)
    out = tmp_path / "out.h5"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.run([sys.executable, "-m", "framebag.cli", "-q", "run",
                           "workflows/frame_sum.py", str(path), "-o", str(out), "--axes",
                           "entry/instrument/y", "entry/instrument/x", "--profile", "local",
                           "--set", "y0=1"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["entry/frame_sum/total_nxdata/y"][()], y)
    text = inspect_file(out)
    assert "total_nxdata: y, scan_1" in text


# Python results, inspect, plot, resume -------------------------------------------------


def test_results_repr_is_short_and_to_xarray_names_dims(tmp_path, client, make_scan):
    path, data = make_scan((40, 50), (6, 7))
    res = run_wf(make_workflow(), path, tmp_path / "out.h5", client)
    text = repr(res)
    assert len(text.splitlines()) == 1 + len(RESULTS)
    assert "2000/2000 frames done (100.0%)" in text
    assert "total: stack, shape (40, 50), uint64, units counts" in text
    assert "hist: histogram, shape (8,), int64" in text
    assert "spread: var, shape (6, 7), float64, units counts^2" in text
    assert len(text) < 1000  # no array dumped
    ds = res.to_xarray()
    assert ds["total"].dims == ("scan_0", "scan_1")
    assert ds["profile"].dims == ("scan_0", "scan_1", "profile_dim_2")
    np.testing.assert_array_equal(ds["profile"].values, data.sum(axis=3))
    np.testing.assert_allclose(ds["hist_bin"].values, np.arange(62.5, 1000, 125))
    assert ds["spread"].attrs["units"] == "counts^2"
    np.testing.assert_allclose(ds["spread"].values, data.var(axis=(0, 1)))


def test_to_xarray_without_xarray_says_how_to_install(monkeypatch):
    res = Results(total=np.zeros(3))
    monkeypatch.setitem(sys.modules, "xarray", None)  # what Python does with it uninstalled
    with pytest.raises(ImportError, match=r"pip install 'framebag\[xarray\]'"):
        res.to_xarray()


def test_inspect_shows_fold_units_shape_and_axes(tmp_path, client, make_scan):
    path, _ = make_scan((4, 5), (6, 7))
    out = tmp_path / "out.h5"
    run_wf(make_workflow(), path, out, client)
    text = inspect_file(out)
    rows = {cells[0]: cells for cells in (re.split(r"\s{2,}", line.strip())
                                          for line in text.splitlines()
                                          if line.startswith("    ") and "  " in line.strip())}
    assert rows["result"] == ["result", "shape", "dtype", "fold", "units", "axes (NXdata)"]
    assert rows["total"] == ["total", "(4, 5)", "uint64", "stack", "counts",
                             "total_nxdata: scan_0, scan_1"]
    assert rows["spread"] == ["spread", "(6, 7)", "float64", "var", "counts^2",
                              "spread_nxdata: frame_y, frame_x"]
    assert rows["hist"] == ["hist", "(8,)", "int64", "histogram", "counts (bins)",
                            "hist_nxdata: bin_centres"]
    assert rows["mean_total"][3:] == ["mean", "counts", "mean_total_nxdata: scalar"]
    assert "default plot: /entry/nx/total_nxdata" in text


def test_plot_labels_come_from_the_nxdata_axes(tmp_path, client):
    pytest.importorskip("matplotlib")
    from framebag.plot import _about, _figure_for

    path, data, y, x = scan_with_positions(tmp_path)
    out = tmp_path / "out.h5"
    run_wf(make_workflow(), path, out, client, axes=["entry/instrument/y", "entry/instrument/x"])
    with h5py.File(out, "r") as f:
        g = f["entry/nx"]
        done = g["done"][()].astype(bool)
        fig = _figure_for("nx", "total", g["total"], (3, 5), done, _about(g))
        assert fig.axes[0].get_ylabel() == "y (mm)"
        assert fig.axes[0].get_xlabel() == "scan axis 1 (fast), index"
        fig = _figure_for("nx", "hist", g["hist"], (3, 5), done, _about(g))
        assert fig.axes[0].get_xlabel() == "hist bin centre (counts)"


def test_a_killed_writers_output_keeps_its_nxdata_links_through_repair(tmp_path, client,
                                                                        make_scan):
    path, _ = make_scan((4, 5), (6, 7))
    out = tmp_path / "out.h5"
    run_wf(make_workflow(), path, out, client)
    # a writer that dies in SWMR mode leaves the file flagged "open for write"
    code = (f"import h5py, os; f = h5py.File({str(out)!r}, 'r+', libver='latest'); "
            "f.swmr_mode = True; f.flush(); os._exit(0)")
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(OSError):
        h5py.File(out, "r")
    _unflag(out)
    with h5py.File(out, "r") as f:
        g = f["entry/nx"]
        for name in RESULTS:
            assert g[name + NXDATA_SUFFIX][name].id == g[name].id, name
        assert g["com" + NXDATA_SUFFIX]["scan_0"].id == g["total" + NXDATA_SUFFIX]["scan_0"].id
        assert silx_nxdata.get_default(f).is_valid


def test_a_reserved_suffix_is_refused_at_registration():
    wf = Workflow("w")
    for name in ("total" + NXDATA_SUFFIX, "scan_0", "frame_x", "bin_edges"):
        with pytest.raises(ValueError, match="reserved for the output's NXdata"):
            wf.frame(name=name)(lambda frame: 0)
    wf.frame(name="frame_total")(lambda frame: 0)  # only the axis names themselves
    with pytest.raises(TypeError, match="units"):
        @wf.frame(units=3)
        def g(frame):
            return 0


# live ---------------------------------------------------------------------------------

LIVE_SCAN, LIVE_FRAME = (6, 5), (4, 4)


def _gated_writer(path: str, seen, ready) -> None:
    """A growing SWMR writer that writes scan row ``r`` only once the reader saw ``r`` rows.

    So the reader sees every size of the output's scan, on any machine load.
    """
    import time

    ny, nx = LIVE_SCAN
    with h5py.File(path, "w", libver="latest") as f:
        data = f.create_dataset(DATA, shape=(1, nx, *LIVE_FRAME), dtype="uint16",
                                maxshape=(None, nx, *LIVE_FRAME), chunks=(1, 1, *LIVE_FRAME))
        keys = f.create_dataset(KEY, shape=(1, nx), maxshape=(None, nx), dtype="i4",
                                chunks=(1, nx))
        flag = f.create_dataset("entry/finished", data=0)
        f.swmr_mode = True
        ready.set()
        for r in range(ny):
            if r:
                deadline = time.monotonic() + 60  # a hang guard only
                while seen.value < r and time.monotonic() < deadline:
                    time.sleep(0.002)
                data.resize(r + 1, axis=0)
                keys.resize(r + 1, axis=0)
            data[r] = r + 1
            data.flush()
            keys[r] = 1
            keys.flush()
        flag[()] = 1
        flag.flush()


def _watch_axis(out: str, seen, queue) -> None:
    """A separate SWMR reader: ``(len(scan_0), len(total), silx valid, row shown)`` as the
    scan grows.

    It tells the writer it has seen ``r`` rows only once the NXdata group is valid
    for silx at ``r`` rows *and* row ``r - 1`` is committed: its ``total`` values
    and its ``done`` flags are readable. The writer waits for that, as a detector
    that pauses after a row would: the driver must then commit the row within its
    commit interval, not hold it until another task completes (which, with the
    writer waiting, is never).
    """
    import time

    from silx.io.nxdata import NXdata

    deadline = time.monotonic() + 120  # a hang guard only: it stops on what it sees
    states: list[tuple[int, int, bool, bool]] = []
    while not os.path.exists(out) and time.monotonic() < deadline:
        time.sleep(0.002)
    with h5py.File(out, "r", swmr=True) as f:
        nx = f["entry/growing/total" + NXDATA_SUFFIX]
        axis, total, done = nx["scan_0"], nx["total"], f["entry/growing/done"]
        while time.monotonic() < deadline and seen.value < LIVE_SCAN[0]:
            axis.refresh()
            total.refresh()
            done.refresh()
            state = (axis.shape[0], total.shape[0])
            # a new size, or the last one not valid or not committed yet (a reader can
            # catch the writer between the resizes of one grow): look again
            if not states or states[-1][:2] != state or not states[-1][3]:
                valid = state[0] == state[1] and NXdata(nx).is_valid
                row = state[0] - 1
                shown = valid and done.shape[0] == state[0] and bool(done[row].all()) \
                    and bool((total[row] == (row + 1) * 16).all())  # 16 pixels of row + 1
                if states and states[-1][:2] == state:
                    states[-1] = (*state, valid, shown)
                else:
                    states.append((*state, valid, shown))
                if shown:
                    seen.value = state[0]
            time.sleep(0.002)
    queue.put(states)


def test_a_growing_scans_axis_grows_and_stays_valid_for_a_live_reader(tmp_path, client):
    import multiprocessing as mp

    path, out = tmp_path / "scan.h5", tmp_path / "out.h5"
    ctx = mp.get_context("spawn")
    seen, ready, queue = ctx.Value("i", 0), ctx.Event(), ctx.Queue()
    reader = ctx.Process(target=_watch_axis, args=(str(out), seen, queue))
    writer = ctx.Process(target=_gated_writer, args=(str(path), seen, ready))
    reader.start()
    writer.start()
    wf = Workflow("growing", data=DATA, keys=[KEY], finished="entry/finished")

    @wf.frame
    def total(frame):
        return int(frame.sum())

    try:
        assert ready.wait(60)
        # a commit interval longer than a row's task: each row's partial arrives within
        # the interval after the previous commit, so only the interval's timer commits it
        res = wf.run(path, out, client=client, follow=True, timeout=60, latency=0.05,
                     commit_interval=0.5)
        states = queue.get(timeout=60)
    finally:
        writer.join(timeout=30)
        reader.join(timeout=30)
    ny, nx = LIVE_SCAN
    assert res.done.all() and res.done.shape == LIVE_SCAN
    np.testing.assert_array_equal(res["total"], (np.arange(ny)[:, None] + 1) * 16 * np.ones(nx))
    lengths = [a for a, t, valid, shown in states if valid and shown]
    assert lengths == list(range(1, ny + 1)), states  # every size, valid and committed
    with h5py.File(out, "r") as f:
        nx_group = f["entry/growing/total" + NXDATA_SUFFIX]
        np.testing.assert_array_equal(nx_group["scan_0"][()], np.arange(ny))
        assert nx_group["scan_0"].maxshape == (None,)
        assert silx_nxdata.get_default(f).is_valid
    assert res.to_xarray()["total"].sizes == {"scan_0": ny, "scan_1": nx}


def test_resume_with_other_axes_is_one_sentence_naming_axes(tmp_path, client):
    from framebag.errors import FramebagError

    path, *_ = scan_with_positions(tmp_path)
    out = tmp_path / "out.h5"
    wf = Workflow("ax", data=DATA, keys=[KEY])
    wf.frame(name="total")(lambda frame: frame.sum())
    axes = ["entry/instrument/y", "entry/instrument/x"]
    wf.run(path, out, client=client, axes=axes)
    before = out.read_bytes()
    with pytest.raises(FramebagError) as caught:  # the NXdata groups hold y and x
        wf.run(path, out, client=client, resume=True)
    message = str(caught.value)
    assert message.count(". ") == 0 and "\n" not in message
    assert "--axes entry/instrument/y entry/instrument/x, but this run gives no --axes" \
        in message and "--overwrite" in message
    assert out.read_bytes() == before  # refused before anything was written
    res = wf.run(path, out, client=client, resume=True, axes=axes)
    assert res.done.all()
