"""The fold laws of every built-in fold, on plain numpy values: no cluster, no file.

Every fold is a monoid (see :mod:`framebag.folds`), and the engine relies on it:
a task folds its frames with ``binop`` (or ``binop_many``), the driver merges the
tasks' partials with ``combine``. So for any values and any cut into tasks:

- identity: ``combine(initial(), a) == a == combine(a, initial())``;
- associativity: ``combine(combine(a, b), c) == combine(a, combine(b, c))``;
- a pass cut anywhere, the two parts combined, equals one pass;
- ``binop_many`` over a stack equals ``binop`` frame by frame.

``sum`` of integers, ``min``, ``max`` and ``histogram`` promise exact results
(integer sums are carried in 64 bits); float sums, ``mean``, ``var`` and ``std``
hold to float rounding, and the frame count of the moments exactly.

Accumulators are updated in place (``binop`` and ``combine`` may write into their
first argument), so every law works on deep copies of the accumulators it reuses.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from framebag.folds import BUILTIN, Fold, histogram

#: the built-in folds with a monoid to check (``stack`` is placed by the engine, not folded)
FOLDS: dict[str, Callable[[], Fold]] = {
    **{name: BUILTIN[name] for name in ("sum", "mean", "var", "std", "min", "max")},
    "histogram": lambda: histogram(16, (-1000.0, 1000.0)),
}
#: folds whose results are exact for integer frames (and for floats, where marked below)
EXACT_FOR_INTEGERS = {"sum", "min", "max", "histogram"}
EXACT_ALWAYS = {"min", "max", "histogram"}

LAWS = settings(max_examples=20, deadline=None)


@st.composite
def frames(draw: Any, min_frames: int = 0) -> np.ndarray:
    """A stack of per-frame values: integers or floats, scalar or small arrays per frame."""
    dtype = draw(st.sampled_from(["int16", "uint16", "int64", "float32", "float64"]))
    value_shape = draw(st.sampled_from([(), (3,), (2, 2)]))
    n = draw(st.integers(min_frames, 12))
    low = 0 if dtype.startswith("u") else -1000
    elements = (st.integers(low, 1000) if "int" in dtype else
                st.floats(-1000, 1000, allow_nan=False, width=32 if dtype == "float32" else 64))
    return draw(hnp.arrays(dtype, (n, *value_shape), elements=elements))


def one_pass(fold: Fold, values: np.ndarray) -> Any:
    acc = fold.initial()
    for v in values:
        acc = fold.binop(acc, v)
    return acc


def assert_same(name: str, got: Any, want: Any, values: np.ndarray) -> None:
    """The two accumulators give the same result: exactly where the fold promises it."""
    fold = FOLDS[name]()
    if want is None or got is None:
        assert got is None and want is None, (got, want)
        return
    if name in ("mean", "var", "std"):
        assert got[0] == want[0]  # the frame count: exact
    g, w = np.asarray(fold.finalize(got)), np.asarray(fold.finalize(want))
    assert g.shape == w.shape
    if name in EXACT_ALWAYS or (name in EXACT_FOR_INTEGERS and values.dtype.kind in "iu"):
        assert g.dtype == w.dtype
        np.testing.assert_array_equal(g, w)
    else:
        scale = float(np.abs(values).max(initial=1.0)) ** (2 if name == "var" else 1)
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-9 * scale * max(1, len(values)))


@pytest.mark.parametrize("name", FOLDS)
@LAWS
@given(values=frames(min_frames=1))
def test_initial_is_the_identity_of_combine(name: str, values: np.ndarray) -> None:
    fold = FOLDS[name]()
    a = one_pass(fold, values)
    assert_same(name, fold.combine(fold.initial(), copy.deepcopy(a)), a, values)
    assert_same(name, fold.combine(copy.deepcopy(a), fold.initial()), a, values)


@pytest.mark.parametrize("name", FOLDS)
@LAWS
@given(values=frames(), cuts=st.lists(st.integers(0, 12), min_size=2, max_size=2))
def test_combine_is_associative(name: str, values: np.ndarray, cuts: list[int]) -> None:
    fold = FOLDS[name]()
    i, j = sorted(min(c, len(values)) for c in cuts)
    a, b, c = (one_pass(fold, part) for part in (values[:i], values[i:j], values[j:]))
    left = fold.combine(fold.combine(copy.deepcopy(a), copy.deepcopy(b)), copy.deepcopy(c))
    right = fold.combine(copy.deepcopy(a), fold.combine(copy.deepcopy(b), copy.deepcopy(c)))
    assert_same(name, left, right, values)


@pytest.mark.parametrize("name", FOLDS)
@LAWS
@given(values=frames(), cut=st.integers(0, 12))
def test_a_pass_cut_anywhere_then_combined_is_one_pass(name: str, values: np.ndarray,
                                                      cut: int) -> None:
    fold = FOLDS[name]()
    k = min(cut, len(values))
    parts = fold.combine(one_pass(fold, values[:k]), one_pass(fold, values[k:]))
    assert_same(name, parts, one_pass(fold, values), values)


@pytest.mark.parametrize("name", FOLDS)
@LAWS
@given(values=frames(), head=st.integers(0, 12))
def test_binop_many_is_binop_frame_by_frame(name: str, values: np.ndarray, head: int) -> None:
    """From a fresh accumulator and from one that holds frames already."""
    fold = FOLDS[name]()
    assert fold.binop_many is not None, f"{name} has no vectorised binop_many"
    k = min(head, len(values))
    start = one_pass(fold, values[:k])
    many = fold.binop_many(copy.deepcopy(start), values[k:])
    single = start
    for v in values[k:]:
        single = fold.binop(single, v)
    assert_same(name, many, single, values)


def test_the_laws_can_fail() -> None:
    """The comparison has teeth: a fold whose combine drops a side breaks the cut law."""
    broken = Fold("sum", lambda: None, BUILTIN["sum"]().binop, lambda a, b: a)
    values = np.arange(6, dtype=np.int64)
    got = broken.combine(one_pass(broken, values[:2]), one_pass(broken, values[2:]))
    with pytest.raises(AssertionError):
        assert_same("sum", got, one_pass(broken, values), values)
