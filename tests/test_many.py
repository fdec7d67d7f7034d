"""Many scans in one command: one cluster for all, a line per scan, failures named, none stops
the rest (``framebag run WF a.h5 b.h5 ...``, ``Workflow.run_many``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import framebag
from framebag import FramebagError, Workflow

from .conftest import DATA, KEY, write_scan

ROOT = Path(__file__).resolve().parents[1]
FRAME_SUM = ROOT / "workflows" / "frame_sum.py"


def _cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, DASK_LOGGING__DISTRIBUTED="error")
    return subprocess.run([sys.executable, "-m", "framebag.cli", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _expected(data: np.ndarray) -> dict[str, np.ndarray]:
    return {"total": data.sum(axis=(-2, -1)), "roi": data[..., 0:10, :].sum(axis=(-2, -1)),
            "brightest": data.max(axis=(0, 1))}


def _check_output(path: Path, data: np.ndarray) -> None:
    with h5py.File(path, "r") as f:
        g = f["entry/frame_sum"]
        for name, want in _expected(data).items():
            np.testing.assert_array_equal(g[name][()], want, err_msg=f"{path}: {name}")
        assert g["done"][()].all(), path


def _spoil(path: Path, unchanged) -> None:
    """Replace a scan by what a failed copy leaves: bytes that are not HDF5."""
    path.write_bytes(b"partial copy, not HDF5\n" * 64)
    unchanged(path)  # broken on purpose; framebag must not touch it either


def test_three_scans_one_not_hdf5_on_one_local_cluster(tmp_path, make_scan, unchanged):
    """A quoted glob of 3 scans, the middle one not HDF5: the other two are right, the exit
    is non-zero, the summary names the broken one with its reason, one cluster served all."""
    scans = [make_scan((4, 5), (16, 16), seed=s) for s in range(3)]  # scan0.h5 .. scan2.h5
    broken = scans[1][0]
    _spoil(broken, unchanged)
    outdir = tmp_path / "out"
    outdir.mkdir()
    res = _cli("run", str(FRAME_SUM), str(tmp_path / "scan*.h5"), "-o", str(outdir),
               cwd=tmp_path)
    err = res.stderr
    assert res.returncode != 0, err
    assert "Traceback" not in err, err
    _check_output(outdir / "scan0_frame_sum.h5", scans[0][1])
    _check_output(outdir / "scan2_frame_sum.h5", scans[2][1])
    assert not (outdir / "scan1_frame_sum.h5").exists()
    assert sorted(p.name for p in outdir.iterdir()) == ["scan0_frame_sum.h5",
                                                        "scan2_frame_sum.h5"]
    # a line per scan, in order, then the summary naming the broken one with its reason
    lines = err.splitlines()
    per_scan = [ln for ln in lines if ln.startswith("framebag: scan ")]
    assert [ln.split(",")[0].split(":")[1].strip() for ln in per_scan] == [
        "scan 1 of 3", "scan 2 of 3 failed", "scan 3 of 3"], per_scan
    summary = err[err.index("framebag: error: "):]
    assert summary.startswith("framebag: error: 1 of 3 scans failed (2 done"), summary
    named = [ln.strip() for ln in summary.splitlines()[1:]]
    assert named == [f"{broken}: input file {str(broken)!r} is not an HDF5 file"], named
    assert "scan0" not in summary and "scan2" not in summary, summary
    # one cluster: start_client announces its dashboard once per start
    assert err.count("dashboard") == 1, err


MARKED = 7777

FAILING = f'''
from framebag import Workflow

workflow = Workflow("marked", data="{DATA}", keys=["{KEY}"])


@workflow.frame
def total(frame):
    if frame.max() == {MARKED}:
        raise ValueError("marked frame")
    return frame.sum()
'''


def _marked_scans(tmp_path: Path, n: int = 3, marked: int = 1) -> list[tuple[Path, np.ndarray]]:
    out = []
    rng = np.random.default_rng(5)
    for i in range(n):
        data = rng.integers(0, 1000, size=(3, 4, 8, 8)).astype("uint16")
        if i == marked:
            data[1, 2, 3, 3] = MARKED
        out.append((write_scan(tmp_path / f"m{i}.h5", data, 2), data))
    return out


def test_run_many_python_maps_each_input_to_results_or_error(tmp_path, client, unchanged):
    """A function error in one scan: the mapping holds its FramebagError, the others' results."""
    wf_file = tmp_path / "marked.py"
    wf_file.write_text(FAILING)
    wf = framebag.load_workflow(wf_file)
    scans = _marked_scans(tmp_path)
    for p, _ in scans:
        unchanged(p)
    outdir = tmp_path / "outs"
    outdir.mkdir()
    res = wf.run_many([p for p, _ in scans], outdir, client=client)
    assert list(res) == [p for p, _ in scans]
    assert set(res.failed) == {scans[1][0]}
    err = res.failed[scans[1][0]]
    assert isinstance(err, FramebagError) and "'total' failed on frame (1, 2)" in str(err), err
    for path, data in (scans[0], scans[2]):
        np.testing.assert_array_equal(res[path]["total"], data.sum(axis=(-2, -1)))
        assert res[path].output == outdir / f"{path.stem}_marked.h5"
        assert res[path].done.all()
    assert set(res.succeeded) == {scans[0][0], scans[2][0]}
    assert res.outputs[scans[1][0]] == outdir / "m1_marked.h5"


