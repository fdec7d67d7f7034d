"""Several results from one call (``outputs=``) and declared results (``shape=``, ``dtype=``).

Real files and the session's real LocalCluster: each named output of a function
is a result of its own (``<function>_<key>``, its own fold, NXdata, @fold and
@units), equal to numpy; a dict with other keys, or a value unlike its
declaration, stops the run in one sentence; a function whose results are all
declared is never called in the driver process; a multi-output run resumes.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from framebag import Workflow, histogram, load_workflow

from .conftest import assert_one_sentence, run_cli, write_scan

HEAD = '''
import os
from pathlib import Path

import numpy as np

from framebag import Workflow, histogram

workflow = Workflow("multi", data="entry/data/data", keys=["entry/keys/key_1"])
'''

PER_FRAME = HEAD + '''

@workflow.frame(outputs={"mean": "stack", "rows": "stack", "total": "sum",
                         "hist": histogram(bins=10, range=(0, 1000)), "brightest": "max"},
                units={"mean": "counts", "rows": "counts"})
def stats(frame):
    return {"mean": frame.mean(), "rows": frame.sum(axis=1),
            "total": frame.astype(np.int64).sum(), "hist": frame, "brightest": frame}


@workflow.frame
def plain(frame):
    return frame.max()
'''

BATCHED = HEAD + '''

@workflow.frames(outputs={"mean": "stack", "rows": "stack", "total": "sum",
                          "hist": histogram(bins=10, range=(0, 1000)), "brightest": "max"},
                 units={"mean": "counts", "rows": "counts"})
def stats(frames):
    return {"mean": frames.mean(axis=(1, 2)), "rows": frames.sum(axis=2),
            "total": frames.astype(np.int64).sum(axis=(1, 2)), "hist": frames,
            "brightest": frames}


@workflow.frame
def plain(frame):
    return frame.max()
'''

SCAN = (6, 7)
FRAME = (9, 8)


@pytest.fixture
def scan(tmp_path, unchanged):
    """A 42-frame scan of random counts in [0, 1000); frame i has frame[0, 0] == i."""
    rng = np.random.default_rng(12)
    data = rng.integers(0, 1000, SCAN + FRAME).astype("uint16")
    data[..., 0, 0] = np.arange(np.prod(SCAN)).reshape(SCAN)
    path = write_scan(tmp_path / "in.h5", data, 2)
    unchanged(path)
    return path, data


@pytest.fixture
def profile(client, tmp_path):
    """A profile file that points the CLI at the session's LocalCluster."""
    path = tmp_path / "here.yaml"
    path.write_text(f"cluster: address\naddress: {client.scheduler.address}\n")
    return str(path)


def workflow_file(tmp_path: Path, source: str, name: str = "wf.py") -> Path:
    path = tmp_path / name
    path.write_text(source)
    return path


def check_stats(res, data: np.ndarray) -> None:
    """The results of ``stats`` (and ``plain``) against numpy over the whole scan."""
    np.testing.assert_allclose(res["stats_mean"], data.mean(axis=(2, 3)), rtol=1e-12)
    np.testing.assert_array_equal(res["stats_rows"], data.sum(axis=3, dtype=np.uint64))
    assert res["stats_total"] == data.astype(np.int64).sum()
    np.testing.assert_array_equal(res["stats_hist"],
                                  np.histogram(data, bins=10, range=(0, 1000))[0])
    np.testing.assert_array_equal(res["stats_brightest"], data.max(axis=(0, 1)))
    np.testing.assert_array_equal(res["plain"], data.max(axis=(2, 3)))


