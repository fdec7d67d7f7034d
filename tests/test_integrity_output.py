"""The output holds data, never code, and a damaged output fails loudly, in bounded time.

Real outputs of real runs, damaged with real byte flips at offsets HDF5 itself
reports (chunk addresses, object header addresses); ``--resume`` is the real
CLI in a subprocess. The subprocess ``timeout=`` is only a guard against a hang.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from framebag import Fold, FramebagError, load_workflow
from framebag.folds import BUILTIN, histogram
from framebag.output import OutputFile, Schema, _read_checkpoint

WF = '''
import os
import time

import numpy as np

from framebag import Workflow

GATE = {gate!r}  # the last frame waits until this file exists (see the finished fixture)

workflow = Workflow("integ", data="entry/data/data", keys=["entry/keys/key_1"])


@workflow.frame
def total(frame, index):
    if index == (19, 19):
        while not os.path.exists(GATE):
            time.sleep(0.01)
    return frame.sum()


@workflow.frame(fold="max")
def brightest(frame):
    return frame


@workflow.frame(fold="sum")
def grand(frame):
    return frame.astype(np.int64).sum()


@workflow.frame(fold="mean")
def mean_image(frame):
    return frame


@workflow.frame(fold="var")
def var_total(frame):
    return frame.sum()


@workflow.frame(fold="std")
def std_image(frame):
    return frame


@workflow.frame(fold="min")
def darkest(frame):
    return frame


@workflow.frame(fold="histogram", bins=16, range=(0, 1000))
def hist(frame):
    return frame
'''

HANG_GUARD = 180  # seconds; a hang guard only, never a speed assertion


@pytest.fixture
def job(tmp_path, make_scan):
    wf = tmp_path / "integ.py"
    gate = tmp_path / "gate"
    gate.touch()  # open: only the finished fixture closes it
    wf.write_text(WF.format(gate=str(gate)))
    path, data = make_scan((20, 20), (8, 8))
    return wf, path, data


@pytest.fixture
def finished(job, client, tmp_path):
    """A real output of a finished run, with two commits or more (both slots used).

    The last frame waits on a gate that opens once a first commit shows in the
    output, so the older slot holds fewer frames than the newest.
    """
    wf, path, data = job
    out = tmp_path / "out.h5"
    gate = tmp_path / "gate"
    gate.unlink()

    def open_after_first_commit() -> None:
        while not gate.exists():
            try:
                with h5py.File(out, "r", swmr=True) as f:
                    if f["entry/integ/done"][()].any():
                        gate.touch()
            except (OSError, KeyError):
                pass
            time.sleep(0.02)

    opener = threading.Thread(target=open_after_first_commit, daemon=True)
    opener.start()
    res = load_workflow(wf).run(path, out, client=client, partition_bytes=1280,
                                commit_interval=0)
    opener.join()
    assert res.done.all()
    return wf, path, data, out, res


def resume_cli(wf: Path, path: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "framebag.cli", "run", str(wf), str(path), "-o", str(out),
         "--resume", "--profile", "local"],
        capture_output=True, text=True, timeout=HANG_GUARD, cwd=out.parent,
    )


def one_sentence(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode not in (0, None), proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def flip(path: Path, offset: int, n: int = 4) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        old = fh.read(n)
        fh.seek(offset)
        fh.write(bytes(b ^ 0xA5 for b in old))


def chunk_offset(path: Path, name: str) -> int:
    """The file offset of the middle of the first stored chunk of dataset ``name``."""
    with h5py.File(path, "r") as f:
        info = f[name].id.get_chunk_info(0)
    return info.byte_offset + info.size // 2


def identical(a, b) -> bool:
    """Same types, dtypes, shapes and bytes, all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(identical(a[k], b[k]) for k in a)
    if isinstance(a, (np.ndarray, np.generic)):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    return a == b or (a != a and b != b)


# no code from data ---------------------------------------------------------------