def test_resume_and_overwrite_apply_to_each_output(tmp_path, client, unchanged):
    """Outputs next to the inputs: a second run (of a glob that matches the outputs too, which
    are left out) without a flag fails each scan (exists); with
    --resume the one deleted is made and the others are kept; with --overwrite all are remade."""
    wf = Workflow("sums", data=DATA, keys=[KEY])

    @wf.frame
    def total(frame):
        return frame.sum()

    scans = _marked_scans(tmp_path, marked=-1)
    paths = [p for p, _ in scans]
    for p in paths:
        unchanged(p)
    first = wf.run_many(paths, client=client)
    assert not first.failed
    outs = [p.with_name(f"{p.stem}_sums.h5") for p in paths]
    assert [first[p].output for p in paths] == outs
    # a glob over the directory now matches the outputs too: they are left out, not run
    matched = sorted(tmp_path.glob("m*.h5"))
    assert len(matched) == 6
    again = wf.run_many(matched, client=client)
    assert list(again) == paths and set(again.failed) == set(paths)
    assert all("exists" in str(e) for e in again.failed.values())
    outs[1].unlink()
    resumed = wf.run_many(paths, client=client, resume=True)
    assert not resumed.failed
    assert [resumed[p].stats["resumed"] for p in paths] == [12, 0, 12]
    assert [resumed[p].stats["processed"] for p in paths] == [0, 12, 0]
    for p, data in scans:
        np.testing.assert_array_equal(resumed[p]["total"], data.sum(axis=(-2, -1)))
    inodes = [o.stat().st_ino for o in outs]
    remade = wf.run_many(paths, client=client, overwrite=True)
    assert [remade[p].stats["processed"] for p in paths] == [12, 12, 12]
    assert all(o.stat().st_ino != i for o, i in zip(outs, inodes))  # each replaced


@pytest.mark.parametrize("argv, says", [
    (["run", "wf.py", "a.h5", "nope.h5", "b.h5"], "input file 'nope.h5' does not exist"),
    (["run", "wf.py", "a.h5", "z*.h5"], "INPUT pattern 'z*.h5' matches no file"),
    (["run", "wf.py", "a.h5", "b.h5", "-o", "outs"], "output directory 'outs' does not exist"),
    (["run", "wf.py", "a.h5", "d/a.h5", "-o", "."], "would both write"),
    (["run", "wf.py", "a.h5", "b.h5", "--set", "nope=1"], "nope"),
])
def test_bad_lists_of_inputs_fail_before_any_scan(tmp_path, argv, says):
    (tmp_path / "wf.py").write_text(
        f'from framebag import Workflow\nworkflow = Workflow("w", data="{DATA}", keys=["{KEY}"])\n'
        '@workflow.frame\ndef total(frame, *, k=1):\n    return frame.sum()\n')
    (tmp_path / "d").mkdir()
    for name in ("a.h5", "b.h5", "d/a.h5"):
        write_scan(tmp_path / name, np.ones((2, 2, 4, 4), "uint16"), 2)
    out = _cli(*argv, cwd=tmp_path)
    assert out.returncode != 0
    assert says in " ".join(out.stderr.split()), out.stderr
    assert out.stderr.startswith("framebag: error: ") and out.stderr.count("\n") == 1, out.stderr
    assert not list(tmp_path.glob("*_w.h5")) and not list(tmp_path.glob("d/*_w.h5"))