@pytest.mark.parametrize("source", [PER_FRAME, BATCHED], ids=["frame", "frames"])
def test_outputs_are_results_of_their_own_equal_to_numpy(scan, client, tmp_path, source):
    path, data = scan
    wf = load_workflow(workflow_file(tmp_path, source))
    assert list(wf.functions) == ["stats_mean", "stats_rows", "stats_total", "stats_hist",
                                  "stats_brightest", "plain"]
    out = tmp_path / "out.h5"
    res = wf.run(path, out, client=client)
    check_stats(res, data)
    assert res.done.all()
    with h5py.File(out, "r") as f:
        g = f["entry/multi"]
        folds = {n: g[n].attrs["fold"] for n in wf.functions}
        assert folds == {"stats_mean": "stack", "stats_rows": "stack", "stats_total": "sum",
                         "stats_hist": "histogram", "stats_brightest": "max", "plain": "stack"}
        assert g["stats_mean"].attrs["units"] == "counts"
        assert (g["stats_hist"].attrs["function"], g["stats_hist"].attrs["output"]) == \
            ("stats", "hist")
        assert g["plain"].attrs["function"] == "plain" and "output" not in g["plain"].attrs
        assert "units" not in g["stats_total"].attrs
        for name in wf.functions:  # each reachable from an NXdata group of its own
            assert g[f"{name}_nxdata"].attrs["signal"] == name
        np.testing.assert_array_equal(g["stats_hist_nxdata/bin_edges"][()],
                                      np.linspace(0, 1000, 11))


MISSING = HEAD + '''

@workflow.frame(outputs={"x": "stack", "y": "sum"})
def c(frame, index):
    if index == (4, 2):
        return {"x": 1.0}
    return {"x": 1.0, "y": 2.0}
'''

EXTRA = MISSING.replace('return {"x": 1.0}', 'return {"x": 1.0, "y": 2.0, "z": 3.0}')
NOT_A_DICT = MISSING.replace('return {"x": 1.0}', 'return 1.0')
BATCHED_MISSING = HEAD + '''

@workflow.frames(outputs={"x": "stack", "y": "sum"})
def c(frames, index):
    if (index == (4, 2)).all(axis=1).any():
        return {"x": frames.mean(axis=(1, 2))}
    return {"x": frames.mean(axis=(1, 2)), "y": frames.sum(axis=(1, 2))}
'''


@pytest.mark.parametrize("source, names", [
    (MISSING, ["function 'c'", "on frame (4, 2)", "['x', 'y']", "missing ['y']"]),
    (EXTRA, ["function 'c'", "on frame (4, 2)", "['x', 'y', 'z']", "extra ['z']"]),
    (NOT_A_DICT, ["function 'c'", "on frame (4, 2)", "float", "['x', 'y']"]),
    (BATCHED_MISSING, ["batched function 'c'", "for frames from (", "['x']",
                       "missing ['y']"]),
], ids=["missing", "extra", "not-a-dict", "batched-missing"])
def test_a_dict_with_other_keys_is_one_sentence(scan, profile, capsys, tmp_path, source,
                                                names):
    path, _ = scan
    wf = workflow_file(tmp_path, source)
    rc, err = run_cli(capsys, "run", str(wf), str(path), "-o", str(tmp_path / "o.h5"),
                      "--profile", profile, "--quiet", "--on-error", "skip")
    assert_one_sentence(rc, err, *names, "keys of outputs=")


DECLARED_WRONG = HEAD + '''

@workflow.frame(shape=(), dtype="float32")
def e(frame, index):
    m = np.float32(frame.mean())
    return m.astype(np.float64) if index == (3, 1) else m


@workflow.frame(outputs={"v": "stack", "s": "sum"}, shape={"v": (2,), "s": ()},
                dtype="int64")
def w(frame, index):
    v = np.zeros(3 if index == (2, 5) else 2, dtype=np.int64)
    return {"v": v, "s": np.int64(1)}
'''


@pytest.mark.parametrize("which, names", [
    ("e", ["function 'e'", "on frame (3, 1)", "declares shape () dtype float32",
           "float64"]),
    ("w", ["function 'w' (output 'v')", "on frame (2, 5)", "declares shape (2,) dtype int64",
           "shape (3,)"]),
])
def test_declared_and_actual_results_that_differ_are_one_sentence(scan, profile, capsys,
                                                                  tmp_path, which, names):
    path, _ = scan
    source = DECLARED_WRONG
    if which == "w":  # only the function under test disagrees with its declaration
        source = source.replace("index == (3, 1)", "False")
    else:
        source = source.replace("index == (2, 5)", "False")
    wf = workflow_file(tmp_path, source)
    rc, err = run_cli(capsys, "run", str(wf), str(path), "-o", str(tmp_path / "o.h5"),
                      "--profile", profile, "--quiet")
    assert_one_sentence(rc, err, *names, "shape= and dtype=")


