"""Part of a scan: the region of interest (ROI) a run processes.

A ROI is a boolean mask over the scan. It is given as numpy-style basic
indexing over the scan dims (``"10:20,::2"``, or a tuple of slices and integers
in Python: fewer than the scan rank leave the other dims whole, an integer
selects one row of its dim), or as a mask: a boolean (or 0/1 integer) dataset of
the scan's shape, in the input (``"PATH"``), in another file (``"FILE.h5:PATH"``,
say a result of an earlier run thresholded into a mask), or a numpy array.

Frames outside the ROI are never complete for the run (the key follower masks
them out), so they are never processed (a worker may read a few between two ROI
frames with them, unused: a failure to read those never stops the run, see
:func:`framebag.tasks.process_partition`); the output keeps the full scan shape.
The output records the ROI as its ``roi`` attribute (the slices as text, or
``mask ...`` naming where the mask came from) and a ``roi_mask`` dataset (uint8,
scan-shaped, 1 inside), so a resumed run can keep it or check that a new one
contains it: a ROI may only grow on ``--resume``.

In a growing scan (the first scan dim unlimited) slices are evaluated against
the scan as it is now, so ``::2`` takes every other row as rows appear; the first
dim may not count from the end, and a mask may be shorter than the scan (the
rows beyond it are outside). Written here because numpy gives the indexing but
not its parsing from text, nor these checks with messages naming ``--roi``.
"""

from __future__ import annotations

import math
import os
import re

import h5py
import numpy as np

from . import hdf5
from .errors import FramebagError

__all__ = ["Roi", "parse", "given", "resumed", "RoiSpec"]

#: what ``roi=`` takes in Python
RoiSpec = str | tuple | slice | int | np.ndarray | None

_SLICES = re.compile(r"^[\s0-9:,+-]*$")
#: a slice with a typo (``1:x``), not a ``FILE:PATH``: no ``/`` or ``.`` in it
_TYPO = re.compile(r"^[\s\w:,+-]*$")


class Roi:
    """A region of the scan: slices over the scan dims, or a boolean mask.

    ``text`` is how the output records it and how messages name it.
    """

    def __init__(self, text: str, slices: tuple[slice | int, ...] | None = None,
                 source: str | None = None, array: np.ndarray | None = None) -> None:
        self.text = text
        self.slices = slices
        #: ``FILE.h5:PATH`` or ``PATH`` (in the input) of a mask still to be read
        self.source = source
        self.array = array
        self._cache: tuple[tuple[int, ...], np.ndarray] | None = None

    def mask(self, scan_shape: tuple[int, ...]) -> np.ndarray:
        """The scan-shaped bool mask of the frames inside, for the scan as it is now."""
        scan_shape = tuple(int(s) for s in scan_shape)
        if self._cache is not None and self._cache[0] == scan_shape:
            return self._cache[1]
        m = np.zeros(scan_shape, dtype=bool)
        if self.array is not None:
            a = self.array
            rows = min(a.shape[0], scan_shape[0])
            m[:rows] = a[:rows]
        else:
            assert self.slices is not None
            sel = tuple(slice(s if s >= 0 else s + n, (s if s >= 0 else s + n) + 1)
                        if isinstance(s, int) else s
                        for s, n in zip(self.slices, scan_shape))
            m[sel] = True
        self._cache = (scan_shape, m)
        return m

    def count(self, scan_shape: tuple[int, ...]) -> int:
        """How many frames of the scan as it is now are inside."""
        return int(np.count_nonzero(self.mask(scan_shape)))

    def rows(self) -> int | None:
        """How many rows of the first scan dim the ROI reaches, or None if it has no end
        (an open slice over a growing scan)."""
        if self.array is not None:
            hit = np.flatnonzero(self.array.reshape(self.array.shape[0], -1).any(axis=1))
            return int(hit[-1]) + 1 if hit.size else 0
        assert self.slices is not None
        s = self.slices[0]
        if isinstance(s, int):
            return s + 1 if s >= 0 else None
        if (s.step or 1) > 0:
            return s.stop if s.stop is not None and s.stop >= 0 else None
        return s.start + 1 if s.start is not None and s.start >= 0 else None

    def full(self, complete: np.ndarray, scan_shape: tuple[int, ...], growing: bool) -> bool:
        """True when every frame of the ROI is complete (``complete``: flat bool mask);
        in a growing scan only once the scan reaches the ROI's last row."""
        if growing:
            rows = self.rows()
            if rows is None or scan_shape[0] < rows:
                return False
        return not (self.mask(scan_shape).ravel() & ~complete).any()

    def summary(self, scan_shape: tuple[int, ...]) -> str:
        """The ROI and its size, for messages: ``10:20,::2 (50 of 400 frames)``."""
        total = int(np.prod(scan_shape, dtype=np.int64))
        return f"{self.text} ({self.count(scan_shape)} of {total} frames)"

    def __repr__(self) -> str:
        return f"Roi({self.text!r})"


