"""Folds: how the per-frame values of one function become one result.

Every fold is a monoid, as in ``dask.bag.Bag.fold``:

* ``initial()`` makes a fresh, empty accumulator. It is *called* once per
  partition, so a mutable accumulator is never shared between partitions.
* ``binop(acc, value)`` adds one frame's value inside a partition.
* ``combine(a, b)`` merges two partition accumulators, in any order.
* ``finalize(acc)`` turns an accumulator into the array written to the output.

``binop_many(acc, values)`` is optional: it adds a whole stack of values
(leading axis = frames) at once, for batched functions and vectorised folds.

``stack`` is the default and is special: it keeps one value per frame, placed by
the driver at the frame's scan index, so its accumulator never crosses the wire
as anything but the stacked values of one partition.

``ragged`` is special too: per frame an array whose first dim (the number of
rows, 0 included) varies. Inside a task its accumulator is the list of the done
frames' arrays, in frame order; :func:`pack_ragged` turns it into per-frame
counts and one table of rows, and the driver appends those rows to the output's
table (it never combines two tasks' accumulators).

The accumulator ``None`` means "no frame yet" for every built-in fold, so the
value's shape and dtype come from the first frame and need not be declared.

An accumulator is data, never code: numpy arrays and numeric scalars, in tuples,
lists and dicts (string keys) nested as needed, or ``None`` as a whole. That is
what the output's checkpoint stores as plain HDF5 arrays (:func:`check_state`
says what is wrong with anything else), so resume never unpickles anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Fold", "stack", "ragged", "pack_ragged", "histogram", "resolve", "BUILTIN",
           "check_state", "NUMERIC", "SumOverflow", "OVERFLOW_FIX"]

#: the numpy dtype kinds an accumulator's arrays and scalars may have
NUMERIC = "biufc"


@dataclass(frozen=True)
class Fold:
    """A monoid over per-frame values. ``initial`` must be a callable."""

    name: str
    initial: Callable[[], Any]
    binop: Callable[[Any, Any], Any]
    combine: Callable[[Any, Any], Any]
    finalize: Callable[[Any], Any] = field(default=lambda acc: acc)
    binop_many: Callable[[Any, Any], Any] | None = None
    is_stack: bool = False
    #: a ``ragged`` result: a variable number of rows per frame (see :func:`ragged`)
    is_ragged: bool = False
    #: what a reader of the output needs to draw the result (a histogram's ``bin_edges``)
    attrs: dict[str, Any] = field(default_factory=dict)
    #: the dtype kinds of values whose result has the same bits however the frames are
    #: grouped into accumulators and combined (integer sums, min and max of integers,
    #: histograms): a read of many runs then folds them as one (see Workflow.apply)
    exact: str = ""

    def __post_init__(self) -> None:
        if not callable(self.initial):
            raise TypeError(
                f"fold {self.name!r}: initial must be a callable that returns a fresh "
                f"accumulator (got {type(self.initial).__name__}); a shared mutable "
                "initial would be reused by every partition"
            )
        for part in ("binop", "combine", "finalize"):
            if not callable(getattr(self, part)):
                raise TypeError(f"fold {self.name!r}: {part} must be callable")

    def add_many(self, acc: Any, values: Any) -> Any:
        """Fold a stack of values (one per frame along axis 0) into ``acc``."""
        if self.binop_many is not None:
            return self.binop_many(acc, values)
        for v in values:
            acc = self.binop(acc, v)
        return acc


def check_state(acc: Any, where: str = "accumulator") -> None:
    """Raise :class:`TypeError` naming the part of ``acc`` that is not fold state.

    Fold state is numpy arrays or numeric scalars (Python or numpy; dtype kinds
    :data:`NUMERIC`), in tuples, lists and string-keyed dicts, nested as needed.
    ``None`` is allowed only as the whole accumulator ("no frame yet").
    """
    if acc is None and where == "accumulator":
        return
    _check_part(acc, where)


def _check_part(v: Any, where: str) -> None:
    if type(v) in (tuple, list):  # exactly: a subclass would come back as its base
        for i, item in enumerate(v):
            _check_part(item, f"{where}[{i}]")
    elif type(v) is dict:
        for k, item in v.items():
            if not isinstance(k, str):
                raise TypeError(f"{where} is a dict with a key of type {type(k).__name__} "
                                "(keys must be strings)")
            _check_part(item, f"{where}[{k!r}]")
    elif isinstance(v, (bool, int, float, complex)):
        if isinstance(v, int) and not -(2**63) <= v < 2**63:
            raise TypeError(f"{where} is an int too large for int64")
    elif isinstance(v, (np.ndarray, np.generic)):
        if v.dtype.kind not in NUMERIC:
            raise TypeError(f"{where} has dtype {v.dtype}, which is not numeric")
    else:
        raise TypeError(f"{where} is of type {type(v).__name__}")


def _none() -> None:
    return None


def _accumulator_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype a sum is carried in: wide enough that frames do not overflow."""
    if dtype.kind == "b":
        return np.dtype(np.int64)
    if dtype.kind == "u":
        return np.dtype(np.uint64)
    if dtype.kind == "i":
        return np.dtype(np.int64)
    if dtype.kind == "c":
        return np.dtype(np.complex128)
    return np.dtype(np.float64)


