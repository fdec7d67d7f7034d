"""An integer ``sum`` that leaves int64 (or uint64) is refused, never wrapped around.

numpy adds 64-bit integers modulo 2**64 without a word (arrays) or with a warning
nobody sees (on a worker): ``-i * 10**17`` over a few frames summed to a positive
number, exit 0. The fold now raises, and the run stops with one sentence naming
the function and the frames, whichever way the values are folded: per frame in a
task, batched, or when the driver combines two tasks whose sums each fit.
"""

from __future__ import annotations

import numpy as np
import pytest

from framebag import Workflow
from framebag.errors import FramebagError
from framebag.folds import BUILTIN, SumOverflow

from .conftest import DATA, KEY, assert_one_sentence, run_cli

I64 = np.iinfo(np.int64)
U64 = np.iinfo(np.uint64)


def _fold(values, *, many: bool = False):
    f = BUILTIN["sum"]()
    if many:
        return f.add_many(None, np.asarray(values))
    acc = None
    for v in values:
        acc = f.binop(acc, v)
    return acc


@pytest.mark.parametrize("many", [False, True], ids=["binop", "binop_many"])
@pytest.mark.parametrize("values", [
    [2**62, 2**62],                                   # int64, upwards
    [-(2**62), -(2**62), -1],                         # int64, downwards
    [np.int64(I64.max), np.int64(1)],
    [np.uint64(U64.max), np.uint64(1)],               # uint64 wraps to 0
    [np.uint64(2**63), np.uint64(2**63)],
    [-i * 10**17 for i in range(1, 60)],              # the case an attack found
], ids=["up", "down", "max+1", "umax+1", "u2^64", "attack"])
def test_a_sum_leaving_64_bits_raises(values, many):
    if many and isinstance(values[0], int):
        values = np.asarray(values, dtype=np.int64)
    with pytest.raises(SumOverflow):
        _fold(values, many=many)


@pytest.mark.parametrize("many", [False, True], ids=["binop", "binop_many"])
@pytest.mark.parametrize("values, total", [
    ([np.int64(I64.max - 1), np.int64(1)], I64.max),
    ([np.int64(I64.min + 1), np.int64(-1)], I64.min),
    ([np.uint64(U64.max - 5), np.uint64(5)], U64.max),
    ([2**62, 2**61, 2**61 - 1], 2**63 - 1),
], ids=["max", "min", "umax", "near"])
def test_a_sum_up_to_the_limit_is_exact(values, total, many):
    got = _fold(np.asarray(values) if many else values, many=many)
    assert int(got) == total


def test_a_running_sum_that_leaves_the_range_is_refused_even_if_it_would_come_back():
    """Conservative: frame by frame, a running sum past int64 stops the run, although
    numpy's wrapped sum would come back right if the total fits; a batched read's sum
    is judged by its exact total."""
    values = [2**62, 2**62 - 1, 2**62, -(2**62)]
    with pytest.raises(SumOverflow):
        _fold(values)
    assert int(_fold(np.asarray(values), many=True)) == 2**63 - 1


def test_frame_sized_int64_sums_are_checked_per_pixel():
    a = np.zeros((3, 3), dtype=np.int64)
    b = a.copy()
    b[1, 2] = I64.max
    acc = _fold([a, b])
    with pytest.raises(SumOverflow):
        BUILTIN["sum"]().binop(acc, np.ones((3, 3), dtype=np.int64))
    with pytest.raises(SumOverflow):
        _fold(np.stack([b, b]), many=True)


def test_combining_two_sums_that_each_fit_raises():
    f = BUILTIN["sum"]()
    a, b = _fold([3 * 2**61]), _fold([3 * 2**61])
    with pytest.raises(SumOverflow):
        f.combine(a, b)
    assert int(f.combine(_fold([2**61]), _fold([2**61]))) == 2**62


def test_small_integers_and_floats_are_summed_as_before():
    frames = np.full((5, 4, 4), 65535, dtype=np.uint16)
    acc = _fold(list(frames))
    assert acc.dtype == np.uint64 and int(acc[0, 0]) == 5 * 65535
    np.testing.assert_array_equal(_fold(frames, many=True), acc)
    assert float(_fold([1.5, 2.5])) == 4.0
    with pytest.raises(TypeError):  # a float into an integer sum is not cast, as before
        _fold([1, 1.5])


