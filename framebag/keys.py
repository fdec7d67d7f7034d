"""Following completed keys: which frames of the scan are complete.

A frame is complete when every key dataset is non-zero (and not NaN) at its
scan index, in any order. The scan rank is the key rank less any trailing
length-1 dims; every data dim after the scan dims is a frame dim.

The scan shape is taken from the datasets' ``maxshape`` where it is known, so a
preallocated live file is indexed by its final shape. Only the first scan dim
may be unlimited (a growing layout): it takes the keys' current extent and
grows as the writer extends it, which appends flat indices without moving any
frame's flat index. A later unlimited scan dim would renumber every frame, so
it is read at its current extent and a change of it during a run is an error.

Every poll is one vectorised read of each whole key dataset (after
``refresh()`` when following a live file); there is no Python loop per index.

A frame is complete only where the data dataset already holds it. A live
writer may extend and set a key before it extends the data; those frames are
held back (not complete, but ``seen``) until the data reach them, so no read
goes past the data's extent.

Keys and data may disagree in length along the first scan dim (a key dataset
preallocated longer than the data, a detector that wrote a few frames past the
last key). Where neither is still growing, the scan is the frames both cover,
with one warning naming both shapes; any other disagreement is an error.

**Without keys** (``keys=[]``) a frame is complete when the data dataset holds
it: in a finished file every frame is; when following, every frame within the
data's current extent along its growing (unlimited) first dim, which is only
safe for a writer that writes a frame's data before it extends the dataset.
The scan rank cannot come from keys then: it is ``scan_rank`` if given, else
the data's rank less 2 (frames are images), and at least 1.

The finished flag must hold one element; any other size is refused. When a
followed scan has ended is :class:`EndOfScan`'s decision, apart from any file.
A finished file is checked first (:func:`framebag.hdf5.check_finished`):
a truncated or damaged input is refused before anything reads it.

One module of about 470 lines: the follower and the end-of-scan policy it
feeds, with the layout rules (scan rank, growing dims, keyless inputs) they share.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import h5py
import numpy as np

from . import hdf5
from .errors import FramebagError

if TYPE_CHECKING:
    from .roi import Roi

__all__ = ["DataInfo", "KeyFollower", "EndOfScan", "ENDED", "check_flag", "default_scan_rank"]

log = logging.getLogger("framebag")


@dataclass(frozen=True)
class DataInfo:
    """What the rest of the flow needs to know about the data dataset."""

    path: str
    name: str
    scan_shape: tuple[int, ...]
    frame_shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...] | None
    compression: str | None

    @property
    def frame_nbytes(self) -> int:
        return int(np.prod(self.frame_shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def nframes(self) -> int:
        return int(np.prod(self.scan_shape, dtype=np.int64))


def extent(ds: h5py.Dataset, rank: int) -> tuple[int, ...]:
    """Per dim: the maxshape where known, else the current extent."""
    maxshape = ds.maxshape or ds.shape
    return tuple(int(m) if m is not None else int(s)
                 for m, s in zip(maxshape[:rank], ds.shape[:rank]))


def scan_rank_of(shape: tuple[int, ...]) -> int:
    """The scan rank of a key dataset of ``shape``: its rank less trailing length-1 dims."""
    rank = len(shape)
    while rank > 1 and shape[rank - 1] == 1:
        rank -= 1
    return rank


def default_scan_rank(data_rank: int) -> int:
    """The scan rank of keyless data of rank ``data_rank``: all dims but two frame dims."""
    return max(1, data_rank - 2)


def check_flag(ds: h5py.Dataset, name: str, path: str) -> None:
    """Refuse a finished flag that is not one element (an array would have no one meaning)."""
    if ds.size != 1:
        raise FramebagError(
            f"finished flag {name!r} in {path!r} has shape {ds.shape}: a finished flag must "
            "be a single value (a scalar or one element)"
        )


class KeyFollower:
    """Reads the key datasets of one input file and says which frames are complete.

    ``live=True`` refreshes every dataset before each read (SWMR following).
    With ``keys=[]`` the data's own extent says which frames are complete (see
    the module's docstring); ``scan_rank`` then sets the scan rank, and with
    keys it must equal theirs.
    """

    def __init__(self, path: str | os.PathLike, data: str | None, keys: list[str],
                 finished: str | None = None, *, live: bool = False,
                 finished_required: bool = True, scan_rank: int | None = None) -> None:
        if not data:
            raise FramebagError("no data dataset given: set data= on the Workflow or pass --data")
        self.path = os.path.abspath(os.fspath(path))
        self.live = live
        #: frames whose keys are set but whose data the data dataset does not hold yet
        self.ahead = 0
        if not live:  # only a followed file may still be growing
            hdf5.check_finished(self.path, data, list(keys))
        self._keys = [self._key(k) for k in keys]
        self._key_names = list(keys)
        #: names of the key datasets not set at any frame, after :meth:`poll`
        self.unset: list[str] = []
        #: the part of the scan the run processes (:mod:`framebag.roi`); frames outside it
        #: are never complete
        self.roi: Roi | None = None
        if not keys:  # its refusals come before any warning about the flag
            self._keyless(data, scan_rank)
        if finished and not finished_required and finished not in hdf5.open_file(self.path):
            log.warning("finished flag %r is not in %r; the run ends when the scan is full "
                        "or on the timeout", finished, self.path)
            finished = None
        self._finished = hdf5.dataset(self.path, finished) if finished else None
        if self._finished is not None:
            check_flag(self._finished, str(finished), self.path)
        self._finished_name = finished
        if not keys:
            return
        self.scan_rank = self._keys_scan_rank(scan_rank)
        #: the first scan dim is unlimited: the scan grows and is never "full"
        self.growing = any((k.maxshape or k.shape)[0] is None for k in self._keys)
        # a later scan dim is unlimited: it must not change during the run (see _grow)
        self._later_unlimited = any((k.maxshape or k.shape)[d] is None
                                    for k in self._keys for d in range(1, self.scan_rank))
        self.data = self._describe_data(data)
        self.scan_shape = self.data.scan_shape

    def _keys_scan_rank(self, scan_rank: int | None) -> int:
        """The scan rank the key datasets agree on, once each is checked to be a numeric
        array of one scan shape (and of ``--scan-rank``, when given)."""
        for k in self._keys:
            if k.ndim == 0:
                raise FramebagError(
                    f"key dataset {k.name!r} in {self.path!r} is a single value; a key dataset "
                    "holds one value per frame (scan-shaped)")
        ranks = {scan_rank_of(k.maxshape or k.shape) for k in self._keys}
        shapes = {k.name: extent(k, scan_rank_of(k.maxshape or k.shape)) for k in self._keys}
        if len(set(shapes.values())) > 1 or len(ranks) > 1:
            listed = "; ".join(f"{n} {s}" for n, s in shapes.items())
            raise FramebagError(
                f"key datasets in {self.path!r} disagree on the scan shape: {listed}"
            )
        for k in self._keys:
            if k.dtype.kind not in "biuf":
                raise FramebagError(
                    f"key dataset {k.name!r} in {self.path!r} has dtype {k.dtype}; "
                    "keys must be numeric"
                )
        rank = ranks.pop()
        if scan_rank is not None and scan_rank != rank:
            raise FramebagError(
                f"--scan-rank {scan_rank} disagrees with the key datasets in {self.path!r}, "
                f"whose scan rank is {rank} ({self._key_names[0]!r} has shape "
                f"{self._keys[0].shape}); leave --scan-rank out when there are keys"
            )
        return rank

    def _key(self, name: str) -> h5py.Dataset:
        try:
            return hdf5.dataset(self.path, name)
        except hdf5.InputNotReady:
            raise
        except FramebagError as exc:
            if "is not in input file" not in str(exc):
                raise
            raise FramebagError(f"key {exc}; a file without key datasets runs with --no-keys "
                                "(keys=[] in Python)") from None

    def _data_dataset(self, name: str) -> h5py.Dataset:
        """The data dataset: numeric, and a finished virtual one must have all its
        source files."""
        d = hdf5.dataset(self.path, name)
        if d.dtype.kind not in "biufc":
            raise FramebagError(
                f"data dataset {name!r} in {self.path!r} has dtype {d.dtype}; frames must be "
                "numeric (integers, floats or complex)")
        missing = hdf5.missing_sources(d) if d.is_virtual else []
        if missing and not self.live:
            raise FramebagError(
                f"data dataset {name!r} in {self.path!r} is a virtual dataset whose source "
                f"file{'s' * (len(missing) > 1)} {', '.join(missing)} "
                f"{'are' if len(missing) > 1 else 'is'} not there; HDF5 would read "
                "the frames it maps there as the fill value")
        return d

    def _keyless(self, name: str, scan_rank: int | None) -> None:
        """Set up a follower without keys: the data's extent makes frames complete."""
        d = self._data = self._data_dataset(name)
        if d.ndim == 0:
            raise FramebagError(f"data dataset {name!r} in {self.path!r} is a scalar; it needs "
                                "a scan dim")
        rank = default_scan_rank(d.ndim) if scan_rank is None else scan_rank
        if not 1 <= rank <= d.ndim:
            raise FramebagError(f"--scan-rank {rank} does not fit data dataset {name!r} in "
                                f"{self.path!r} of shape {d.shape}: it must be 1 to {d.ndim}")
        maxshape = d.maxshape or d.shape
        self.scan_rank = rank
        self.growing = maxshape[0] is None  # as for keys: a live or a finished file alike
        if self.live and not self.growing:
            raise FramebagError(
                f"--follow without key datasets needs a data dataset that grows along its first "
                f"dim (maxshape None), but {name!r} in {self.path!r} has a fixed shape "
                f"{d.shape}: a preallocated file says nothing about which frames are written; "
                "give its key datasets with --keys, or run without --follow once it is finished"
            )
        self._later_unlimited = any(maxshape[i] is None for i in range(1, rank))
        scan = tuple(int(s) for s in d.shape[:rank])
        self.data = DataInfo(self.path, name, scan, tuple(int(s) for s in d.shape[rank:]),
                             d.dtype, d.chunks, d.compression)
        self.scan_shape = scan

    def _describe_data(self, name: str) -> DataInfo:
        d = self._data = self._data_dataset(name)
        key_scan = extent(self._keys[0], self.scan_rank)
        if d.ndim < self.scan_rank:
            raise FramebagError(
                f"data dataset {name!r} in {self.path!r} has rank {d.ndim}, less than the "
                f"scan rank {self.scan_rank} of key dataset {self._key_names[0]!r}"
            )
        data_scan = extent(d, self.scan_rank)
        if data_scan[1:] != key_scan[1:]:
            raise FramebagError(
                f"key dataset {self._key_names[0]!r} has scan shape {key_scan} but data dataset "
                f"{name!r} has scan shape {data_scan} in {self.path!r}: only the first scan dim "
                "may differ"
            )
        # following a scan that grows, or data that grow along the first dim, the data may
        # be ahead of or behind the keys for a while (frames past the data are held back)
        if not (self.live and (self.growing or (d.maxshape or d.shape)[0] is None)):
            have = data_scan[0] if self.live else int(d.shape[0])  # a finished file: what is there
            if have != key_scan[0]:
                both = min(have, key_scan[0])
                log.warning(
                    "key datasets %s have scan shape %s but data dataset %r has %s in %r: only "
                    "the %d frames both cover along the first scan dim are processed",
                    ", ".join(self._key_names), key_scan, name, (have, *data_scan[1:]),
                    self.path, both * int(np.prod(key_scan[1:], dtype=np.int64)))
                key_scan = (both, *key_scan[1:])
        frame_shape = tuple(int(s) for s in d.shape[self.scan_rank:])
        return DataInfo(self.path, name, key_scan, frame_shape, d.dtype, d.chunks,
                        d.compression)

    def poll(self) -> np.ndarray:
        """A scan-shaped bool mask of the frames complete now (and inside :attr:`roi`).

        In a growing layout the mask (and ``scan_shape``) grow with the keys'
        first dim; they never shrink.
        """
        if not self._keys:
            return self._in_roi(self._poll_keyless())
        arrays = []
        for k in self._keys:
            if self.live:
                k.refresh()
            arrays.append(k[()])
        if self.live:
            self._grow([a.shape for a in arrays])
        unset = []
        mask = np.ones(self.scan_shape, dtype=bool)
        partly = np.zeros(self.scan_shape, dtype=bool) if len(arrays) > 1 else None
        for name, arr in zip(self._key_names, arrays):
            arr = arr.reshape(arr.shape[: self.scan_rank]) if arr.ndim > self.scan_rank else arr
            ok = arr != 0
            if arr.dtype.kind == "f":
                ok &= ~np.isnan(arr)
            if ok.shape != self.scan_shape:  # a growing dataset: frames beyond it are not set
                region = tuple(slice(0, min(a, b)) for a, b in zip(ok.shape, self.scan_shape))
                part = np.zeros(self.scan_shape, dtype=bool)
                part[region] = ok[region]
                ok = part
            if not ok.any():
                unset.append(name)
            mask &= ok
            if partly is not None:
                partly |= ok
        #: frames with at least one key set (complete ones included)
        self.seen = int(self._in_roi(mask if partly is None else partly).sum())
        self.unset = unset
        return self._in_roi(self._with_data(mask))

    def _in_roi(self, mask: np.ndarray) -> np.ndarray:
        """``mask`` less the frames outside the ROI, if there is one."""
        return mask if self.roi is None else mask & self.roi.mask(self.scan_shape)

    def _poll_keyless(self) -> np.ndarray:
        """Without keys: every frame within the data's current extent is complete."""
        if self.live:
            self._data.refresh()
            self._grow([self._data.shape])
        have = self._data.shape[: self.scan_rank]
        mask = np.zeros(self.scan_shape, dtype=bool)
        mask[tuple(slice(0, min(h, s)) for h, s in zip(have, self.scan_shape))] = True
        self.seen = int(self._in_roi(mask).sum())
        return mask

    def _with_data(self, mask: np.ndarray) -> np.ndarray:
        """``mask`` less the frames beyond the data's current extent (keys ahead of data).

        Sets :attr:`ahead` to how many frames that holds back. Reads nothing but
        the data's shape (refreshed when live, only while it is short of the scan).
        """
        self.ahead = 0
        have = self._data.shape[: self.scan_rank]
        if all(h >= s for h, s in zip(have, self.scan_shape)):
            return mask
        if self.live:
            self._data.refresh()
            have = self._data.shape[: self.scan_rank]
        region = tuple(slice(0, min(h, s)) for h, s in zip(have, self.scan_shape))
        held = np.zeros_like(mask)
        held[region] = mask[region]
        self.ahead = int(mask.sum()) - int(held.sum())
        if self.ahead and not self.live:
            first = tuple(int(i) for i in np.argwhere(mask & ~held)[0])
            raise FramebagError(
                f"key datasets {', '.join(self._key_names)} in {self.path!r} mark "
                f"{self.ahead} frames complete (the first {first}) that data dataset "
                f"{self.data.name!r} does not hold: its scan dims are {tuple(have)}, the "
                f"keys' {self.scan_shape}"
            )
        return held

    def _grow(self, shapes: list[tuple[int, ...]]) -> None:
        current = tuple(max(s[d] for s in shapes) for d in range(self.scan_rank))
        if self._later_unlimited and current[1:] != self.scan_shape[1:]:
            raise FramebagError(
                f"{self._what} in {self.path!r} changed their scan "
                f"dims after the first from {self.scan_shape[1:]} to {current[1:]} during the "
                "run; only the first scan dim may grow"
            )
        if self.growing and current[0] > self.scan_shape[0]:
            self.scan_shape = (current[0], *self.scan_shape[1:])
            self.data = dataclasses.replace(self.data, scan_shape=self.scan_shape)

    def finished(self) -> bool:
        """True once the finished flag (one element, see :func:`check_flag`) is non-zero."""
        if self._finished is None:
            return False
        if self.live:
            self._finished.refresh()
        value = np.asarray(self._finished[()])
        return bool(value.size and np.any(value != 0))

    @property
    def _what(self) -> str:
        """The datasets that say which frames are complete, for messages."""
        if self._keys:
            return "key datasets " + ", ".join(self._key_names)
        return f"data dataset {self.data.name!r} (no keys)"

    @property
    def key_names(self) -> list[str]:
        return list(self._key_names)

    @property
    def finished_name(self) -> str | None:
        return self._finished_name