def _merge(ufunc: np.ufunc) -> Callable[[Any, Any], Any]:
    def merge(a: Any, b: Any) -> Any:
        if a is None:
            return None if b is None else np.array(b, copy=True)
        if b is None:
            return a
        return _into(ufunc, a, b)

    return merge


def _into(ufunc: np.ufunc, a: Any, b: Any) -> Any:
    """``ufunc(a, b)``, written into ``a`` when that gives the very same array.

    ``a`` is always an accumulator the fold made (a copy of its first value, or
    a ufunc's output), so writing into it is safe; it is done only when the
    result would have ``a``'s dtype and shape anyway. For frame-sized folds this
    saves an allocation per frame.
    """
    if (isinstance(a, np.ndarray) and a.ndim and a.flags.writeable
            and np.result_type(a, b) == a.dtype and np.shape(b) == a.shape):
        return ufunc(a, b, out=a)
    return ufunc(a, b)


def _merge_many(reduce: Callable[..., Any], ufunc: np.ufunc) -> Callable[[Any, Any], Any]:
    def merge_many(acc: Any, values: Any) -> Any:
        values = np.asarray(values)
        if len(values) == 0:
            return acc
        part = reduce(values, axis=0)
        return part if acc is None else _into(ufunc, acc, part)

    return merge_many


# sum ---------------------------------------------------------------------------


class SumOverflow(OverflowError):
    """An integer ``sum`` left its accumulator's range (int64 or uint64).

    numpy wraps such a sum around without a word, which would be a silently wrong
    result; the fold raises this instead. Values of up to 32 bits cannot get there
    (it takes 2**32 frames), so only 64-bit integer values pay for the check.
    """

    def __init__(self, dtype: np.dtype) -> None:
        super().__init__(f"the sum leaves the range of {np.dtype(dtype)}")
        self.dtype = np.dtype(dtype)


#: what fixes a :class:`SumOverflow`, for the sentence that stops the run
OVERFLOW_FIX = ("return float values (float(v), or an array of dtype float64) for sums this "
                "large, then rerun with --overwrite; --on-error skip does not help here")


def _limits(dtype: np.dtype) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


_LIMITS = {np.dtype(t).char: _limits(np.dtype(t)) for t in (np.int64, np.uint64)}


def _wrapped(out: np.ndarray, v: np.ndarray) -> bool:
    """Whether ``out = acc + v`` (integers, in ``out``'s dtype) wrapped around."""
    v = np.asarray(v).astype(out.dtype, copy=False)
    if out.dtype.kind == "u":
        return bool(np.any(out < v))
    acc = out - v  # the old accumulator, exactly: two's complement
    return bool(np.any(((acc ^ out) & (v ^ out)) < 0))


def _sum_binop(acc: Any, v: Any) -> Any:
    if isinstance(v, (int, np.integer)) and isinstance(acc, np.ndarray) and acc.ndim == 0 \
            and acc.dtype.kind in "iu":  # one integer per frame: exact, in Python's ints
        total = int(acc) + int(v)
        lo, hi = _LIMITS.get(acc.dtype.char) or _limits(acc.dtype)
        if not lo <= total <= hi:
            raise SumOverflow(acc.dtype)
        acc[()] = total
        return acc
    v = np.asarray(v)
    if acc is None:
        return v.astype(_accumulator_dtype(v.dtype), copy=True)
    check = v.dtype.kind in "iu" and v.dtype.itemsize == 8 and not _fits(acc, v)
    acc += v
    if check and _wrapped(acc, v):
        raise SumOverflow(acc.dtype)
    return acc