OTHER_BYTE_ORDER = HEAD + '''

def order(index):  # big-endian on frames of even index sum (the first, probed, one too)
    return ">" if sum(index) % 2 == 0 else "<"


@workflow.frame(shape=(), dtype="float64")
def mean(frame, index):
    return np.asarray(frame.mean(), dtype=order(index) + "f8")


@workflow.frames(shape=(2,), dtype="int32")
def corners(frames):
    return frames[:, 0, :2].astype(">i4")


@workflow.frame(fold="sum", shape="frame", dtype="float64")
def total(frame):
    return frame.astype(">f8")


@workflow.frame
def probed(frame, index):
    return frame[0].astype(order(index) + "f4")


@workflow.frame(fold="ragged")
def rows(frame, index):
    return np.ones((int(frame[0, 1]) % 3, 2), dtype=order(index) + "f4") * frame[0, 2]
'''


def test_values_in_the_other_byte_order_are_the_same_dtype(scan, client, tmp_path):
    """``>f8`` where ``float64`` is declared (or was returned first) holds the same numbers:
    accepted, and stored in native order, equal to numpy."""
    path, data = scan
    wf = load_workflow(workflow_file(tmp_path, OTHER_BYTE_ORDER))
    res = wf.run(path, tmp_path / "out.h5", client=client)
    assert res.done.all()
    np.testing.assert_array_equal(res["mean"], data.mean(axis=(2, 3)))
    np.testing.assert_array_equal(res["corners"], data[:, :, 0, :2])
    np.testing.assert_array_equal(res["total"], data.astype(np.float64).sum(axis=(0, 1)))
    np.testing.assert_array_equal(res["probed"], data[:, :, 0].astype(np.float32))
    k = data[..., 0, 1].astype(int) % 3
    np.testing.assert_array_equal(res["rows"].counts, k)
    np.testing.assert_array_equal(res["rows"][1, 2], np.full((k[1, 2], 2), data[1, 2, 0, 2]))
    with h5py.File(tmp_path / "out.h5", "r") as f:
        g = f["entry/multi"]
        want = {"mean": "<f8", "corners": "<i4", "total": "<f8", "probed": "<f4"}
        assert {n: g[n].dtype.str for n in want} == want
        assert g["rows/data"].dtype.str == "<f4"


def test_another_dtype_in_another_byte_order_is_still_refused(scan, profile, capsys, tmp_path):
    path, _ = scan
    wf = workflow_file(tmp_path, HEAD + '''

@workflow.frame(shape=(), dtype="float32")
def e(frame):
    return np.asarray(frame.mean(), dtype=">f8")
''')
    rc, err = run_cli(capsys, "run", str(wf), str(path), "-o", str(tmp_path / "o.h5"),
                      "--profile", profile, "--quiet")
    assert_one_sentence(rc, err, "function 'e'", "dtype >f8", "declares shape () dtype float32")


NOT_IN_THE_DRIVER = HEAD + '''
DRIVER = os.getpid()  # the process that loads the workflow: the driver


def not_in_the_driver():
    if os.getpid() == DRIVER:
        raise RuntimeError("called in the driver process")


@workflow.frame(outputs={"mean": "stack", "total": "sum", "top": "max"},
                shape={"mean": (), "total": (), "top": "frame"},
                dtype={"mean": "float64", "total": "int64", "top": "uint16"})
def stats(frame):
    not_in_the_driver()
    return {"mean": frame.mean(), "total": frame.astype(np.int64).sum(), "top": frame}


@workflow.frames(shape=(2,), dtype="float32", fold="sum")
def corners(frames):
    not_in_the_driver()
    return frames[:, 0, :2].astype(np.float32)
'''

PROBED_TOO = NOT_IN_THE_DRIVER + '''

@workflow.frame
def plain(frame):
    return frame.max()
'''


@pytest.mark.parametrize("source", [NOT_IN_THE_DRIVER, PROBED_TOO],
                         ids=["all-declared", "one-probed"])
def test_declared_functions_are_never_called_in_the_driver(scan, client, tmp_path, source):
    path, data = scan
    wf = load_workflow(workflow_file(tmp_path, source))
    with pytest.raises(RuntimeError, match="driver process"):  # the workflow's own check
        wf.functions["corners"].func(data[0, :2])
    res = wf.run(path, tmp_path / "out.h5", client=client)
    assert res.done.all()
    np.testing.assert_allclose(res["stats_mean"], data.mean(axis=(2, 3)), rtol=1e-12)
    assert res["stats_total"] == data.astype(np.int64).sum()
    np.testing.assert_array_equal(res["stats_top"], data.max(axis=(0, 1)))
    np.testing.assert_array_equal(res["corners"],
                                  data[:, :, 0, :2].astype(np.float32).sum(axis=(0, 1)))
    if "plain" in wf.functions:
        np.testing.assert_array_equal(res["plain"], data.max(axis=(2, 3)))