#: what ended a followed run, as ``stats["ended_by"]`` and the output's ``ended_by``
#: attribute name it, and as the summary line says it (a run that does not follow
#: ends as "single_pass", once every frame complete at its start is processed)
ENDED = {
    "finished_flag": "finished flag set",
    "keys_full": "every frame of the scan complete",
    "timeout": "no new complete frame within --timeout",
}


class KeySource(Protocol):
    """What :class:`EndOfScan` needs of a key follower (an in-memory one in tests)."""

    growing: bool

    def poll(self) -> np.ndarray: ...

    def finished(self) -> bool: ...


class EndOfScan:
    """The end-of-scan policy of a run: when to stop polling the keys.

    A finished file is polled once. A followed one is polled until the first of:

    * every frame of a scan of fixed shape is complete (``"keys_full"``; a
      growing scan never ends this way), or what ``full`` says is the whole
      (the frames of a ROI);
    * the finished flag is set (``"finished_flag"``);
    * ``timeout`` seconds of ``clock`` pass with no new complete frame
      (``"timeout"``), counted from the last poll that found one.

    Once one holds, the keys are polled exactly once more (a writer may set the
    last keys just before the flag), and from then on :meth:`poll` returns that
    last mask: ``final`` is then true and no frame completes any more.
    ``clock`` is a parameter so the policy can be tested without waiting.
    """

    def __init__(self, source: KeySource, live: bool, timeout: float,
                 clock: Callable[[], float] = time.monotonic,
                 full: Callable[[np.ndarray], bool] | None = None) -> None:
        self.source = source
        #: whether a mask is the whole scan (or ROI) complete; default: every frame of
        #: a scan of fixed shape
        self.full = full or (lambda mask: not source.growing and bool(mask.all()))
        self.live = live
        self.timeout = timeout
        self.clock = clock
        #: why the scan ended ("" while it goes on); see :data:`ENDED`
        self.reason = ""
        #: the poll after the end has been made: the mask will not change any more
        self.final = False
        self._mask: np.ndarray | None = None
        self._complete = 0
        self._last_new = clock()

    def poll(self) -> np.ndarray:
        """The flat mask of the frames complete now (see :meth:`KeyFollower.poll`)."""
        if self.final and self._mask is not None:
            return self._mask
        if self._mask is not None and not self.reason:
            self.reason = self._ended(self._mask)
        mask = self.source.poll().ravel()
        now = self.clock()
        complete = int(mask.sum())
        if complete > self._complete:
            self._complete = complete
            self._last_new = now
        self.final = bool(self.reason) or not self.live
        self._mask = mask
        return mask

    def _ended(self, mask: np.ndarray) -> str:
        if self.full(mask):
            return "keys_full"
        if self.source.finished():
            return "finished_flag"
        if self.clock() - self._last_new > self.timeout:
            return "timeout"
        return ""