def _fail(spec: str, what: str) -> FramebagError:
    return FramebagError(f"--roi {spec}: {what}")


def _format(sel: tuple[slice | int, ...]) -> str:
    def one(s: slice | int) -> str:
        if isinstance(s, int):
            return str(s)
        text = f"{'' if s.start is None else s.start}:{'' if s.stop is None else s.stop}"
        return text + (f":{s.step}" if s.step not in (None, 1) else "")
    return ",".join(one(s) for s in sel)


def _parse_slices(text: str) -> tuple[slice | int, ...]:
    out: list[slice | int] = []
    for item in text.split(","):
        item = item.strip()
        try:
            if ":" in item:
                parts = item.split(":")
                if len(parts) > 3:
                    raise ValueError
                bounds = [int(p) if p.strip() else None for p in parts]
                out.append(slice(*bounds))
            else:
                out.append(int(item))
        except ValueError:
            raise _fail(text, f"{item!r} is not a slice like 10:20 or ::2 or an index; give "
                        "one per scan dim, separated by commas") from None
    return tuple(out)


def _from_tuple(spec: tuple) -> tuple[slice | int, ...]:
    out: list[slice | int] = []
    for s in spec:
        if isinstance(s, (int, np.integer)) and not isinstance(s, bool):
            out.append(int(s))
        elif isinstance(s, slice) and all(v is None or (isinstance(v, (int, np.integer))
                                                        and not isinstance(v, bool))
                                          for v in (s.start, s.stop, s.step)):
            out.append(slice(*(None if v is None else int(v) for v in (s.start, s.stop, s.step))))
        else:
            raise FramebagError(f"--roi (roi=): {s!r} is not a slice or an integer index; give "
                                "a tuple of slices, a boolean array or a string")
    return tuple(out)


def parse(spec: RoiSpec) -> Roi | None:
    """The ROI ``spec`` names, checked for its syntax only (no file is read yet).

    ``None`` is the whole scan. A string of digits, ``:`` and ``,`` is slices; any
    other string names a mask dataset, ``FILE:PATH`` or a ``PATH`` in the input (a
    string like ``masks:bool`` is slices with a typo unless the file ``masks`` exists).
    """
    if spec is None:
        return None
    if isinstance(spec, (slice, int, np.integer)) and not isinstance(spec, bool):
        spec = (spec,)
    if isinstance(spec, tuple):
        sel = _from_tuple(spec)
        if not sel:
            raise FramebagError("--roi (roi=): an empty tuple selects nothing; give a slice "
                                "per scan dim, or leave roi out for the whole scan")
        return _with_steps(Roi(_format(sel), slices=sel))
    if isinstance(spec, (np.ndarray, list)):
        return Roi("mask (array)", array=np.asarray(spec))
    if not isinstance(spec, str):
        raise FramebagError(f"--roi (roi=): a {type(spec).__name__} is not a ROI; give slices "
                            "('10:20,::2' or a tuple), a boolean array or a dataset path")
    text = spec.strip()
    if not text:
        raise _fail(repr(spec), "empty; give slices like 10:20,::2 or a mask dataset")
    if _SLICES.match(text):
        sel = _parse_slices(text)
        return _with_steps(Roi(_format(sel), slices=sel))
    if (_TYPO.match(text) and "/" not in text and "." not in text and any(c in text for c in ":,")
            and not _names_file(text)):
        try:
            sel = _parse_slices(text)
        except FramebagError:
            if ":" not in text:
                raise
            file = text.split(":", 1)[0]
            raise _fail(text, f"{text!r} is not a slice like 10:20 or ::2 or an index, and no "
                        f"file {file!r} exists for a mask FILE:PATH") from None
        return _with_steps(Roi(_format(sel), slices=sel))
    return Roi(f"mask {text}", source=text)


def _names_file(text: str) -> bool:
    """Whether ``text`` starts with an existing file and a ``:``: a mask ``FILE:PATH``
    (``masks:bool``), not slices with a typo, whatever the file is called."""
    return any(c == ":" and k and os.path.isfile(os.path.expanduser(text[:k]))
               for k, c in enumerate(text))


def _with_steps(roi: Roi) -> Roi:
    assert roi.slices is not None
    for k, s in enumerate(roi.slices):
        if isinstance(s, slice) and s.step == 0:
            raise _fail(roi.text, f"step 0 in scan dim {k}; a step must be non-zero")
    return roi


def _split(source: str) -> tuple[str, str]:
    """``FILE:PATH`` split at the first ``:`` after which an existing file ends (so a
    dataset path, or a file name, may hold colons), else at the last one."""
    for k, c in enumerate(source):
        if c == ":" and k and os.path.exists(os.path.expanduser(source[:k])):
            return source[:k], source[k + 1:]
    file, _, name = source.rpartition(":")
    return file, name