RESUMED = PER_FRAME.replace('''def stats(frame):
''', '''def stats(frame):
    if Path(__file__).with_suffix(".fail").exists() and frame[0, 0] % 3 == 0:
        raise RuntimeError("a bad frame")
''') + '''

@workflow.frames(outputs={"first": "stack", "sum": "sum"}, shape=(),
                 dtype={"first": "uint16", "sum": "int64"})  # declared: not probed
def pair(frames):
    if Path(__file__).with_suffix(".fail").exists() and (frames[:, 0, 0] % 5 == 1).any():
        raise RuntimeError("a bad frame in the stack")
    return {"first": frames[:, 0, 0], "sum": frames.astype(np.int64).sum(axis=(1, 2))}
'''


def test_a_multi_output_run_skips_per_frame_and_resumes_to_numpy(scan, client, tmp_path):
    path, data = scan
    wf_path = workflow_file(tmp_path, RESUMED)
    gate = wf_path.with_suffix(".fail")
    gate.touch()  # the first run: frames i % 3 == 0 fail in stats, i % 5 == 1 in pair
    out = tmp_path / "out.h5"
    wf = load_workflow(wf_path)
    res = wf.run(path, out, client=client, on_error="skip")
    flat = np.arange(np.prod(SCAN))
    bad = (flat % 3 == 0) | (flat % 5 == 1)
    np.testing.assert_array_equal(res.done.ravel(), ~bad)
    # one error per frame skipped, naming the function (not one per output)
    assert len(res.errors) == bad.sum()
    assert {fn for _, fn, _ in res.errors} == {"stats", "pair"}
    ok = data.reshape(-1, *FRAME)[~bad]
    assert res["stats_total"] == ok.astype(np.int64).sum()  # only the frames done
    assert res["pair_sum"] == ok.astype(np.int64).sum()

    gate.unlink()  # the cause is fixed: resume does the frames left
    res = load_workflow(wf_path).run(path, out, client=client, resume=True)
    assert res.done.all()
    check_stats(res, data)
    np.testing.assert_array_equal(res["pair_first"], data[..., 0, 0])
    assert res["pair_sum"] == data.astype(np.int64).sum()
    assert res.stats["processed"] == bad.sum()


# registration: checked when the workflow file is imported ------------------------------

def test_output_names_that_clash_are_refused():
    wf = Workflow("clash")

    @wf.frame(outputs={"x": "stack"})
    def com(frame):
        return {"x": 1}

    with pytest.raises(ValueError, match="function 'com_x' takes the name of its result "
                                         "'com_x' .output 'x' of function 'com'"):
        @wf.frame
        def com_x(frame):
            return 1
    with pytest.raises(ValueError, match="result 's_nxdata' .output 'nxdata' of function "
                                         "'s'.: 's_nxdata' is reserved for the output's NXdata"):
        wf.frame(name="s", outputs={"nxdata": "sum"})(lambda frame: {"nxdata": 1})
    with pytest.raises(ValueError, match="units= names \\['z'\\], which are not keys"):
        wf.frame(outputs={"x": "stack"}, units={"z": "mm"})(lambda frame: {"x": 1})
    with pytest.raises(TypeError, match="shape= is declared for output 'x' but dtype= is not"):
        wf.frame(name="t", outputs={"x": "stack"}, shape=())(lambda frame: {"x": 1})
    with pytest.raises(TypeError, match="outputs= gives each key its fold"):
        wf.frame(name="u", outputs={"x": "stack"}, fold="sum")(lambda frame: {"x": 1})
    assert list(wf.functions) == ["com_x"]
    h = histogram(bins=4, range=(0, 1))
    wf.frame(name="v", outputs={"h": h, "n": "sum"}, units="counts")(lambda frame: {})
    assert wf.functions["v_h"].fold is h and wf.functions["v_n"].units == "counts"
