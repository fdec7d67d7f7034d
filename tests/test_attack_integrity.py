"""Breaks an outside tester found: each was a silently wrong result before its fix.

Real files only: a virtual dataset whose source file is really missing on disk,
and real runs on a real LocalCluster for the fold whose combine loses frames.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from framebag import FramebagError, Workflow
from framebag.cli import main
from framebag.folds import Fold

from .conftest import DATA, KEY


def test_a_virtual_dataset_with_a_missing_source_is_refused(tmp_path, unchanged, capsys):
    """HDF5 reads the frames of a missing VDS source as the fill value: zeros, exit 0."""
    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset("data", data=rng.integers(1, 100, (8, 4, 4), dtype=np.uint16))
    layout = h5py.VirtualLayout(shape=(8, 4, 4), dtype=np.uint16)
    layout[:4] = h5py.VirtualSource("a.h5", "data", shape=(8, 4, 4))[:4]
    layout[4:] = h5py.VirtualSource("gone.h5", "data", shape=(8, 4, 4))[4:]
    scan = tmp_path / "scan.h5"
    with h5py.File(scan, "w", libver="latest") as f:
        f.create_virtual_dataset(DATA, layout, fillvalue=0)
        f.create_dataset(KEY, data=np.arange(1, 9, dtype=np.int32))
    unchanged(scan)
    rc = main(["run", "workflows/frame_sum.py", str(scan), "-o", str(tmp_path / "o.h5"),
               "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "'gone.h5'" in err and DATA in err and str(scan) in err, err
    assert not (tmp_path / "o.h5").exists()


@pytest.mark.parametrize("value", [[1, 2.5], (1, 2.5), 2**70], ids=["list", "tuple", "bigint"])
def test_a_list_or_int_that_changes_dtype_is_named_not_cast(value):
    """[1, 2.5] after [1, 2] was stored as [1, 2]; an int past int64 failed unnamed."""
    frames = np.arange(12 * 16, dtype="uint16").reshape(12, 4, 4)
    wf = Workflow("dt", data=DATA, keys=[KEY])
    usual = [1, 2] if isinstance(value, list) else (1, 2) if isinstance(value, tuple) else 1

    @wf.frame
    def value_of(frame, index):
        return value if index == (2, 1) else usual

    with pytest.raises(FramebagError) as info:
        wf.apply(frames, 0, (3, 4), {})
    msg = str(info.value)
    assert "'value_of'" in msg and "(2, 1)" in msg, msg


def test_a_fold_whose_combine_returns_none_stops_the_run(make_scan, client, tmp_path):
    """None means "no frame yet": a combine returning it made the result 0, exit 0."""
    path, data = make_scan((3, 4), (4, 4))
    lossy = Fold("lossy", initial=lambda: 0.0, binop=lambda a, v: a + v,
                 combine=lambda a, b: None, finalize=lambda a: a)
    wf = Workflow("cn", data=DATA, keys=[KEY])

    @wf.frame(fold=lossy)
    def total(frame):
        return float(frame.sum())

    with pytest.raises(FramebagError, match=r"'total'.*None"):
        wf.run(path, tmp_path / "o.h5", client=client, partition_bytes=data[0, 0].nbytes * 3)


def test_resume_refuses_a_result_dataset_of_another_dtype(make_scan, client, tmp_path):
    """An output crafted from a real one (attributes copied, a result replaced by int8)
    resumed with exit 0 and sums wrapped into int8."""
    path, data = make_scan((3, 4), (4, 4))
    wf = Workflow("cr", data=DATA, keys=[KEY])

    @wf.frame
    def total(frame):
        return frame.sum()

    out = tmp_path / "o.h5"
    wf.run(path, out, client=client)
    with h5py.File(out, "r+") as f:
        g = f["entry/cr"]
        attrs, values = dict(g["total"].attrs), g["total"][()]
        del g["total"], g["total_nxdata/total"]
        ds = g.create_dataset("total", data=values.astype(np.int8), chunks=True,
                              fletcher32=True)
        ds.attrs.update(attrs)
        g["total_nxdata/total"] = ds
    with pytest.raises(FramebagError, match=r"total.*int8.*--overwrite"):
        wf.run(path, out, client=client, resume=True)
    with h5py.File(out, "r") as f:
        assert f["entry/cr/total"].dtype == np.int8  # left as it was, not written to


def test_a_complex_stacked_result_is_written(make_scan, client, tmp_path):
    """A complex value (an FFT coefficient) failed with an h5py ValueError, exit 1."""
    path, data = make_scan((3, 4), (4, 4))
    wf = Workflow("cx", data=DATA, keys=[KEY])

    @wf.frame
    def coeff(frame):
        return np.fft.fft2(frame)[0, 1]

    res = wf.run(path, tmp_path / "o.h5", client=client)
    want = np.fft.fft2(data.astype(np.float64), axes=(-2, -1))[..., 0, 1]
    assert np.array_equal(res["coeff"], want)


@pytest.mark.parametrize("kind", ["external", "virtual"])
def test_o_naming_a_file_the_input_links_to_is_refused(tmp_path, capsys, kind):
    """-o src.h5 --overwrite, where the input's data is an external link (or a virtual
    source) into src.h5, replaced src.h5 and lost the scan's data."""
    import hashlib

    src = tmp_path / "src.h5"
    with h5py.File(src, "w") as f:
        f.create_dataset("data", data=np.arange(6 * 16, dtype=np.uint16).reshape(6, 4, 4))
    master = tmp_path / "master.h5"
    with h5py.File(master, "w", libver="latest") as f:
        if kind == "external":
            f[DATA] = h5py.ExternalLink("src.h5", "/data")
        else:
            layout = h5py.VirtualLayout(shape=(6, 4, 4), dtype=np.uint16)
            layout[:] = h5py.VirtualSource("src.h5", "data", shape=(6, 4, 4))
            f.create_virtual_dataset(DATA, layout, fillvalue=0)
        f.create_dataset(KEY, data=np.ones(6, dtype=np.int32))
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    rc = main(["run", "workflows/frame_sum.py", str(master), "-o", str(src), "--overwrite",
               "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert str(src) in err and "never written to" in err, err
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before


def test_the_lock_is_the_same_through_a_symlink_to_the_output(tmp_path):
    """A second run through a symlink to a held output met no lock of its own."""
    from framebag.lock import OutputLock, lock_path

    real = tmp_path / "real"
    real.mkdir()
    out = real / "out.h5"
    link = tmp_path / "link.h5"
    link.symlink_to(out)
    assert lock_path(link) == lock_path(out)
    first = OutputLock(out)
    first.acquire()
    try:
        with pytest.raises(FramebagError, match="in use by another framebag run"):
            OutputLock(link).acquire()
    finally:
        first.release()


@pytest.mark.parametrize("bad", ["scalar_key", "vlen_data", "object_refs"])
def test_a_scalar_key_or_non_numeric_data_is_one_sentence(tmp_path, capsys, bad):
    """A scalar key dataset gave an IndexError, object or vlen data a TypeError."""
    scan = tmp_path / "scan.h5"
    with h5py.File(scan, "w") as f:
        if bad == "vlen_data":
            ds = f.create_dataset(DATA, shape=(4, 3), dtype=h5py.vlen_dtype(np.uint16))
            for i in range(4):
                for j in range(3):
                    ds[i, j] = np.arange(i + j + 1, dtype=np.uint16)
        elif bad == "object_refs":
            ref = f.create_dataset("entry/other", data=np.arange(3)).ref
            f.create_dataset(DATA, data=np.array([[ref] * 3] * 4, dtype=h5py.ref_dtype))
        else:
            f.create_dataset(DATA, data=np.ones((4, 3, 2, 2), dtype=np.uint16))
        if bad == "scalar_key":
            f.create_dataset(KEY, data=1)
        else:
            f.create_dataset(KEY, data=np.ones(4, dtype=np.int32))
    rc = main(["run", "workflows/frame_sum.py", str(scan), "-o", str(tmp_path / "o.h5"),
               "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert str(scan) in err and (KEY if bad == "scalar_key" else DATA) in err, err
    assert not (tmp_path / "o.h5").exists()