def _fitting(shape: tuple[int, ...], scan_shape: tuple[int, ...], growing: bool) -> bool:
    """Whether a mask of ``shape`` (trailing length-1 dims allowed) fits the scan."""
    rank = len(scan_shape)
    if len(shape) > rank and all(n == 1 for n in shape[rank:]):
        shape = shape[:rank]
    return shape == scan_shape or (growing and len(shape) == rank
                                   and shape[1:] == scan_shape[1:])


def _load(spec: str, obj: h5py.Dataset, scan_shape: tuple[int, ...],
          growing: bool) -> np.ndarray:
    """The mask dataset's values, its shape checked before anything is read (a data
    dataset given by mistake is never loaded whole)."""
    if obj.shape is not None and not _fitting(tuple(obj.shape), scan_shape, growing):
        raise _fail(spec, f"the mask has shape {tuple(obj.shape)} but the scan has shape "
                    f"{scan_shape}; a ROI mask must be scan-shaped")
    return np.asarray(obj[()])


def _read_mask(roi: Roi, input_path: str, scan_shape: tuple[int, ...],
               growing: bool) -> np.ndarray:
    """Read the mask dataset ``roi.source`` names: ``FILE:PATH``, or ``PATH`` in the input.

    A mask file is opened without SWMR first: HDF5 then fails at once on a damaged
    file, where a SWMR reader retries each bad checksum for many minutes. Only a file
    that refuses that open (one a writer still holds) is opened with SWMR.
    """
    source = roi.source or ""
    spec = source
    file, name = _split(source)
    if file:
        file = os.path.expanduser(file)
        if not os.path.exists(file):
            raise _fail(spec, f"file {file!r} does not exist")
        try:
            try:
                hdf5._check_path(file, "--roi file")
                f = h5py.File(file, "r")
            except OSError:
                f = hdf5.open_readonly(file, "--roi file")
            with f:
                try:
                    obj = f[name]
                except KeyError as exc:  # not there, a broken link, or damaged metadata
                    reason = hdf5.hdf5_reason(exc)
                    if "doesn't exist" in reason or "not found" in reason:
                        raise _fail(spec, f"{name!r} in {file!r} is not there") from None
                    raise _fail(spec, f"cannot open {name!r} in {file!r} ({reason})") from None
                if not isinstance(obj, h5py.Dataset):
                    raise _fail(spec, f"{name!r} in {file!r} is a group, not a dataset")
                return _load(spec, obj, scan_shape, growing)
        except FramebagError as exc:
            if str(exc).startswith("--roi"):
                raise
            raise _fail(spec, str(exc)) from None
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise _fail(spec, f"cannot read {name!r} in {file!r} "
                        f"({hdf5.hdf5_reason(exc)})") from None
    try:
        obj = hdf5.dataset(input_path, source)
    except FramebagError as exc:
        raise _fail(spec, f"{exc} (a mask in another file is FILE.h5:PATH)") from None
    return _load(spec, obj, scan_shape, growing)


def _check_slices(roi: Roi, scan_shape: tuple[int, ...], growing: bool) -> None:
    assert roi.slices is not None
    rank = len(scan_shape)
    if len(roi.slices) > rank:
        raise _fail(roi.text, f"{len(roi.slices)} dims given, but the scan has {rank} "
                    f"(scan shape {scan_shape})")
    for k, (s, n) in enumerate(zip(roi.slices, scan_shape)):
        open_end = growing and k == 0  # the scan grows along it: later rows may come
        if open_end and ((s if isinstance(s, int) else min(s.start or 0, s.stop or 0)) < 0):
            raise _fail(roi.text, "the first scan dim grows, so it cannot be counted from its "
                        "end; give non-negative bounds there")
        length = 1 << 62 if open_end else n
        if isinstance(s, int):
            if not -length <= s < length:
                raise _fail(roi.text, f"index {s} is outside scan dim {k} of length {n} "
                            f"(scan shape {scan_shape})")
        elif len(range(*s.indices(length))) == 0:
            raise _fail(roi.text, f"{_format((s,))} selects nothing in scan dim {k} of length "
                        f"{n} (scan shape {scan_shape})")