def _fits(acc: Any, v: np.ndarray) -> bool:
    """Whether ``acc + v`` (64-bit integers) cannot leave ``acc``'s range, by their bounds:
    four reductions, which allocate nothing (the exact check of :func:`_wrapped` makes five
    frame-sized arrays: 5x the cost of the sum itself)."""
    if not v.size:
        return True
    acc = np.asarray(acc)
    lo, hi = _LIMITS.get(acc.dtype.char) or _limits(acc.dtype)
    return int(acc.max()) + int(v.max()) <= hi and int(acc.min()) + int(v.min()) >= lo


def _sum_many(acc: Any, values: Any) -> Any:
    values = np.asarray(values)
    if len(values) == 0:
        return acc
    dtype = _accumulator_dtype(values.dtype)
    part = values.sum(axis=0, dtype=dtype)
    if values.dtype.kind in "iu" and values.dtype.itemsize == 8 and values.size:
        lo, hi = _LIMITS.get(dtype.char) or _limits(dtype)
        n = len(values)  # n values within [min, max] sum within [n * min, n * max]
        if not (n * int(values.max()) <= hi and n * int(values.min()) >= lo):
            _check_reduction(values, dtype)
    return part if acc is None else _sum_combine(acc, part)


def _check_reduction(values: np.ndarray, dtype: np.dtype) -> None:
    """Raise :class:`SumOverflow` if the sum of 64-bit ``values`` along axis 0 leaves
    ``dtype``'s range: a float64 sum says where it cannot (a margin of 2**62 is far above
    its rounding), Python's exact integers decide the rest."""
    near = np.abs(values.sum(axis=0, dtype=np.float64)) >= 2.0**62
    if not np.any(near):
        return
    exact = values[:, near] if values.ndim > 1 else values
    total = exact.astype(object).sum(axis=0)
    lo, hi = _LIMITS.get(dtype.char) or _limits(dtype)
    if np.any((total < lo) | (total > hi)):
        raise SumOverflow(dtype)


_add = _merge(np.add)


def _sum_combine(a: Any, b: Any) -> Any:
    """``combine`` of two sum accumulators (``np.add``, see :func:`_merge`), refusing an
    integer sum that wraps around: checked exactly only where their bounds allow it, as
    in :func:`_sum_binop` (``a`` may be added into in place, so the bounds come first)."""
    check = a is not None and b is not None and np.result_type(a, b).kind in "iu" \
        and not _fits(a, np.asarray(b))
    out = _add(a, b)
    if check and _wrapped(np.asarray(out), b):
        raise SumOverflow(np.asarray(out).dtype)
    return out


# mean, var, std: accumulator (n, mean, M2) merged with Chan et al.'s formula ----