def _workflow(tmp_path, body: str) -> str:
    wf = tmp_path / "wf.py"
    wf.write_text("import numpy as np\nfrom framebag import Workflow\n"
                  f"workflow = Workflow('big', data='{DATA}', keys=['{KEY}'])\n" + body)
    return str(wf)


@pytest.mark.parametrize("body", [
    "@workflow.frame(fold='sum')\n"
    "def total(frame, index):\n"
    "    return -(index[0] * 4 + index[1] + 1) * 10**17\n",
    "@workflow.frames(fold='sum')\n"
    "def total(frames, index):\n"
    "    return -(index[:, 0] * 4 + index[:, 1] + 1).astype(np.int64) * 10**17\n",
    "@workflow.frame(fold='sum')\n"
    "def total(frame):\n"
    "    return 2**62\n",  # two frames a read: the task's own sum leaves int64
], ids=["per_frame", "batched", "in_a_task"])
def test_the_cli_stops_with_one_sentence_naming_the_function(make_scan, capsys, tmp_path, body):
    path, _ = make_scan((6, 4), (4, 4))
    out = tmp_path / "o.h5"
    rc, err = run_cli(capsys, "run", _workflow(tmp_path, body), str(path), "-o", str(out),
                      "--quiet")
    assert_one_sentence(rc, err, "'total'", "range of int64", "float")
    assert "does not help" in err  # --on-error skip would not


def test_the_driver_refuses_two_tasks_whose_sums_each_fit(make_scan, client, tmp_path):
    path, data = make_scan((4,), (4, 4))
    wf = Workflow("big", data=DATA, keys=[KEY])

    @wf.frame(fold="sum")
    def total(frame):  # 2 frames a task: 3 * 2**61 each, 6 * 2**61 > int64 in the driver
        return 3 * 2**60

    with pytest.raises(FramebagError) as info:
        wf.run(path, tmp_path / "o.h5", client=client, partition_bytes=2 * data[0].nbytes)
    msg = str(info.value)
    assert len(msg.splitlines()) == 1
    assert "'total'" in msg and "range of int64" in msg and "kept" in msg, msg


@pytest.mark.parametrize("body, names", [
    ("@workflow.frame(fold='sum')\n"
     "def total(frame, index):\n"
     "    return 2**64 + 5 if tuple(index) == (2, 1) else 1\n",
     ("'total'", "the int 18446744073709551621", "(2, 1)", "float", "does not help")),
    ("@workflow.frame(fold='sum')\n"
     "def total(frame, index):\n"
     "    return 2**63 if tuple(index) == (0, 0) else -1\n",
     ("'total'", "dtype uint64", "one dtype for every frame", "does not help")),
], ids=["past_uint64", "uint64_then_int64"])
def test_a_python_int_past_int64_is_named_with_advice_that_works(make_scan, capsys, tmp_path,
                                                                  body, names):
    """A Python int past uint64 was 'not a number' and a dtype change got the shape advice
    ('pad or cut its value to one length'): neither helps. Each now says what does."""
    path, _ = make_scan((6, 4), (4, 4))
    rc, err = run_cli(capsys, "run", _workflow(tmp_path, body), str(path), "-o",
                      str(tmp_path / "o.h5"), "--quiet")
    assert_one_sentence(rc, err, *names)
    assert "pad or cut" not in err and "must return a number" not in err


@pytest.mark.parametrize("dtype", [np.int64, np.uint64])
def test_a_frame_sized_64_bit_sum_far_from_the_limits_allocates_no_frame(dtype):
    """The per-frame cost: an int64/uint64 frame added far from the limits is checked by
    bounds (reductions), not by the exact check's five frame-sized temporaries (5x the
    cost of the add on 256x256 frames, measured against the fold before the check)."""
    import tracemalloc

    f = BUILTIN["sum"]()
    frame = np.arange(256 * 256, dtype=dtype).reshape(256, 256)
    acc = f.binop(None, frame)
    tracemalloc.start()
    try:
        for _ in range(3):
            acc = f.binop(acc, frame)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < frame.nbytes // 16, peak  # not even a bool mask of the frame
    assert np.array_equal(acc, frame.astype(dtype) * 4)
    many = f.add_many(None, np.stack([frame] * 4))  # batched: the same total
    assert np.array_equal(many, frame.astype(dtype) * 4)