def _check_array(roi: Roi, scan_shape: tuple[int, ...], growing: bool) -> None:
    a = roi.array
    assert a is not None
    name = roi.text.removeprefix("mask ")
    rank = len(scan_shape)
    if a.ndim > rank and all(n == 1 for n in a.shape[rank:]):  # like a key dataset's
        a = a.reshape(a.shape[:rank])
    if a.dtype.kind not in "biu":
        raise _fail(name, f"the mask has dtype {a.dtype}; a ROI mask must be boolean or "
                    "integers 0 and 1 (threshold a result first, e.g. into a bool dataset)")
    if a.dtype.kind != "b":
        bad = a[(a != 0) & (a != 1)]
        if bad.size:
            raise _fail(name, f"the mask of dtype {a.dtype} holds {bad.flat[0]} (and "
                        f"{bad.size - 1} other values besides 0 and 1); a ROI mask must be "
                        "boolean or integers 0 and 1")
    fits = a.shape == scan_shape or (growing and a.ndim == rank and a.shape[1:] == scan_shape[1:])
    if not fits:
        raise _fail(name, f"the mask has shape {a.shape} but the scan has shape {scan_shape}; "
                    "a ROI mask must be scan-shaped")
    if not a.any():
        raise _fail(name, "the mask selects no frame (it is all False or 0)")
    roi.array = a.astype(bool)


def given(spec: RoiSpec, input_path: str | os.PathLike, scan_shape: tuple[int, ...],
          growing: bool) -> Roi | None:
    """The ROI ``spec`` names for a scan of ``scan_shape``: parsed, read, checked.

    Raises a :class:`FramebagError` naming ``--roi`` and what is wrong.
    """
    roi = spec if isinstance(spec, Roi) else parse(spec)
    if roi is None:
        return None
    scan_shape = tuple(int(s) for s in scan_shape)
    if roi.source is not None:
        roi = Roi(roi.text, source=roi.source,
                  array=_read_mask(roi, os.fspath(input_path), scan_shape, growing))
    if roi.array is not None:
        _check_array(roi, scan_shape, growing)
    else:
        _check_slices(roi, scan_shape, growing)
    return roi


def recorded(group: h5py.Group) -> Roi | None:
    """The ROI an output group records (see the module's docstring), or None (whole scan)."""
    if "roi_mask" not in group:
        return None
    text = hdf5.attr_text(group.attrs.get("roi"))
    if text and not text.startswith("mask"):
        return Roi(text, slices=_parse_slices(text))
    return Roi(text or "mask", array=group["roi_mask"][()].astype(bool))


def _horizon(rois: tuple[Roi, ...], rows: int) -> int:
    """Rows of a growing scan enough to compare ``rois``: past ``rows`` and every bound
    of their first dims, plus one period of their steps, after which they repeat."""
    period = 1
    for r in rois:
        if r.array is not None:
            rows = max(rows, r.array.shape[0])
            continue
        assert r.slices is not None
        s = r.slices[0]
        if isinstance(s, int):
            rows = max(rows, abs(s) + 1)
        else:
            rows = max([rows] + [abs(v) for v in (s.start, s.stop) if v is not None])
            period = math.lcm(period, abs(s.step or 1))
    return rows + period


def resumed(new: Roi | None, group: h5py.Group, output: str, scan_shape: tuple[int, ...],
            growing: bool) -> Roi | None:
    """The ROI a resumed run of the output ``group`` uses: ``new`` if it contains the
    recorded one (else one sentence naming both), or, with no ``new``, the recorded one."""
    old = recorded(group)
    if new is None:
        return old
    had = group["done"].shape
    old_mask = old.mask(had) if old is not None else np.ones(had, dtype=bool)
    lost = old_mask & ~new.mask(scan_shape)[: had[0]]
    if lost.any():
        first = tuple(int(i) for i in np.argwhere(lost)[0])
        old_text = old.summary(had) if old is not None else \
            f"the whole scan ({old_mask.size} frames)"
        raise FramebagError(
            f"--roi {new.summary(scan_shape)} does not contain the ROI {old_text} that output "
            f"{output!r} was made with ({int(lost.sum())} of its frames are outside, the first "
            f"{first}); a resumed run may only grow its ROI: give a --roi that contains the "
            "old one, or start again with --overwrite")
    if old is not None and growing:  # the rows still to come: an open ROI must stay open
        rows = _horizon((old, new), max(had[0], scan_shape[0]))
        later = (rows,) + tuple(had[1:])
        lost = old.mask(later) & ~new.mask(later)
        if lost.any():
            first = tuple(int(i) for i in np.argwhere(lost)[0])
            raise FramebagError(
                f"--roi {new.text} does not contain the ROI {old.text} that output {output!r} "
                f"was made with on the rows the growing scan has yet to write (the first frame "
                f"left out: {first}); a resumed run may only grow its ROI: give a --roi that "
                "contains the old one, or start again with --overwrite")
    if old is None:  # the output has no ROI: the new one must be the whole scan, for good
        if not new.mask(scan_shape).all() or (growing and new.rows() is not None):
            raise FramebagError(
                f"--roi {new.summary(scan_shape)} does not contain the whole scan that output "
                f"{output!r} was made for (a growing scan: its later rows too); a resumed run "
                "may only grow its ROI: leave --roi out, or start again with --overwrite")
        return None
    return new