def _moments_of(values: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    mean = values.mean(axis=0)
    m2 = ((values - mean) ** 2).sum(axis=0)
    return n, mean, m2


def _moments_combine(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    na, ma, m2a = a
    nb, mb, m2b = b
    n = na + nb
    delta = mb - ma
    mean = ma + delta * (nb / n)
    m2 = m2a + m2b + delta**2 * (na * nb / n)
    return n, mean, m2


def _moments_binop(acc: Any, v: Any) -> Any:
    v = np.asarray(v, dtype=np.float64)
    if acc is None:
        return 1, v.copy(), np.zeros_like(v)
    n, mean, m2 = acc
    n += 1
    delta = v - mean
    if mean.ndim and mean.flags.writeable and m2.flags.writeable and v.shape == mean.shape:
        # the same arithmetic in place: no new frame-sized arrays per frame
        step = np.divide(delta, n)
        mean += step
        np.subtract(v, mean, out=step)
        step *= delta
        m2 += step
        return n, mean, m2
    mean = mean + delta / n
    m2 = m2 + delta * (v - mean)
    return n, mean, m2


def _moments_many(acc: Any, values: Any) -> Any:
    if len(values) == 0:
        return acc
    return _moments_combine(acc, _moments_of(values))


def _var(acc: Any) -> Any:
    n, _, m2 = acc
    return m2 / n


def _moments_fold(name: str, finalize: Callable[[Any], Any]) -> Fold:
    return Fold(name, _none, _moments_binop, _moments_combine, finalize, _moments_many)


def _stack_unused(acc: Any, v: Any) -> Any:
    raise RuntimeError("stack values are placed by the engine, not folded")


def stack() -> Fold:
    """One value per frame, gathered into ``scan_shape + value_shape``."""
    return Fold("stack", _none, _stack_unused, _stack_unused, is_stack=True)


def _ragged_binop(acc: Any, v: Any) -> Any:
    if acc is None:
        return [v]
    acc.append(v)
    return acc


def _ragged_unused(a: Any, b: Any) -> Any:
    raise RuntimeError("ragged rows are appended by the engine, not combined")


def ragged() -> Fold:
    """Per frame an array of rows whose count varies: ``(k, *row_shape)``, ``k >= 0``.

    The row shape and dtype are fixed by the first frame (the probe); the
    output keeps one flat table of rows with each frame's ``count`` and ``offset``.
    """
    return Fold("ragged", _none, _ragged_binop, _ragged_unused, is_ragged=True)


def pack_ragged(values: list[np.ndarray] | None, done: np.ndarray,
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """``(counts, rows)`` of a task's ragged accumulator: ``values`` holds one array per
    done frame, in frame order; ``counts`` has one entry per frame (0 where not done)
    and ``rows`` is their arrays concatenated (None if no frame is done)."""
    counts = np.zeros(len(done), dtype=np.int64)
    if not values:
        return counts, None
    counts[np.flatnonzero(done)] = [len(v) for v in values]
    return counts, np.concatenate(values) if len(values) > 1 else np.asarray(values[0])


def histogram(bins: Any, range: tuple[float, float] | None = None) -> Fold:  # noqa: A002
    """Counts of all values of every frame in fixed bins (``np.histogram`` edges)."""
    edges = np.histogram_bin_edges([], bins=bins, range=range) if np.ndim(bins) == 0 else bins
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError("histogram bins must be a count with a range, or increasing edges")

    def counts(values: Any) -> np.ndarray:
        return np.histogram(np.asarray(values), bins=edges)[0].astype(np.int64)

    def binop(acc: Any, v: Any) -> Any:
        c = counts(v)
        return c if acc is None else acc + c

    def binop_many(acc: Any, values: Any) -> Any:
        return acc if len(values) == 0 else binop(acc, values)  # no frame: nothing seen

    def combine(a: Any, b: Any) -> Any:
        if a is None:
            return b
        if b is None:
            return a
        return a + b

    return Fold("histogram", _none, binop, combine, binop_many=binop_many,
                attrs={"bin_edges": edges.tolist()}, exact="biuf")


BUILTIN: dict[str, Callable[[], Fold]] = {
    "stack": stack,
    "ragged": ragged,
    "sum": lambda: Fold("sum", _none, _sum_binop, _sum_combine, binop_many=_sum_many,
                        exact="biu"),
    "mean": lambda: _moments_fold("mean", lambda acc: acc[1]),
    "var": lambda: _moments_fold("var", _var),
    "std": lambda: _moments_fold("std", lambda acc: np.sqrt(_var(acc))),
    "min": lambda: Fold(
        "min",
        _none,
        _merge(np.minimum),
        _merge(np.minimum),
        binop_many=_merge_many(np.min, np.minimum),
        exact="biu",
    ),
    "max": lambda: Fold(
        "max",
        _none,
        _merge(np.maximum),
        _merge(np.maximum),
        binop_many=_merge_many(np.max, np.maximum),
        exact="biu",
    ),
}


def resolve(spec: str | Fold | None, **options: Any) -> Fold:
    """Turn a decorator's ``fold=`` argument into a :class:`Fold`."""
    if spec is None:
        return stack()
    if isinstance(spec, Fold):
        return spec
    if spec == "histogram":
        if "bins" not in options:
            raise ValueError("fold='histogram' needs bins=..., e.g. bins=64, range=(0, 1000)")
        return histogram(options["bins"], options.get("range"))
    if isinstance(spec, str) and spec in BUILTIN:
        return BUILTIN[spec]()
    names = ", ".join([*BUILTIN, "histogram"])
    raise ValueError(f"unknown fold {spec!r}; built-in folds are {names}, or pass a Fold")
