"""The core flow on finished files: results equal numpy for every fold, layout and dtype."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framebag import Fold, FramebagError, Workflow, histogram, load_workflow
from framebag.cli import main

from .conftest import DATA, KEY, write_scan

FOLDS = ["sum", "mean", "min", "max", "var", "std"]


def all_folds_workflow() -> Workflow:
    wf = Workflow("allfolds", data=DATA, keys=[KEY])

    @wf.frame
    def total(frame):
        return np.sum(frame)

    @wf.frame
    def as_float(frame):  # a stacked value of the frame's own shape
        return np.asarray(frame, dtype=np.float32)

    for fold in FOLDS:
        wf.frame(lambda frame: frame, fold=fold, name=f"f_{fold}")
    wf.frame(lambda frame: frame, fold=histogram(bins=10, range=(0, 1000)), name="hist")
    return wf


def expected_folds(data: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    sel = data[mask].astype(np.float64)
    return {
        "f_sum": sel.sum(axis=0),
        "f_mean": sel.mean(axis=0),
        "f_min": sel.min(axis=0),
        "f_max": sel.max(axis=0),
        "f_var": sel.var(axis=0),
        "f_std": sel.std(axis=0),
        "hist": np.histogram(sel, bins=10, range=(0, 1000))[0],
    }


def check_all(res, data: np.ndarray, mask: np.ndarray) -> None:
    scan_rank = mask.ndim
    frame_axes = tuple(range(scan_rank, data.ndim))
    np.testing.assert_array_equal(res.done, mask)
    want_total = data.sum(axis=frame_axes) if frame_axes else data
    np.testing.assert_array_equal(res["total"][mask], want_total[mask])
    assert (res["total"][~mask] == 0).all()
    np.testing.assert_array_equal(res["as_float"][mask], data[mask].astype(np.float32))
    for name, want in expected_folds(data, mask).items():
        np.testing.assert_allclose(res[name], want, rtol=1e-9, atol=1e-9, err_msg=name)


@pytest.mark.parametrize(
    "scan_shape, frame_shape",
    [((12,), (6, 5)), ((4, 5), (6, 5)), ((2, 3, 4), (6, 5)),
     ((4, 5), ()), ((4, 5), (7,)), ((2, 3, 4), ()), ((12,), (9,))],
)
def test_every_fold_equals_numpy_for_scan_and_frame_ranks(make_scan, client, tmp_path,
                                                          unchanged, scan_shape, frame_shape):
    rng = np.random.default_rng(1)
    mask = rng.random(scan_shape) > 0.25
    mask.flat[0] = True
    path, data = make_scan(scan_shape, frame_shape, complete=mask)
    unchanged(path)
    res = all_folds_workflow().run(path, tmp_path / "out.h5", client=client,
                                   partition_bytes=3 * max(1, data[0].nbytes if frame_shape else 2))
    check_all(res, data, mask)


@pytest.mark.parametrize("dtype", ["uint16", "int32", "float32"])
@pytest.mark.parametrize(
    "layout",
    [dict(chunks=(1, 1, 6, 5)), dict(chunks=(2, 3, 6, 5)), dict(chunks=(1, 5, 3, 5)),
     dict(chunks=(3, 2, 6, 5), compression="gzip"), dict(chunks=False)],
    ids=["frame-per-chunk", "multi-frame", "split-frames", "gzip", "contiguous"],
)
def test_layouts_and_dtypes(make_scan, client, tmp_path, unchanged, dtype, layout):
    mask = np.ones((4, 5), dtype=bool)
    mask[1, 2] = mask[3, 0] = False
    chunks = layout.get("chunks")
    kwargs = dict(layout, chunks=None if chunks is False else chunks)
    path, data = make_scan((4, 5), (6, 5), dtype=dtype, complete=mask, **kwargs)
    unchanged(path)
    res = all_folds_workflow().run(path, tmp_path / "out.h5", client=client,
                                   partition_bytes=7 * data[0, 0].nbytes)
    check_all(res, data, mask)


def test_two_key_datasets_must_both_be_set(make_scan, client, tmp_path, unchanged):
    a = np.ones((4, 5), dtype=bool)
    a[0, :2] = False
    b = np.ones((4, 5), dtype=bool)
    b[3, 4] = b[2, 2] = False
    path, data = make_scan((4, 5), (6, 5), complete=a, extra_keys=[b])
    wf = all_folds_workflow()
    res = wf.run(path, tmp_path / "out.h5", client=client, keys=[KEY, "entry/keys/key_2"])
    check_all(res, data, a & b)
    # keys with any non-zero value count, negative included
    with h5py.File(path, "r+") as f:
        f[KEY][...] = np.where(a, -3, 0).reshape(f[KEY].shape)
    unchanged(path)  # the test changed it; framebag must not
    res = wf.run(path, tmp_path / "out2.h5", client=client)
    check_all(res, data, a)


def test_partition_targets_that_split_chunks_unevenly(make_scan, client, tmp_path):
    path, data = make_scan((6, 10), (4, 4), chunks=(2, 5, 4, 4))
    mask = np.ones((6, 10), dtype=bool)
    wf = all_folds_workflow()
    for frames in (1, 3, 7, 13, 60, 1000):
        out = tmp_path / f"out{frames}.h5"
        res = wf.run(path, out, client=client, partition_bytes=frames * data[0, 0].nbytes)
        check_all(res, data, mask)


def test_batched_functions_and_scan_index(make_scan, client, tmp_path):
    path, data = make_scan((3, 4), (5, 6))
    wf = Workflow("batched", data=DATA, keys=[KEY])

    @wf.frames
    def sums(frames, *, scale=1):
        return frames.sum(axis=(1, 2)) * scale

    @wf.frames(fold="max")
    def peak(frames):
        return frames

    @wf.frame
    def where(frame, index):
        return np.array(index)

    @wf.frames
    def where_batched(frames, index):
        return index

    res = wf.run(path, tmp_path / "o.h5", client=client, params={"scale": "2"},
                 partition_bytes=5 * data[0, 0].nbytes)
    np.testing.assert_array_equal(res["sums"], 2 * data.sum(axis=(2, 3)))
    np.testing.assert_array_equal(res["peak"], data.max(axis=(0, 1)))
    grid = np.stack(np.indices((3, 4)), axis=-1)
    np.testing.assert_array_equal(res["where"], grid)
    np.testing.assert_array_equal(res["where_batched"], grid)


def test_custom_fold_gets_a_fresh_initial_per_partition(make_scan, client, tmp_path):
    path, data = make_scan((20,), (3, 3))
    calls = Fold(
        "count_and_sum",
        initial=lambda: {"n": 0, "s": 0},
        binop=lambda acc, v: {"n": acc["n"] + 1, "s": acc["s"] + int(v.sum())},
        combine=lambda a, b: {"n": a["n"] + b["n"], "s": a["s"] + b["s"]},
        finalize=lambda acc: np.array([acc["n"], acc["s"]]),
    )
    wf = Workflow("custom", data=DATA, keys=[KEY])
    wf.frame(lambda frame: frame, fold=calls, name="ns")
    res = wf.run(path, tmp_path / "o.h5", client=client, partition_bytes=3 * data[0].nbytes)
    np.testing.assert_array_equal(res["ns"], [20, int(data.sum())])
    with pytest.raises(TypeError, match="initial must be a callable"):
        Fold("bad", initial=[], binop=lambda a, v: a, combine=lambda a, b: a)


def test_variance_is_numerically_sound(make_scan, client, tmp_path, unchanged):
    # a large offset ruins the naive sum-of-squares formula; Chan's merge keeps it
    path, data = make_scan((40,), (4,), dtype="float64", seed=3)
    with h5py.File(path, "r+") as f:
        f[DATA][...] = data + 1e9
    unchanged(path)
    wf = Workflow("var", data=DATA, keys=[KEY])
    wf.frame(lambda frame: frame, fold="var", name="v")
    res = wf.run(path, tmp_path / "o.h5", client=client, partition_bytes=3 * data[0].nbytes)
    np.testing.assert_allclose(res["v"], (data + 1e9).var(axis=0), rtol=1e-6)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(mask=st.lists(st.booleans(), min_size=24, max_size=24).filter(any),
       frames_per_part=st.integers(1, 30), chunk=st.sampled_from([1, 2, 3, 4, 6]))
def test_any_completion_mask_and_partition_size_match_numpy(tmp_path_factory, client, mask,
                                                            frames_per_part, chunk):
    tmp = tmp_path_factory.mktemp("prop")
    mask = np.array(mask).reshape(4, 6)
    data = np.random.default_rng(7).integers(0, 1000, (4, 6, 3, 2)).astype("uint16")
    path = write_scan(tmp / "in.h5", data, 2, complete=mask, chunks=(1, chunk, 3, 2))
    res = all_folds_workflow().run(path, tmp / "out.h5", client=client,
                                   partition_bytes=frames_per_part * data[0, 0].nbytes)
    check_all(res, data, mask)


# example workflows ---------------------------------------------------------------


def test_example_workflows_equal_numpy(make_scan, client, tmp_path):
    path, data = make_scan((3, 5), (16, 16))
    f64 = data.astype(np.float64)

    res = load_workflow("workflows/frame_sum.py").run(
        path, tmp_path / "a.h5", client=client, params={"y0": 2, "y1": 9})
    np.testing.assert_array_equal(res["total"], data.sum(axis=(2, 3)))
    np.testing.assert_array_equal(res["roi"], data[:, :, 2:9].sum(axis=(2, 3)))
    np.testing.assert_array_equal(res["brightest"], data.max(axis=(0, 1)))

    res = load_workflow("framebag.workflows.roi_stats").run(
        path, tmp_path / "b.h5", client=client, params={"y0": 3, "y1": 11, "x0": 1, "x1": 7})
    roi = f64[:, :, 3:11, 1:7]
    np.testing.assert_allclose(res["roi_sum"], roi.sum(axis=(2, 3)))
    np.testing.assert_allclose(res["roi_mean"], roi.mean(axis=(2, 3)))
    np.testing.assert_array_equal(res["roi_max"], data[:, :, 3:11, 1:7].max(axis=(2, 3)))

    res = load_workflow("workflows/radial_profile.py").run(
        path, tmp_path / "c.h5", client=client, params={"nbins": 8})
    y, x = np.indices((16, 16))
    r = np.hypot(y - 7.5, x - 7.5)
    ring = np.minimum((r / r.max() * 8).astype(int), 7)
    want = np.stack([[np.array([f[ring == k].mean() for k in range(8)]) for f in row]
                     for row in f64])
    assert res["profile"].shape == (3, 5, 8)
    np.testing.assert_allclose(res["profile"], want)

    res = load_workflow("workflows/centre_of_mass.py").run(path, tmp_path / "d.h5", client=client)
    total = f64.sum(axis=(2, 3))
    cy = (f64 * y).sum(axis=(2, 3)) / total
    cx = (f64 * x).sum(axis=(2, 3)) / total
    # float32 moments (see the workflow's docstring): far below a pixel
    np.testing.assert_allclose(res["com_x"], cx, rtol=0, atol=1e-4)
    np.testing.assert_allclose(res["com_y"], cy, rtol=0, atol=1e-4)
    np.testing.assert_allclose(res["com_intensity"], total, rtol=1e-6)

    res = load_workflow("workflows/mean_image.py").run(path, tmp_path / "e.h5", client=client)
    np.testing.assert_allclose(res["mean"], f64.mean(axis=(0, 1)))
    np.testing.assert_allclose(res["std"], f64.std(axis=(0, 1)))


# output file -----------------------------------------------------------------------


def test_output_layout_and_provenance(make_scan, client, tmp_path, unchanged):
    path, data = make_scan((3, 4), (5, 5))
    unchanged(path)
    out = tmp_path / "o.h5"
    load_workflow("workflows/frame_sum.py").run(path, out, client=client, params={"y1": "3"})
    with h5py.File(out, "r") as f:
        assert f["entry"].attrs["NX_class"] == "NXentry"
        g = f["entry/frame_sum"]
        assert g.attrs["NX_class"] == "NXprocess"
        assert g.attrs["workflow"] == "frame_sum"
        assert g.attrs["input_file"] == str(path)
        assert g.attrs["data"] == DATA and KEY in g.attrs["keys"]
        assert '"y1": 3' in g.attrs["parameters"]
        assert g.attrs["status"] == "complete"
        assert g.attrs["start_time"] <= g.attrs["end_time"]
        assert g.attrs["framebag_version"]
        assert g["done"].shape == (3, 4) and g["done"][()].all()
        assert g["total"].shape == (3, 4) and g["brightest"].shape == (5, 5)


def test_existing_output_is_refused_without_overwrite(make_scan, client, tmp_path):
    path, _ = make_scan((2, 2), (3, 3))
    out = tmp_path / "o.h5"
    wf = load_workflow("workflows/frame_sum.py")
    wf.run(path, out, client=client)
    with pytest.raises(FramebagError, match="exists; pass --overwrite"):
        wf.run(path, out, client=client)
    wf.run(path, out, client=client, overwrite=True)


# command line ----------------------------------------------------------------------


def test_cli_end_to_end_with_default_output_path(make_scan, tmp_path, unchanged):
    path, data = make_scan((3, 4), (12, 10))
    unchanged(path)
    proc = subprocess.run(
        [sys.executable, "-m", "framebag.cli", "run", "workflows/frame_sum.py", str(path),
         "--set", "y0=2", "--set", "y1=9"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = path.with_name(f"{path.stem}_frame_sum.h5")
    assert str(out) in proc.stderr
    assert "Traceback" not in proc.stderr
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["entry/frame_sum/roi"][()],
                                      data[:, :, 2:9].sum(axis=(2, 3)))


def test_cli_bad_parameter_is_one_sentence(make_scan, capsys):
    path, _ = make_scan((2, 2), (3, 3))
    rc = main(["run", "workflows/frame_sum.py", str(path), "--set", "nope=1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "unknown parameter 'nope'" in err and "y0, y1" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_only_the_driver_writes_and_workers_read_the_input_read_only(make_scan, client,
                                                                      tmp_path, unchanged):
    """Each frame asks its worker process which files it has open, and how."""
    path, _ = make_scan((3, 4), (5, 5))
    unchanged(path)
    out = tmp_path / "o.h5"
    wf = Workflow("spy", data=DATA, keys=[KEY])

    @wf.frame
    def worker_files(frame, *, out_path="", in_path=""):
        import os

        import psutil

        files = {f.path: f.mode for f in psutil.Process().open_files()}
        return np.array([os.getpid(), out_path in files, files.get(in_path, "-") == "r"])

    res = wf.run(path, out, client=client, params={"out_path": str(out), "in_path": str(path)})
    pids, out_open, in_read_only = res["worker_files"].reshape(-1, 3).T
    worker_pids = set(client.run(lambda: __import__("os").getpid()).values())
    assert set(pids) <= worker_pids and len(worker_pids) == 2
    assert not out_open.any()
    assert in_read_only.all()


def test_key_follower_counts_frames_with_some_keys_set(make_scan):
    from framebag.keys import KeyFollower

    a = np.zeros((3, 4), dtype=bool)
    a[0] = True
    b = np.zeros((3, 4), dtype=bool)
    b[:2, :2] = True
    path, _ = make_scan((3, 4), (2, 2), complete=a, extra_keys=[b])
    follower = KeyFollower(path, DATA, [KEY, "entry/keys/key_2"])
    np.testing.assert_array_equal(follower.poll(), a & b)
    assert follower.seen == int((a | b).sum()) == 6


def test_a_client_that_is_not_the_default_one(make_scan, tmp_path):
    """workflow.run(client=c) uses c, even when another client is the default."""
    from distributed import Client, LocalCluster

    path, data = make_scan((4, 5), (3, 3))
    wf = Workflow("nodefault", data=DATA, keys=[KEY])
    wf.frame(lambda frame: frame.sum(), name="total")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster:
        with Client(cluster, set_as_default=False) as c:
            res = wf.run(path, tmp_path / "o.h5", client=c, partition_bytes=data[0, 0].nbytes)
    np.testing.assert_array_equal(res["total"], data.sum(axis=(2, 3)))