def _accumulators() -> dict[str, object]:
    """Accumulators of every built-in fold, made the ways the engine makes them."""
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 1000, (9, 5, 4)).astype(np.uint16)
    floats = rng.normal(size=(9, 3)).astype(np.float32)
    accs: dict[str, object] = {}
    for name in ("sum", "mean", "var", "std", "min", "max"):
        fold = BUILTIN[name]()
        a = None
        for v in frames[:4]:  # per frame (binop)
            a = fold.binop(a, v)
        b = fold.add_many(None, frames[4:])  # batched
        accs[f"{name}_frames"] = fold.combine(a, b)
        s = None
        for v in floats[:, 0]:  # scalar values: 0-d arrays and numpy scalars
            s = fold.binop(s, v)
        accs[f"{name}_scalars"] = fold.combine(s, fold.add_many(None, floats[:5, 1]))
    hist = histogram(8, (0, 1000))
    accs["histogram"] = hist.combine(hist.binop(None, frames[0]), hist.binop(None, frames[1]))
    accs["custom"] = {"n": 7, "parts": [np.float32(1.5), (np.arange(3), 2.5 + 1j)],
                      "ok": True, "big": np.full((2, 3), -1, dtype=">i4"),
                      "empty": np.zeros((0, 4))}
    return accs


def test_builtin_fold_state_round_trips_bit_identical(tmp_path):
    accs = _accumulators()
    schema = Schema({name: (False, (1,), np.float64) for name in accs})
    schema.accs.update(accs)
    schema["total"] = (True, (), np.dtype(np.int64))
    out = OutputFile.create(tmp_path / "o.h5", "w", (4, 5), schema, {"workflow": "w"})
    later = dict(accs, custom={**accs["custom"], "big": np.full((7, 1), 3, dtype=">i4")})
    out.commit(np.arange(3), {}, accs, [])
    out.commit(np.arange(3, 11), {}, {**later, "sum_frames": None}, [])  # arrays may resize
    out.close()
    with h5py.File(tmp_path / "o.h5", "r") as f:  # a plain h5py user can read the state
        ck = f["entry/w/checkpoint"]
        assert ck["slot1/accs/histogram"][()].tolist() == accs["histogram"].tolist()
        state = _read_checkpoint(ck)
    assert state["generation"] == 2 and state["slot"] == 1
    assert np.unpackbits(state["done"], count=20).nonzero()[0].tolist() == list(range(11))
    assert "sum_frames" not in state["accs"]
    for name, acc in later.items():
        if name != "sum_frames":
            assert identical(state["accs"][name], acc), name


def test_an_accumulator_that_changes_its_structure_is_one_sentence(tmp_path):
    schema = Schema({"f": (False, (), np.float64)})
    schema.accs["f"] = (1, np.zeros(3))
    out = OutputFile.create(tmp_path / "o.h5", "w", (4,), schema, {"workflow": "w"})
    with pytest.raises(FramebagError, match="function 'f' changed its accumulator.*float32"):
        out.commit(np.arange(2), {}, {"f": (2, np.zeros(3, dtype=np.float32))}, [])
    out.close()


@pytest.mark.parametrize("initial, what", [
    (lambda: {"seen": set()}, "set"),
    (lambda: [np.array(["a", "b"])], "dtype <U1"),
    (lambda: (1, object()), "object"),
    (lambda: {1: np.zeros(2)}, "key of type int"),
])
def test_a_custom_fold_whose_state_is_not_plain_arrays_fails_at_the_probe(
        make_scan, client, tmp_path, initial, what):
    from framebag import Workflow

    path, _ = make_scan((4, 4))
    wf = Workflow("custom", data="entry/data/data", keys=["entry/keys/key_1"])
    fold = Fold("odd", initial, lambda acc, v: acc, lambda a, b: a)
    wf.frame(lambda frame: frame, fold=fold, name="keep")
    out = tmp_path / "out.h5"
    with pytest.raises(FramebagError) as info:
        wf.run(path, out, client=client)
    msg = str(info.value)
    assert "fold 'odd' of function 'keep'" in msg and what in msg and "\n" not in msg
    assert not out.exists()


class _Payload:
    """Unpickling this creates the file at ``marker``: code run from data."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_pickle_in_the_checkpoint_is_never_run(finished, tmp_path):
    wf, path, _, out, _ = finished
    marker = tmp_path / "pwned"
    blob = pickle.dumps(_Payload(str(marker)))
    pickle.loads(blob).close()  # the payload works: loading it creates the file
    assert marker.exists()
    marker.unlink()
    with h5py.File(out, "r+") as f:  # the layout framebag used to unpickle, stamped valid
        g = f["entry/integ"]
        del g["checkpoint"]
        ck = g.create_group("checkpoint")
        for slot in ("slot0", "slot1"):
            ck.create_dataset(slot, data=np.frombuffer(blob, dtype=np.uint8))

        ck.create_dataset("meta", data=np.array([[5, len(blob), zlib.crc32(blob)]] * 2))
        for name in ("slot0/done", "slot0/meta", "slot0/accs"):  # and beside the new names
            ck.create_dataset(name.replace("/", "_"), data=np.frombuffer(blob, dtype=np.uint8))
    proc = resume_cli(wf, path, out)
    one_sentence(proc, str(out), "checkpoint", "--overwrite")
    assert not marker.exists()


def test_resume_of_a_finished_run_rewrites_bit_identical_results(finished, client):
    wf, path, _, out, res = finished
    before = {name: res[name] for name in res}  # results are read from the file when looked up
    again = load_workflow(wf).run(path, out, client=client, resume=True)
    assert again.stats["processed"] == 0
    for name, value in before.items():
        assert identical(again[name], value), name


# integrity of results ------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["total", "brightest", "done", "mean_image"])
def test_flipped_bytes_in_a_result_fail_on_read_and_on_resume(finished, dataset):
    wf, path, _, out, _ = finished
    name = f"entry/integ/{dataset}"
    flip(out, chunk_offset(out, name))
    with h5py.File(out, "r") as f, pytest.raises(OSError):
        f[name][()]
    proc = resume_cli(wf, path, out)
    one_sentence(proc, str(out), f"/{name}", "damaged")


def test_a_scalar_fold_result_is_checksummed_too(finished):
    _, _, _, out, res = finished
    with h5py.File(out, "r") as f:
        ds = f["entry/integ/grand"]
        addr = h5py.h5o.get_info(ds.id).addr
        assert ds[()] == res["grand"]
    data = out.read_bytes()
    pos = data.find(np.int64(res["grand"]).tobytes(), addr)  # compact: in its object header
    assert pos > 0
    flip(out, pos, 2)
    with h5py.File(out, "r") as f, pytest.raises((OSError, KeyError)):
        f["entry/integ/grand"][()]


def _slot_gens(out: Path) -> list[int]:
    with h5py.File(out, "r") as f:
        return [int(f[f"entry/integ/checkpoint/slot{i}/meta"][0]) for i in (0, 1)]


def test_a_damaged_newest_slot_falls_back_to_the_older_and_resume_is_exact(finished, client):
    wf, path, data, out, _ = finished
    gens = _slot_gens(out)
    newest, older = int(np.argmax(gens)), int(np.argmin(gens))
    assert min(gens) > 0
    with h5py.File(out, "r") as f:
        state = _read_checkpoint(f["entry/integ/checkpoint"])
    assert state["slot"] == newest
    flip(out, chunk_offset(out, f"entry/integ/checkpoint/slot{newest}/accs/brightest"))
    with h5py.File(out, "r") as f:
        state = _read_checkpoint(f["entry/integ/checkpoint"])
        older_done = np.unpackbits(state["done"], count=400).sum()
    assert state["slot"] == older and older_done < 400
    res = load_workflow(wf).run(path, out, client=client, resume=True)
    assert res.stats["processed"] == 400 - older_done
    assert res.done.all()
    np.testing.assert_array_equal(res["total"], data.sum(axis=(2, 3)))
    np.testing.assert_array_equal(res["brightest"], data.max(axis=(0, 1)))
    np.testing.assert_array_equal(res["darkest"], data.min(axis=(0, 1)))
    assert res["grand"] == data.astype(np.int64).sum()
    np.testing.assert_array_equal(res["hist"], np.histogram(data, bins=16, range=(0, 1000))[0])
    np.testing.assert_allclose(res["mean_image"], data.mean(axis=(0, 1)), rtol=1e-12)


@pytest.mark.parametrize("which", ["newest", "older"])
def test_a_damaged_done_mask_in_one_slot_is_written_over_on_resume(finished, client, which):
    """The slot a resumed run writes next may be the damaged one: its packed done mask
    fills a fraction of its chunk, which HDF5 would read (and fail on) to write it."""
    wf, path, data, out, _ = finished
    gens = _slot_gens(out)
    damaged = int(np.argmax(gens) if which == "newest" else np.argmin(gens))
    flip(out, chunk_offset(out, f"entry/integ/checkpoint/slot{damaged}/done"))
    res = load_workflow(wf).run(path, out, client=client, resume=True)
    assert res.done.all()
    np.testing.assert_array_equal(res["total"], data.sum(axis=(2, 3)))
    assert res["grand"] == data.astype(np.int64).sum()
    np.testing.assert_allclose(res["mean_image"], data.mean(axis=(0, 1)), rtol=1e-12)
    with h5py.File(out, "r") as f:
        state = _read_checkpoint(f["entry/integ/checkpoint"])
        assert f["entry/integ/done"][()].all()
    assert np.unpackbits(state["done"], count=400).all()


@pytest.mark.parametrize("damage", ["both_slots", "no_group", "meta_of_both"])
def test_an_unreadable_checkpoint_stops_resume_and_offers_overwrite(finished, damage):
    wf, path, _, out, _ = finished
    if damage == "no_group":
        with h5py.File(out, "r+") as f:
            del f["entry/integ/checkpoint"]
    else:
        leaf = "meta" if damage == "meta_of_both" else "accs/brightest"
        for i in (0, 1):
            flip(out, chunk_offset(out, f"entry/integ/checkpoint/slot{i}/{leaf}"))
    before = out.read_bytes()
    proc = resume_cli(wf, path, out)
    one_sentence(proc, str(out), "checkpoint", "--overwrite")
    assert out.read_bytes() == before  # refused before anything was written


def _flag_open_for_write(out: Path) -> None:
    """Leave ``out`` flagged "open for write", as a SIGKILLed SWMR writer does."""
    code = ("import h5py, os, sys\n"
            "f = h5py.File(sys.argv[1], 'r+', libver=('v110', 'latest'))\n"
            "f.swmr_mode = True\nf.flush()\nos._exit(0)\n")
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, timeout=HANG_GUARD)
    with pytest.raises(OSError, match="already open for write"):
        h5py.File(out, "r")


def _spot(out: Path, where: str) -> int:
    if where.startswith("superblock"):
        return {"superblock_eof": 28, "superblock_root": 36, "superblock_sum": 44}[where]
    with h5py.File(out, "r") as f:
        obj = f[where] if where != "/" else f["/"]
        return h5py.h5o.get_info(obj.id).addr + 6  # inside the object header's prefix


@pytest.mark.parametrize("flagged", [False, True], ids=["closed", "killed_writer"])
@pytest.mark.parametrize("where", ["superblock_eof", "superblock_root", "superblock_sum", "/",
                                   "entry/integ", "entry/integ/total",
                                   "entry/integ/checkpoint/slot1/meta"])
def test_damaged_metadata_fails_resume_and_never_hangs(finished, where, flagged):
    wf, path, _, out, _ = finished
    if flagged:
        _flag_open_for_write(out)
    flip(out, _spot(out, where) if not flagged or where.startswith("superblock")
         else _spot_flagged(out, where))
    proc = resume_cli(wf, path, out)
    one_sentence(proc, str(out))


def _spot_flagged(out: Path, where: str) -> int:
    """Object header addresses of a flagged file, read the way framebag reads it."""
    from framebag.hdf5 import open_swmr_read

    with open_swmr_read(out) as f:
        return h5py.h5o.get_info(f[where].id).addr + 6
