"""The output file: layout, done mask, checkpoints and resume. Written only by the driver.

Layout (NeXus)::

    /                           default=entry
    /entry                      NXentry, default=<workflow>
    /entry/<workflow>           NXprocess; provenance in its attributes;
                                default=<first function>_nxdata
        <function>              one dataset per function: scan_shape + value_shape for
                                stacks, the finalized fold (e.g. frame-shaped) otherwise;
                                attributes fold, units (when declared), function
        <function>_nxdata/      NXdata: signal, axes, <axis>_indices; a hard link to
                                <function>, and its axes: scan_<k> indices or the input's
                                positions (--axes), made once and hard-linked into every
                                stack's group; frame_y/frame_x pixels; bin_centres and
                                bin_edges of a histogram (see :func:`_layout_nxdata`)
        done                    uint8, scan-shaped: 1 where a frame is in every result
        roi_mask                uint8, scan-shaped: 1 inside the run's ROI (only with one);
                                the ROI's text in the group's ``roi`` attribute
        errors                  (flat, function, message) of frames skipped by on_error
        checkpoint/slot0,slot1  two copies of the fold state, each:
            meta                int64 (3,): generation, error count, CRC-32 of the slot
            done                uint8: the done mask, bit-packed (np.packbits)
            none                uint8, one per folded function (sorted): 1 = no frame yet
            leaves              int64 (n, 34): per array leaf, how to give it back
                                (kind code, ndim, shape)
            accs/<function>     the accumulator as plain arrays: a group per tuple, list
                                or dict (attribute ``kind``, dict ``keys``), one flat
                                dataset per array or scalar (attribute ``leaf``: its row)
        fingerprint/            the input's identity, for resume (see framebag.fingerprint)

Every chunked dataset carries HDF5's fletcher32 filter, so a damaged chunk fails
on read, for framebag and for any h5py user alike; a scalar fold result is
stored compact, inside its object header, which HDF5 checksums. Nothing read
from the file is ever unpickled or evaluated: the accumulators' structure is
laid out from the probe's first accumulator (see :func:`framebag.folds.check_state`)
and only arrays of the dtypes laid out are read back.

All datasets are created before the file enters SWMR mode (an SWMR writer may
not create objects), so other processes can open it with ``swmr=True`` and watch
results and ``done`` grow; leaves change size by resizing, and a growing scan's
first scan axis grows with its stacks (:meth:`OutputFile.grow`). The NXdata
groups hold hard links, not copies, so no result is written twice.

Checkpointing, and why resume is exact. Each :meth:`OutputFile.commit` writes
the stacked values of the new frames (:meth:`OutputFile.write_stack`, only the
regions that arrived) and new error rows, and flushes. A checkpoint follows
at once when one is due (:meth:`OutputFile.checkpoint_due`: a checkpoint waits
:data:`CHECKPOINT_SPACING` times its own cost after the last, so the fold
state, which changes whole, costs at most about a tenth of the driver's time),
and always at the end of a run:

1. writes the current folded results, and flushes;
2. writes the accumulators, done mask and error count into the older of the two
   slots (of the packed done mask, only the bytes that slot lacks), flushes, then
   stamps that slot's generation, error count and CRC in its ``meta`` and
   flushes again;
3. marks the frames committed since the last checkpoint in the public ``done``
   mask, and flushes.

So a live reader sees stacked values at every commit, and fold results and
``done`` (1 where a frame is in every result) at every checkpoint.

A crash between any two steps leaves the newest *valid* slot describing a state
in which every done frame is in every accumulator exactly once (the slot is
written before it is stamped, and a torn or damaged slot fails its CRC or
fletcher32 so the other slot is used). Stacked values are written before the
slot that marks their frames done; a frame written but not yet marked is simply
redone on resume, which overwrites it. ``--resume`` restores the accumulators and
done mask from the slot and rewrites ``done`` and the folded results from them.
A checkpoint with no valid slot left (or none at all) stops ``--resume`` with a
sentence that offers ``--overwrite``: it never silently starts from zero.

Opening an existing output is bounded in time. ``--resume`` first opens it with a
plain (non-SWMR) read-only open, in which HDF5 reads each piece of metadata
once and fails at once on a bad checksum, and reads every chunk of every result
(fletcher32). Only a file left flagged "open for write" by a killed writer needs
an SWMR read, and there HDF5 retries a metadata read with a bad checksum up to
100 times with a growing sleep (which hung on damaged files for minutes). h5py
does not expose ``H5Pset_metadata_read_attempts``, so :func:`open_existing`
calls it through ctypes on the very libhdf5 h5py is linked against (looked up
through h5py's own extension module, its version checked) and allows
:data:`SWMR_READ_ATTEMPTS`. That bounds the open where the retries happen, in
process; a child process with a timeout would also bound it, but costs a
process start and a second open of the file in the driver, and a guessed
timeout that a large healthy file might exceed.

A writer killed in SWMR mode leaves the file flagged "open for write" (what
``h5clear -s`` clears). Resume copies such a file, read with that bounded SWMR
open, into a fresh file and atomically replaces the old one, so the user never
needs h5clear.

One module of about 1,650 lines because the layout, the commit, the checkpoint
slots and resume share one contract (results, then the slot, then ``done``; a
crash between any two leaves the newest valid slot consistent) that a reader
should see in one place. Its names live in :mod:`framebag.layout`; the NXdata
layout functions are the part that could move out next.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import json
import os
import re
import shutil
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import fingerprint
from .errors import FramebagError
from .hdf5 import open_swmr_read
from .keys import DataInfo
from .layout import NXDATA_SUFFIX, RESERVED
from .lock import OutputLock
from .partials import runs_of
from .partitions import blocks, selection_shape
from .roi import Roi

__all__ = ["OutputFile", "Schema", "ScanAxis", "default_output_path", "RESERVED", "results",
           "ragged_results",
           "create_swmr", "open_existing", "NXDATA_SUFFIX", "nxdata_of"]

ERROR_DTYPE = np.dtype([("flat", "<i8"), ("function", "S64"), ("message", "S256")])
LIBVER = ("v110", "latest")
#: a checkpoint waits, after the last one, this many times as long as that one took, so
#: that writing fold state costs the driver at most about a tenth of its time
CHECKPOINT_SPACING = 9.0


def default_output_path(input_path: str | os.PathLike, workflow: str) -> Path:
    """``<stem>_<workflow>.h5`` next to the input."""
    p = Path(input_path)
    return p.with_name(f"{p.stem}_{workflow}.h5")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Schema(dict):
    """Per function: ``(is_stack, shape, dtype)`` of its output dataset.

    ``accs`` holds the probe's accumulator of each folded function: the
    checkpoint's structure is laid out from it. ``meta`` holds, per function,
    what its NXdata group needs: ``fold`` (the fold's name), ``units`` and a
    histogram's ``bin_edges``. ``frame_shape`` gives folds and stacked values of
    that shape pixel axes; ``scan_axes`` are the scan's motor positions, one per
    scan dim, when the user named them (else the scan axes are indices).
    """

    accs: dict[str, Any]
    meta: dict[str, dict[str, Any]]
    frame_shape: tuple[int, ...]
    scan_axes: list[ScanAxis]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.accs = {}
        self.meta = {}
        self.frame_shape = ()
        self.scan_axes = []


@dataclass
class ScanAxis:
    """One scan dim's positions, copied from the input into the output's NXdata groups.

    ``values`` is 1-d (the dim's length) or scan-shaped; in a growing scan it
    may be shorter along the first scan dim than the scan so far (positions not
    yet written are NaN in the output).
    """

    name: str  # the axis dataset's name in the NXdata groups
    source: str  # the input dataset it is copied from
    values: np.ndarray
    units: str = ""


class OutputFile:
    """The driver's handle on the output file, in SWMR write mode."""

    def __init__(self, path: Path, f: h5py.File, workflow: str, scan_shape: tuple[int, ...]):
        self.path = path
        self.f = f
        self.group_name = f"entry/{workflow}"
        self.group = f[self.group_name]
        self.scan_shape = scan_shape
        self.done = np.zeros(int(np.prod(scan_shape, dtype=np.int64)), dtype=bool)
        self.generation = 0
        self.slot = 0  # the checkpoint slot the next commit writes: the older one
        self._slots: dict[int, _Slot] = {}
        self._value_shapes: dict[str, tuple[int, ...]] = {}
        self.n_errors = int(self.group["errors"].shape[0])
        #: the part of the scan the run processes (see :meth:`set_roi`)
        self.roi: Roi | None = None
        self.bytes_written = 0  # array bytes handed to HDF5 (benchmarks/commits.py)
        self._packed = np.packbits(self.done)  # the checkpoint's done mask, kept up to date
        self._stale = {0: True, 1: True}  # a slot whose packed done must be written whole
        self._dirty = {0: (0, 0), 1: (0, 0)}  # else the byte range each slot lacks
        self._unmarked: list[np.ndarray] = []  # committed, not yet in a checkpoint
        self._last: tuple[Any, dict[str, Any]] | None = None  # (results, accs) not checkpointed
        self._rewrite_done = False  # the public done mask is written whole at the next one
        self._checkpointed_at: float | None = None
        self._checkpoint_cost = 0.0
        # one handle on every dataset, held open: HDF5 flushes a dataset's chunk cache
        # when its last handle closes, and a write failing there (a full disk) could
        # only be printed by h5py's __del__, never raised; held open, a failure is
        # raised by the next flush (see abandon)
        self._held: list[h5py.Dataset] = []
        self.group.visititems(
            lambda _, o: self._held.append(o) if isinstance(o, h5py.Dataset) else None)

    # creating ------------------------------------------------------------------

    @classmethod
    def check_target(cls, path: str | os.PathLike, overwrite: bool, resume: bool,
                     input_path: str | os.PathLike | None = None,
                     lock: OutputLock | None = None) -> Path:
        """Refuse an existing output without --overwrite/--resume, or an unwritable path.

        Refuses, whatever the options, an output that is the input file itself:
        the same path after resolving ``..`` and symlinks, or the same file by a
        hard link (:func:`os.path.samefile`). ``lock`` is acquired once the path
        is known to be usable, before it is looked at as an existing output, so
        that a second run is told the output is in use; it is released again if
        a later check refuses.
        """
        path = Path(path)
        if input_path is not None and same_file(path, input_path):
            raise FramebagError(
                f"output file {str(path)!r} is the input file {str(input_path)!r}; "
                "the input is never written to: choose another -o")
        if overwrite and resume:
            raise FramebagError("--overwrite and --resume contradict each other; choose one")
        if path.is_dir():
            raise FramebagError(f"output path {str(path)!r} is a directory, not a file")
        parent = path.resolve().parent
        if not parent.is_dir():
            raise FramebagError(f"output directory {str(parent)!r} does not exist")
        if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise FramebagError(f"output file {str(path)!r} is not writable")
        if lock is not None:
            lock.acquire()
        if path.exists() and not (overwrite or resume):
            if lock is not None:
                lock.release()
            raise FramebagError(
                f"output file {str(path)!r} exists; pass --overwrite to replace it "
                "or --resume to continue it"
            )
        return path

    @classmethod
    def create(cls, path: Path, workflow: str, scan_shape: tuple[int, ...], schema: Schema,
               provenance: dict[str, Any], growing: bool = False) -> OutputFile:
        """Create the output's layout and open it in SWMR mode (see :func:`create_swmr`)."""
        f = create_swmr(path, lambda f: _layout(f, workflow, scan_shape, schema, provenance,
                                                growing))
        return cls(path, f, workflow, scan_shape)

    # resuming ------------------------------------------------------------------

    @classmethod
    def resume(cls, path: Path, workflow: str, scan_shape: tuple[int, ...],
               schema: Schema | None = None) -> tuple[OutputFile, dict[str, Any]]:
        """Reopen an earlier run's output, which :func:`check_resumable` found to be this
        job's (the caller checks it first, under the output lock: its integrity read of
        every dataset is not repeated here).

        With ``schema`` (this run's probe), every result must have the dtype and
        value shape laid out for it: a dataset of another dtype would cast what
        is written into it. Returns the file and the restored accumulators;
        ``.done`` holds the done mask.
        """
        if schema is not None:
            with open_existing(path) as f, _damaged(path):
                _check_layout(path, f[f"entry/{workflow}"], schema, len(scan_shape))
        f = _open_to_resume(path)
        try:
            group = f[f"entry/{workflow}"]
            state = read_checkpoint(path, group)
            group.attrs["status"] = "running"
            group.attrs["resumed_time"] = _now()
        except BaseException:
            f.close()
            raise
        f.swmr_mode = True
        # the shape written last; a growing scan is grown to the input's by the engine
        out = cls(path, f, workflow, tuple(int(x) for x in group.attrs["scan_shape"]))
        accs: dict[str, Any] = {}
        if state is not None:
            out.generation = state["generation"]
            out.slot = 1 - state["slot"]
            out.done[:] = np.unpackbits(state["done"], count=out.done.size).astype(bool)
            out._packed = np.packbits(out.done)
            out._stale[state["slot"]] = False  # the slot read back holds exactly _packed
            _drop_chunks(group["checkpoint"][f"slot{out.slot}"])
            accs = state["accs"]
            out.n_errors = state["n_errors"]
            out.group["errors"].resize((out.n_errors,))
        out._rewrite_done = True  # ``done`` may be ahead of the slot read back
        return out, accs

    # writing -------------------------------------------------------------------

    def value_shape(self, name: str) -> tuple[int, ...]:
        """The per-frame value shape of stacked result ``name``, or a fold's result shape."""
        if name not in self._value_shapes:
            ds = self.group[name]
            stacked = ds.attrs.get("fold") == "stack"
            self._value_shapes[name] = tuple(ds.shape[len(self.scan_shape):] if stacked
                                             else ds.shape)
        return self._value_shapes[name]

    def row_kind(self, name: str) -> tuple[tuple[int, ...], np.dtype]:
        """The row shape and dtype of ragged result ``name``'s table."""
        if name not in self._value_shapes:
            self._value_shapes[name] = self.group[name]["data"].shape[1:]
        return self._value_shapes[name], self.group[name]["data"].dtype

    def write_stack(self, name: str, runs: list[tuple[int, int, np.ndarray]],
                    batch_bytes: int = 64 << 20) -> None:
        """Place the stacked values of one commit's runs at their scan indices, in one write.

        ``runs`` holds ``(start, stop, values)`` of flat runs that do not overlap,
        in any order. Their values are gathered in flat order into one buffer
        (of at most about ``batch_bytes``; more makes a write per batch) and
        written with one HDF5 write, whose file selection is the union of the
        runs' hyperslabs: HDF5 visits a union of hyperslabs in C order of the
        dataset, which is flat order. So a commit of many single-frame runs (two
        detector writers completing frames alternately) costs one write per
        result, not one per run; with one write per run, the driver's CPU, not
        the workers', bounded the live latency.
        """
        runs = sorted((r for r in runs if r[1] > r[0]), key=lambda r: r[0])
        if not runs:
            return
        if any(a[1] > b[0] for a, b in zip(runs, runs[1:])):
            raise FramebagError(f"result {name!r}: one commit holds overlapping runs of frames "
                                "(an internal error; please report it)")
        ds = self.group[name]
        vshape = runs[0][2].shape[1:]
        per_frame = max(1, int(np.prod(vshape, dtype=np.int64)) * ds.dtype.itemsize)
        batch: list[tuple[int, int, np.ndarray]] = []
        frames = 0
        for run in runs:
            batch.append(run)
            frames += run[1] - run[0]
            if frames * per_frame >= batch_bytes:
                self._write_runs(ds, batch, vshape)
                batch, frames = [], 0
        if batch:
            self._write_runs(ds, batch, vshape)

    def _write_runs(self, ds: h5py.Dataset, runs: list[tuple[int, int, np.ndarray]],
                    vshape: tuple[int, ...]) -> None:
        """One HDF5 write of sorted, non-overlapping runs (see :meth:`write_stack`)."""
        fspace = ds.id.get_space()
        fspace.select_none()
        lo = hi = -1  # the span being gathered: adjacent runs make one hyperslab
        spans = []
        for start, stop, _ in runs:
            if start == hi:
                hi = stop
                continue
            if hi > lo:
                spans.append((lo, hi))
            lo, hi = start, stop
        spans.append((lo, hi))
        zeros = (0,) * len(vshape)
        for start, count, step in _strided(spans, self.scan_shape[-1]):
            if count:  # single frames at a fixed step along the last scan dim (--roi :,::2)
                index = np.unravel_index(start, self.scan_shape)
                fspace.select_hyperslab(
                    tuple(int(i) for i in index) + zeros,
                    (1,) * (len(self.scan_shape) - 1) + (count,) + (1,) * len(vshape),
                    stride=(1,) * (len(self.scan_shape) - 1) + (step,) + (1,) * len(vshape),
                    block=(1,) * len(self.scan_shape) + vshape, op=h5py.h5s.SELECT_OR)
                continue
            for sel, _ in blocks(start, step, self.scan_shape):
                fspace.select_hyperslab(tuple(s.start for s in sel) + zeros,
                                        selection_shape(sel) + vshape, op=h5py.h5s.SELECT_OR)
        values = runs[0][2] if len(runs) == 1 else np.concatenate([v for _, _, v in runs])
        values = np.ascontiguousarray(values)
        ds.id.write(h5py.h5s.create_simple(values.shape), fspace, values)
        self.bytes_written += values.nbytes

    def write_ragged(self, name: str, parts: list[tuple[int, np.ndarray, np.ndarray,
                                                         np.ndarray | None]],
                     rows_before: int) -> int:
        """Append one commit's rows of ragged result ``name``; set their frames' count, offset.

        ``parts`` holds ``(start, done, counts, rows)`` of flat runs that do not
        overlap (a partial's frames, see :class:`framebag.partials.Partial`);
        ``rows_before`` is the table's committed length (the checkpoint's).
        The rows go to ``data[rows_before:]`` in one write and are flushed before
        any ``count`` or ``offset`` that points at them, so an SWMR reader never
        sees a frame's rows past the end of the table. Returns the new length,
        which the caller's checkpoint records.
        """
        g = self.group[name]
        parts = sorted(parts, key=lambda p: p[0])
        new = [p[3] for p in parts if p[3] is not None and len(p[3])]
        end = rows_before + sum(len(r) for r in new)
        if new:
            table = g["data"]
            if table.shape[0] < end:
                table.resize(end, axis=0)
            table[rows_before:end] = new[0] if len(new) == 1 else np.concatenate(new)
            self.f.flush()
        at = rows_before
        counts, offsets = [], []
        for start, done, count, _ in parts:
            offset = at + np.cumsum(count) - count
            at += int(count.sum())
            # only the frames done: a frame between them may be another task's
            for a, b in runs_of(start, done):
                counts.append((a, b, count[a - start:b - start]))
                offsets.append((a, b, offset[a - start:b - start]))
        self.write_stack(f"{name}/count", counts)
        self.write_stack(f"{name}/offset", offsets)
        return end

    def reset_ragged(self, name: str, rows: int) -> None:
        """On resume: cut ragged result ``name``'s table to the checkpoint's ``rows`` and
        clear ``count``, ``offset`` of the frames not done (a crash after their rows were
        written and before the checkpoint that marks them done leaves them set)."""
        g = self.group[name]
        if g["data"].shape[0] > rows:
            g["data"].resize(rows, axis=0)
        not_done = ~self.done.reshape(self.scan_shape)
        for what, fill in (("count", 0), ("offset", -1)):
            ds = g[what]
            values = ds[()]
            if (values[not_done] != fill).any():
                values[not_done] = fill
                ds[...] = values

    def commit(self, newly_done: np.ndarray,
               results: dict[str, np.ndarray] | Callable[[], dict[str, np.ndarray]],
               accs: dict[str, Any], errors: list[tuple[int, str, str]],
               checkpoint: bool | None = None) -> None:
        """Make one combine step readable, and durable when a checkpoint is due.

        The stacked values (placed by :meth:`write_stack`) and new error rows are
        flushed at every commit. The fold results, the checkpoint slot and the
        public ``done`` mask follow in a checkpoint (:meth:`checkpoint`): at once
        with ``checkpoint=True``, not with ``False``, and by default when due, that
        is once :data:`CHECKPOINT_SPACING` times the last checkpoint's time has
        passed since it ended. So a commit costs the regions that arrived, and the
        fold state (which changes whole: a 2048x2048 ``var`` is 64 MiB) is written
        at most about a tenth of the time. ``results`` may be a callable, called
        only when the checkpoint is written; ``accs`` is kept by reference and may
        change in place only as part of the next commit (a fold combining into its
        accumulator), so a checkpoint always writes the state of the last commit.
        """
        if errors:
            ds = self.group["errors"]
            rows = np.array(
                [(i, f.encode()[:64], m.encode("utf-8", "replace")[:256]) for i, f, m in errors],
                dtype=ERROR_DTYPE,
            )
            ds.resize((self.n_errors + len(rows),))
            ds[self.n_errors :] = rows
            self.n_errors += len(rows)
            self.bytes_written += rows.nbytes
        self.f.flush()
        newly_done = np.asarray(newly_done, dtype=np.int64).reshape(-1)
        self.done[newly_done] = True
        if newly_done.size:
            self._unmarked.append(newly_done)
        self._last = (results, dict(accs))
        if checkpoint or (checkpoint is None and self.checkpoint_due()):
            self.checkpoint()

    @property
    def deferred(self) -> bool:
        """Whether a commit's fold results, checkpoint and ``done`` wait for a checkpoint."""
        return self._last is not None

    def checkpoint_due(self) -> bool:
        """Whether the deferred state should be checkpointed now (see :meth:`commit`)."""
        if self._last is None:
            return False
        if self._checkpointed_at is None:
            return True
        spent = time.monotonic() - self._checkpointed_at
        return spent >= CHECKPOINT_SPACING * self._checkpoint_cost

    def checkpoint(self) -> None:
        """Write the last commit's fold results, then its checkpoint slot, then ``done``.

        The order of the module docstring: a crash between any two steps leaves the
        newest valid slot consistent. Of the two done masks only what changed is
        written: the checkpoint's bytes that this slot lacks (it was written two
        checkpoints ago), and ``done`` at the frames committed since the last one.
        """
        if self._last is None:
            return
        t = time.perf_counter()
        (results, accs), self._last = self._last, None  # taken: one that fails is not retried
        for name, value in (results() if callable(results) else results).items():
            value = np.asarray(value)
            self.group[name][...] = value
            self.bytes_written += value.nbytes
        self.f.flush()
        marked = np.concatenate(self._unmarked) if self._unmarked else np.zeros(0, np.int64)
        self._mark_packed(marked)
        self.generation += 1
        if self.slot not in self._slots:
            self._slots[self.slot] = _Slot(self.group["checkpoint"][f"slot{self.slot}"])
        span = None if self._stale[self.slot] else self._dirty[self.slot]
        self.bytes_written += _write_checkpoint(self._slots[self.slot], self.f, {
            "generation": self.generation,
            "done": self._packed,
            "accs": accs,
            "n_errors": self.n_errors,
        }, span)
        self._stale[self.slot], self._dirty[self.slot] = False, (0, 0)
        self.slot = 1 - self.slot
        ds = self.group["done"]
        if self._rewrite_done:
            ds[...] = self.done.reshape(self.scan_shape)
            self.bytes_written += self.done.size
            self._rewrite_done = False
        elif marked.size:
            # the runs of the frames marked, in flat order, through a mask of their span:
            # partials arrive in any order, and np.unique took 2 ms for 20,000 frames
            lo = int(marked.min())
            mask = np.zeros(int(marked.max()) + 1 - lo, dtype=bool)
            mask[marked - lo] = True
            runs = [(a, b, np.ones(b - a, dtype=np.uint8)) for a, b in runs_of(lo, mask)]
            self._write_runs(ds, runs, ())
        self.f.flush()
        self._unmarked = []
        self._checkpoint_cost = time.perf_counter() - t
        self._checkpointed_at = time.monotonic()

    def _mark_packed(self, flat: np.ndarray) -> None:
        """Set ``flat``'s bits in the packed done mask; both slots now lack their bytes."""
        if self._packed.size * 8 < self.done.size:  # the scan grew
            self._packed = np.r_[self._packed, np.zeros((self.done.size + 7) // 8
                                                        - self._packed.size, np.uint8)]
        if not flat.size:
            return
        lo, hi = int(flat.min()) >> 3, (int(flat.max()) >> 3) + 1
        bits = np.zeros((hi - lo) * 8, dtype=bool)  # the bytes they touch, as bits
        bits[flat - lo * 8] = True
        self._packed[lo:hi] |= np.packbits(bits)
        for k, (a, b) in self._dirty.items():
            self._dirty[k] = (lo, hi) if a == b else (min(a, lo), max(b, hi))

    def grow(self, scan_shape: tuple[int, ...]) -> None:
        """Extend ``done`` and the stacked results along the first scan dim (growing input).

        Only for an output created with ``growing=True``; the other scan dims stay.
        """
        scan_shape = tuple(int(x) for x in scan_shape)
        if scan_shape[0] <= self.scan_shape[0]:
            return
        for ds in self.group.values():
            if isinstance(ds, h5py.Dataset) and (ds.name.endswith(("/done", "/roi_mask"))
                                                 or ds.attrs.get("fold") == "stack"):
                ds.resize(scan_shape[0], axis=0)
            elif isinstance(ds, h5py.Group) and ds.attrs.get("fold") == "ragged":
                ds["count"].resize(scan_shape[0], axis=0)
                ds["offset"].resize(scan_shape[0], axis=0)
        if self.roi is not None:
            had = self.scan_shape[0]
            self.group["roi_mask"][had:] = self.roi.mask(scan_shape)[had:]
        for ds in self.scan_axes():
            dim = int(ds.attrs["scan_dim"])
            if dim == 0 or ds.ndim > 1:
                had = ds.shape[0]
                ds.resize(scan_shape[0], axis=0)
                if "source" not in ds.attrs:  # indices; positions come by write_axes
                    ds[had:] = np.arange(had, scan_shape[0], dtype=ds.dtype)
        extra = int(np.prod(scan_shape, dtype=np.int64)) - self.done.size
        self.done = np.r_[self.done, np.zeros(extra, dtype=bool)]
        self.scan_shape = scan_shape
        self.group.attrs["scan_shape"] = np.asarray(scan_shape, dtype=np.int64)
        self.f.flush()  # a live reader sees the grown shapes and axes together, at once

    def set_roi(self, roi: Roi) -> None:
        """Record the run's ROI: the ``roi`` attribute (its text) and ``roi_mask`` (1 inside).

        The output must have been laid out with a ROI (``roi`` in its provenance); a
        resumed run records its own, which contains the earlier one.
        """
        self.roi = roi
        self.group.attrs["roi"] = roi.text
        self.group["roi_mask"][...] = roi.mask(self.scan_shape)
        self.f.flush()

    def scan_axes(self) -> list[h5py.Dataset]:
        """The scan axis datasets of the NXdata groups, each once (they are hard-linked)."""
        if not hasattr(self, "_scan_axes"):
            found: dict[Any, h5py.Dataset] = {}
            for name in list(self.group):
                nx = nxdata_of(self.group, name[: -len(NXDATA_SUFFIX)]) \
                    if name.endswith(NXDATA_SUFFIX) else None
                for ds in (nx.values() if nx is not None else ()):
                    if isinstance(ds, h5py.Dataset) and "scan_dim" in ds.attrs:
                        found.setdefault(ds.id, ds)
            self._scan_axes = list(found.values())
        return self._scan_axes

    def write_axes(self, axes: list[ScanAxis]) -> None:
        """Copy the positions of a growing scan that exist now (they may lag its frames)."""
        by_source = {_text(ds.attrs.get("source")): ds for ds in self.scan_axes()}
        for pos in axes:
            ds = by_source.get(pos.source)
            if ds is not None:
                _fill_axis(ds, pos.values)

    def abandon(self) -> None:
        """Close after a failed write, without writing another byte to the output.

        A failed write (ENOSPC, EIO) leaves HDF5 with dirty metadata that every
        later flush, close and handle release retries and fails on, printing
        "Exception ignored" for each and ending in a segfault at exit. So the
        file's descriptor is pointed at an anonymous in-memory file first: HDF5
        closes cleanly into it, and the output on disk keeps exactly what was
        written before the failure, which resume repairs and continues.
        """
        detach(self.f)

    def check_present(self) -> None:
        """Raise if the output's path no longer names the file being written.

        Writes to a removed file (or one in a removed directory) succeed and are
        lost; one ``stat`` per commit finds it out.
        """
        try:
            same = os.path.samestat(os.fstat(self.f.id.get_vfd_handle()), os.stat(self.path))
        except FileNotFoundError as exc:
            raise OutputWriteError(f"cannot write output file {str(self.path)!r}: it was removed "
                                f"while being written ({exc.strerror})") from None
        if not same:
            raise OutputWriteError(f"cannot write output file {str(self.path)!r}: it was replaced "
                                "by another file while being written")

    def close(self, status: str = "complete", **attrs: Any) -> None:
        """Checkpoint what a complete run deferred, stamp the end time and status, close.

        The attributes are written on the open SWMR handle: reopening the file
        would be refused while any reader holds it open. A run that did not
        complete keeps its last checkpoint: its last commit may not be whole.
        """
        if not self.f.id.valid:
            return
        if status == "complete":
            self.checkpoint()
        g = self.group
        g.attrs["end_time"] = _now()
        g.attrs["status"] = status
        for k, v in attrs.items():
            g.attrs[k] = v
        self.f.flush()
        self.f.close()


def create_swmr(path: Path, layout: Callable[[h5py.File], None]) -> h5py.File:
    """A new HDF5 file at ``path``, laid out by ``layout``, open for writing in SWMR mode.

    It is laid out in memory, written under a temporary name, goes SWMR, and only
    then moves into place: readers can only ever find it in SWMR mode, so one that
    opens it early never blocks the writer (HDF5 file locking). On failure nothing
    is left behind. (Laying it out in memory first matters on a full disk: HDF5
    cannot be closed safely after a write of its layout failed; it crashed there.)
    """
    path = Path(path)
    tmp = _temp_beside(path)
    f = None
    try:
        image = io.BytesIO()
        with h5py.File(image, "w", libver=LIBVER) as mem:
            layout(mem)
        with open(tmp, "wb") as out:  # a full disk is a plain OSError here
            out.write(image.getbuffer())
            out.flush()
            os.fsync(out.fileno())
        f = h5py.File(tmp, "r+", libver=LIBVER)
        f.swmr_mode = True
        _replace(tmp, path)
    except BaseException as exc:
        if f is not None:
            detach(f)
        Path(tmp).unlink(missing_ok=True)
        failed = write_error(path, exc)
        if failed is not None:
            raise failed from exc
        raise
    return f


_RENAME_EXCHANGE = 2  # linux/fs.h


def _replace(src: str, dst: Path) -> None:
    """Move ``src`` to ``dst`` atomically, replacing ``dst``: ``os.replace``, without its wait.

    Renaming a new file over an existing one makes ext4 (``auto_da_alloc``) write
    the new file out first: 10-50 ms of every ``--overwrite`` run on the test VM.
    Linux's ``renameat2(RENAME_EXCHANGE)`` swaps the two names instead, equally
    atomic for readers (``dst`` always names a whole file, the old or the new),
    and the old file is then removed under the temporary name. Python's ``os`` has
    no ``renameat2``, hence ctypes; where it is missing or refused (not Linux, a
    file system without it) this is ``os.replace``.
    """
    if os.path.isfile(dst) and not os.path.islink(dst):
        libc = _libc()
        at_fdcwd = -100
        if libc is not None and libc.renameat2(at_fdcwd, os.fsencode(src), at_fdcwd,
                                               os.fsencode(dst), _RENAME_EXCHANGE) == 0:
            with contextlib.suppress(OSError):
                os.unlink(src)  # the old output, now under the temporary name
            return
    os.replace(src, dst)


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                                   ctypes.c_uint]
        return libc
    except (OSError, AttributeError):
        return None


class OutputWriteError(FramebagError):
    """The output could not be written (disk full, I/O error, file removed): stop writing it."""


def os_reason(exc: BaseException) -> str | None:
    """``"No space left on device (errno 28)"`` for an OS error inside ``exc``, else None.

    HDF5 reports it inside a long message (``errno = 28, error message = ...``),
    and h5py raises it as ``OSError`` or ``RuntimeError``.
    """
    if not isinstance(exc, (OSError, RuntimeError)):
        return None
    code = getattr(exc, "errno", None)
    found = re.search(r"errno = (\d+)", str(exc))
    if found:
        code = int(found.group(1))
    return f"{os.strerror(code)} (errno {code})" if code else None


def write_error(path: str | os.PathLike, exc: BaseException) -> OutputWriteError | None:
    """One sentence for an OS error (ENOSPC, EIO ...) in writing ``path``, or None if not one."""
    reason = os_reason(exc)
    if reason is None:
        return None
    return OutputWriteError(
        f"cannot write output file {str(path)!r}: {reason}; what was committed before is "
        "kept: fix the cause and rerun with --resume")


def detach(f: h5py.File) -> None:
    """Close ``f`` with its writes sent to an anonymous in-memory file (see ``abandon``)."""
    if not f.id.valid:
        return
    try:
        sink = os.memfd_create("framebag-abandoned")
    except (AttributeError, OSError):
        sink = os.open(os.devnull, os.O_RDWR)
    try:
        os.dup2(sink, f.id.get_vfd_handle())
    finally:
        os.close(sink)
    try:
        f.close()
    except Exception:  # noqa: BLE001 - the failure was reported; this file is given up
        pass


def _strided(spans: list[tuple[int, int]], row: int) -> Iterator[tuple[int, int, int]]:
    """The flat ``spans`` (sorted, apart) as HDF5 selections: ``(start, count, step)`` for
    ``count`` single frames ``step`` apart within one row of ``row`` frames (the last scan
    dim), else ``(start, 0, stop)`` for a span of its own. A strided ROI's commit of
    thousands of one-frame runs is then one selection per row, not one per frame (each
    ``select_hyperslab`` costs about 12 us)."""
    i = 0
    while i < len(spans):
        start, stop = spans[i]
        j = i + 1
        if stop - start == 1:
            step = spans[j][0] - start if j < len(spans) else 0
            while (j < len(spans) and spans[j][1] - spans[j][0] == 1 and step > 0
                   and spans[j][0] - spans[j - 1][0] == step
                   and spans[j][0] // row == start // row):
                j += 1
            yield start, j - i, max(step, 1)
        else:
            yield start, 0, stop
        i = j


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether paths ``a`` and ``b`` name one file: by real path, or by inode (hard links)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _temp_beside(path: Path) -> str:
    """A new empty file beside ``path`` with a unique hidden name, mode 0666 less the umask.

    (:func:`tempfile.mkstemp` would make it 0600 whatever the umask, and the
    file becomes the output by a rename.)
    """
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{os.urandom(6).hex()}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return str(tmp)
    raise FileExistsError(f"no free temporary name beside {str(path)!r}")


def results(group: h5py.Group) -> list[tuple[str, h5py.Dataset]]:
    """``(function name, dataset)`` of every result in a workflow's output group."""
    return [(name, ds) for name, ds in group.items()
            if name not in RESERVED and isinstance(ds, h5py.Dataset)]


def _layout(f: h5py.File, workflow: str, scan_shape: tuple[int, ...], schema: Schema,
            provenance: dict[str, Any], growing: bool = False) -> None:
    # growing: the first scan dim is unlimited, and chunked as if it were already long
    grow = (None,) if growing else (scan_shape[0],)
    chunk_scan = (max(scan_shape[0], 256), *scan_shape[1:]) if growing else tuple(scan_shape)
    f.attrs["default"] = "entry"
    entry = f.create_group("entry")
    entry.attrs["NX_class"] = "NXentry"
    entry.attrs["default"] = workflow
    g = entry.create_group(workflow)
    g.attrs["NX_class"] = "NXprocess"
    g.attrs["program"] = "framebag"
    g.attrs["scan_shape"] = np.asarray(scan_shape, dtype=np.int64)
    g.attrs["start_time"] = _now()
    g.attrs["status"] = "running"
    for k, v in provenance.items():
        g.attrs[k] = v if isinstance(v, (str, int, float)) else json.dumps(v)
    for name, (is_stack, shape, dtype) in schema.items():
        if schema.meta.get(name, {}).get("fold") == "ragged":
            _layout_ragged(g, name, scan_shape, tuple(shape), np.dtype(dtype),
                           schema.meta[name].get("units", ""), grow, chunk_scan)
        else:
            _layout_result(g, name, is_stack, tuple(shape), np.dtype(dtype), scan_shape,
                           schema.meta.get(name, {}), grow, chunk_scan)
    _layout_nxdata(g, scan_shape, schema, growing)
    # chunks of 64 KiB: marking a commit's frames rewrites (and checksums) little of it
    for name in ("done", "roi_mask") if "roi" in provenance else ("done",):  # set_roi
        g.create_dataset(name, shape=scan_shape, dtype=np.uint8, fillvalue=0, fletcher32=True,
                         maxshape=grow + tuple(scan_shape[1:]),
                         chunks=_chunks(chunk_scan, 1, 1 << 16))
    g.create_dataset("errors", shape=(0,), maxshape=(None,), dtype=ERROR_DTYPE, chunks=(256,),
                     fletcher32=True)
    if fingerprint.ATTR in provenance:
        fingerprint.layout(g, len(provenance["keys"]), int(np.prod(scan_shape, dtype=np.int64)))
    _layout_checkpoint(g, {name: schema.accs.get(name) for name, (is_stack, _, _)
                           in schema.items() if not is_stack})


def _layout_result(g: h5py.Group, name: str, is_stack: bool, shape: tuple[int, ...],
                   dtype: np.dtype, scan_shape: tuple[int, ...], meta: dict[str, Any],
                   grow: tuple[int | None, ...], chunk_scan: tuple[int, ...]) -> None:
    """One stacked or folded result's dataset, with its fold, function, output and units."""
    if is_stack:
        full = tuple(scan_shape) + shape
        # chunks of 64 KiB, or one value up to 1 MiB: a commit rewrites (and checksums)
        # the chunks its frames touch, so small values get small chunks
        value = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        ds = g.create_dataset(name, shape=full, dtype=dtype, fillvalue=np.zeros((), dtype),
                              maxshape=grow + full[1:], fletcher32=True,
                              chunks=_chunks(chunk_scan + shape, dtype.itemsize,
                                             min(1 << 20, max(1 << 16, value))))
        ds.attrs["fold"] = "stack"
    elif shape == () or 0 in shape:
        ds = _compact(g, name, shape, dtype)
    else:
        ds = g.create_dataset(name, shape=shape, dtype=dtype, fletcher32=True,
                              chunks=_chunks(shape, dtype.itemsize))
    ds.attrs["function"] = meta.get("function") or name
    if meta.get("output"):  # one result of several (outputs=): its key in the dict
        ds.attrs["output"] = meta["output"]
    if not is_stack and meta.get("fold"):
        ds.attrs["fold"] = meta["fold"]
    if meta.get("units") and meta.get("fold") != "histogram":  # a histogram counts
        ds.attrs["units"] = _fold_units(meta.get("fold", "stack"), meta["units"])


def _layout_ragged(g: h5py.Group, name: str, scan_shape: tuple[int, ...],
                   row_shape: tuple[int, ...], dtype: np.dtype, units: str,
                   grow: tuple[int | None], chunk_scan: tuple[int, ...]) -> None:
    """A ragged result: group ``<name>`` with the table ``data`` and ``count``, ``offset``.

    ``data`` is ``(total rows, *row_shape)``, growing along its first dim as
    commits append rows (in commit order, not scan order); ``count`` and
    ``offset`` are scan-shaped int64: frame ``i``'s rows are
    ``data[offset[i] : offset[i] + count[i]]``. A frame not done has count 0 and
    offset -1; a done frame with no rows has count 0 and an offset >= 0.
    """
    rg = g.create_group(name)
    rg.attrs["fold"] = "ragged"
    rg.attrs["function"] = name
    row = int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
    chunk_rows = max(1, min(1 << 16, (1 << 20) // max(1, row)))
    data = rg.create_dataset("data", shape=(0, *row_shape), maxshape=(None, *row_shape),
                             dtype=dtype, chunks=(chunk_rows, *(max(1, n) for n in row_shape)),
                             fletcher32=True, fillvalue=np.zeros((), dtype))
    data.attrs["long_name"] = f"{name} rows of every frame done (see count, offset)"
    if units:
        data.attrs["units"] = units
    for what, fill in (("count", 0), ("offset", -1)):
        ds = rg.create_dataset(what, shape=scan_shape, dtype=np.int64, fillvalue=fill,
                               maxshape=grow + tuple(scan_shape[1:]), fletcher32=True,
                               chunks=_chunks(chunk_scan, 8))
        ds.attrs["long_name"] = f"{name}: rows per frame" if what == "count" else \
            f"{name}: row of each frame's first entry in data (-1: not done)"


def ragged_results(group: h5py.Group) -> list[tuple[str, h5py.Group]]:
    """``(function name, group)`` of every ragged result in a workflow's output group."""
    return [(name, obj) for name, obj in group.items()
            if name not in RESERVED and isinstance(obj, h5py.Group)
            and _text(obj.attrs.get("fold")) == "ragged"]


def _fold_units(fold: str, units: str) -> str:
    """The units of a fold's result of values in ``units``: squared for ``var``."""
    if fold != "var":
        return units
    return f"{units}^2" if units.replace("_", "").isalnum() else f"({units})^2"


def nxdata_of(group: h5py.Group, name: str) -> h5py.Group | None:
    """The NXdata group of result ``name`` in a workflow's output group, if it has one."""
    nx = group.get(name + NXDATA_SUFFIX)
    return nx if isinstance(nx, h5py.Group) and _text(nx.attrs.get("NX_class")) == "NXdata" \
        else None


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else ("" if v is None else str(v))


def _layout_nxdata(g: h5py.Group, scan_shape: tuple[int, ...], schema: Schema,
                   growing: bool) -> None:
    """One NXdata group per result, ``<name>_nxdata``, with ``@signal``, ``@axes`` and its axes.

    The signal is an HDF5 hard link to the result dataset, so nothing is
    written twice. The scan axes (indices, or the input's positions) are made
    once and hard-linked into every stacked result's group; each fold's group
    gets the axes of its own shape (pixel indices of a frame-shaped result, bin
    centres and edges of a histogram, indices otherwise). The workflow group's
    ``@default`` names the first result's group, so NeXus clients follow
    ``/@default`` -> ``entry`` -> ``<workflow>`` -> it.
    """
    scan_axes: list[h5py.Dataset] | None = None
    scan_names: list[str] = []
    first = None
    for name, (is_stack, shape, _) in schema.items():
        meta = schema.meta.get(name, {})
        nx = g.create_group(name + NXDATA_SUFFIX)
        first = first or nx.name.rsplit("/", 1)[-1]
        nx.attrs["NX_class"] = "NXdata"
        ragged = meta.get("fold") == "ragged"  # plotted as its count map
        nx.attrs["signal"] = "count" if ragged else name
        nx["count" if ragged else name] = g[name]["count"] if ragged else g[name]
        axes: list[str] = []
        if is_stack or ragged:
            if scan_axes is None:
                scan_axes, scan_names = _layout_scan_axes(nx, scan_shape, schema.scan_axes,
                                                          growing)
            else:
                for ds in scan_axes:
                    nx[ds.name.rsplit("/", 1)[-1]] = ds
            for ds in scan_axes:
                if ds.ndim > 1:  # scan-shaped positions: an axis for every scan dim
                    nx.attrs[ds.name.rsplit("/", 1)[-1] + "_indices"] = \
                        np.arange(len(scan_shape), dtype=np.int64)
            axes += scan_names
        if not ragged:
            axes += _layout_value_axes(nx, name, tuple(shape), meta, schema.frame_shape,
                                       taken=set(nx))
        if axes:
            nx.attrs["axes"] = axes
        for k, axis in enumerate(axes):
            if axis != ".":
                nx.attrs[f"{axis}_indices"] = np.int64(k)
    if first is not None:
        g.attrs["default"] = first


def _layout_scan_axes(nx: h5py.Group, scan_shape: tuple[int, ...], given: list[ScanAxis],
                      growing: bool) -> tuple[list[h5py.Dataset], list[str]]:
    """The scan axis datasets in ``nx``, and the name ``@axes`` uses for each scan dim.

    Without positions, dim ``k`` gets ``scan_k``, its indices. Given 1-d
    positions, dim ``k`` gets them under the given name. Scan-shaped positions
    cannot be a NeXus ``@axes`` entry (that is 1-d), so they are stored with an
    ``@<name>_indices`` of every scan dim beside the index axis the dim keeps.
    """
    made: list[h5py.Dataset] = []
    names: list[str] = []
    rank = len(scan_shape)
    for k, n in enumerate(scan_shape):
        pos = given[k] if k < len(given) else None
        grows = growing and k == 0
        if pos is not None and pos.values.ndim == 1:
            ds = nx.create_dataset(pos.name, shape=(n,), maxshape=(None if grows else n,),
                                   dtype=np.float64, fillvalue=np.nan, fletcher32=True,
                                   chunks=(min(max(n, 1), 4096) if not grows else 256,))
            _positions(ds, pos, k)
            made.append(ds)
            names.append(pos.name)
            continue
        ds = nx.create_dataset(f"scan_{k}", data=np.arange(n, dtype=np.int64),
                               maxshape=(None if grows else n,), fletcher32=True,
                               chunks=(min(max(n, 1), 4096) if not grows else 256,))
        slow = " (slow)" if k == 0 and rank > 1 else " (fast)" if k == rank - 1 and rank > 1 \
            else ""
        ds.attrs["long_name"] = f"scan axis {k}{slow}, index"
        ds.attrs["scan_dim"] = np.int64(k)
        made.append(ds)
        names.append(f"scan_{k}")
    for pos in given:
        if pos.values.ndim > 1:
            full = tuple(scan_shape)
            ds = nx.create_dataset(pos.name, shape=full, dtype=np.float64, fillvalue=np.nan,
                                   maxshape=((None,) if growing else full[:1]) + full[1:],
                                   fletcher32=True, chunks=_chunks(
                                       ((max(full[0], 256),) if growing else full[:1])
                                       + full[1:], 8))
            _positions(ds, pos, -1)  # every scan dim
            made.append(ds)
    return made, names


def _positions(ds: h5py.Dataset, pos: ScanAxis, scan_dim: int) -> None:
    """Fill an axis dataset with motor positions, and say where they came from."""
    _fill_axis(ds, pos.values)
    ds.attrs["source"] = pos.source
    ds.attrs["long_name"] = f"{pos.name} ({pos.units})" if pos.units else pos.name
    if pos.units:
        ds.attrs["units"] = pos.units
    ds.attrs["scan_dim"] = np.int64(scan_dim)


def _fill_axis(ds: h5py.Dataset, values: np.ndarray) -> None:
    """Copy the positions that exist (a growing scan's may lag the scan) into ``ds``."""
    n = min(ds.shape[0], values.shape[0])
    if n:
        ds[:n] = np.asarray(values[:n], dtype=np.float64)


def _layout_value_axes(nx: h5py.Group, name: str, shape: tuple[int, ...], meta: dict[str, Any],
                       frame_shape: tuple[int, ...], taken: set[str]) -> list[str]:
    """The ``@axes`` entries of a result's value dims, and their datasets in ``nx``.

    A histogram gets its bin centres (and its edges, ``bin_edges``, beside
    them); a frame-shaped value its pixel indices (``frame_y``, ``frame_x``);
    another folded value indices along each dim; a stacked value that is not
    frame-shaped none (``.``).
    """
    if not shape:
        return []
    units = meta.get("units", "")
    edges = np.asarray(meta.get("bin_edges") or [], dtype=np.float64)
    if meta.get("fold") == "histogram" and len(shape) == 1 and edges.size == shape[0] + 1:
        centres = nx.create_dataset("bin_centres", data=(edges[:-1] + edges[1:]) / 2)
        nx.create_dataset("bin_edges", data=edges)
        for ds, what in ((centres, "bin centre"), (nx["bin_edges"], "bin edge")):
            ds.attrs["long_name"] = f"{name} {what}" + (f" ({units})" if units else "")
            if units:
                ds.attrs["units"] = units
        return ["bin_centres"]
    stacked = meta.get("fold", "stack") == "stack"
    if tuple(shape) == tuple(frame_shape):
        names = ["frame_y", "frame_x"] if len(shape) == 2 else \
            [f"frame_{k}" for k in range(len(shape))]
        words = ["frame y", "frame x"] if len(shape) == 2 else \
            [f"frame axis {k}" for k in range(len(shape))]
        for axis, word, n in zip(names, words, shape):
            ds = nx.create_dataset(axis, data=np.arange(n, dtype=np.int64))
            ds.attrs["long_name"] = f"{word} (pixel)"
        return names
    if stacked:
        return ["."] * len(shape)
    names = []
    for k, n in enumerate(shape):
        axis = f"{name}_index_{k}" if f"{name}_index_{k}" not in taken else f"index_{k}"
        ds = nx.create_dataset(axis, data=np.arange(n, dtype=np.int64))
        ds.attrs["long_name"] = f"{name} index {k}" if len(shape) > 1 else f"{name} index"
        names.append(axis)
    return names


def _compact(g: h5py.Group, name: str, shape: tuple[int, ...], dtype: np.dtype) -> h5py.Dataset:
    """A dataset stored inside its object header, which HDF5 checksums.

    For results that cannot be chunked (scalars) and so cannot carry fletcher32.
    """
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.COMPACT)
    space = h5py.h5s.create(h5py.h5s.SCALAR) if shape == () else h5py.h5s.create_simple(shape)
    return h5py.Dataset(h5py.h5d.create(g.id, name.encode(), h5py.h5t.py_create(dtype),
                                        space, dcpl=dcpl))


def _chunks(shape: tuple[int, ...], itemsize: int, target: int = 1 << 20) -> tuple[int, ...] | None:
    """Chunks of about ``target`` bytes, cut along the leading dims."""
    if not shape or 0 in shape:
        return None
    chunks = list(shape)
    i = 0
    while int(np.prod(chunks, dtype=np.int64)) * itemsize > target and i < len(chunks):
        rest = int(np.prod(chunks[i + 1 :], dtype=np.int64)) * itemsize
        chunks[i] = max(1, target // max(1, rest))
        i += 1
    return tuple(chunks)


# the checkpoint -----------------------------------------------------------------

#: how a leaf of an accumulator is given back (column 0 of a slot's ``leaves``)
_NDARRAY, _NPSCALAR, _INT, _FLOAT, _COMPLEX, _BOOL = range(1, 7)
_PYTHON = {_INT: int, _FLOAT: float, _COMPLEX: complex, _BOOL: bool}
_MAXDIM = 32  # numpy's limit on ndim
CHECKPOINT_FORMAT = 2  # 1 was a pickle, which is never read


class _Unreadable(Exception):
    """A checkpoint slot that is torn, damaged or not laid out by this framebag."""


def _leaf(v: Any) -> tuple[int, np.ndarray]:
    """``(kind code, array)`` of an accumulator's leaf (see :func:`folds.check_state`)."""
    if isinstance(v, np.ndarray):
        return _NDARRAY, v
    if isinstance(v, np.generic):
        return _NPSCALAR, np.asarray(v)
    if isinstance(v, bool):
        return _BOOL, np.asarray(v, dtype=np.bool_)
    if isinstance(v, int):
        return _INT, np.asarray(v, dtype=np.int64)
    if isinstance(v, float):
        return _FLOAT, np.asarray(v, dtype=np.float64)
    if isinstance(v, complex):
        return _COMPLEX, np.asarray(v, dtype=np.complex128)
    raise TypeError(type(v).__name__)


def _layout_checkpoint(g: h5py.Group, templates: dict[str, Any]) -> None:
    """Lay out both slots, their trees shaped like each function's probed accumulator."""
    ck = g.create_group("checkpoint")
    ck.attrs["format"] = CHECKPOINT_FORMAT
    names = sorted(templates)
    for i in (0, 1):
        slot = ck.create_group(f"slot{i}")
        slot.create_dataset("meta", data=np.zeros(3, dtype=np.int64), chunks=(3,),
                            fletcher32=True)
        slot.create_dataset("done", shape=(0,), maxshape=(None,), dtype=np.uint8,
                            chunks=(1 << 16,), fletcher32=True)
        slot.create_dataset("none", data=np.ones(len(names), dtype=np.uint8),
                            maxshape=(None,), chunks=(max(1, len(names)),), fletcher32=True)
        accs = slot.create_group("accs")
        count = [0]
        for name in names:
            _layout_tree(accs, name, templates[name], count)
        slot.create_dataset("leaves", shape=(count[0], 2 + _MAXDIM), dtype=np.int64,
                            maxshape=(None, 2 + _MAXDIM), chunks=(max(1, count[0]), 2 + _MAXDIM),
                            fletcher32=True)


def _layout_tree(parent: h5py.Group, key: str, v: Any, count: list[int]) -> None:
    if v is None or type(v) in (tuple, list, dict):
        g = parent.create_group(key)
        g.attrs["kind"] = "none" if v is None else type(v).__name__
        if isinstance(v, dict):
            g.attrs["keys"] = list(v)
        for i, item in enumerate(v.values() if isinstance(v, dict) else v or ()):
            _layout_tree(g, str(i), item, count)
        return
    _, arr = _leaf(v)
    ds = parent.create_dataset(key, shape=(arr.size,), maxshape=(None,), dtype=arr.dtype,
                               chunks=_chunks((max(1, arr.size),), arr.dtype.itemsize),
                               fletcher32=True)
    ds.attrs["leaf"] = count[0]
    count[0] += 1


def _tree(node: h5py.Group | h5py.Dataset) -> tuple[Any, ...]:
    """The in-memory shape of a laid-out accumulator: ``(kind, ...)``, leaves hold datasets."""
    if isinstance(node, h5py.Dataset):
        return ("leaf", node, int(node.attrs["leaf"]))
    kind = node.attrs.get("kind")
    kind = kind.decode() if isinstance(kind, bytes) else kind
    if kind == "none":
        return ("none",)
    if kind not in ("tuple", "list", "dict"):
        raise _Unreadable(f"{node.name} is not a laid-out accumulator")
    children = [_tree(node[str(i)]) for i in range(len(node))]
    if kind == "dict":
        keys = [k.decode() if isinstance(k, bytes) else str(k) for k in node.attrs["keys"]]
        if len(keys) != len(children):
            raise _Unreadable(f"{node.name} has {len(children)} items for {len(keys)} keys")
        return ("dict", keys, children)
    return (kind, children)


class _Slot:
    """One checkpoint slot of an open output, with its accumulators' trees read once."""

    def __init__(self, g: h5py.Group) -> None:
        self.g = g
        if not isinstance(g.get("accs", getlink=True), h5py.HardLink) \
                or not isinstance(g.get("meta"), h5py.Dataset):
            raise _Unreadable(f"{g.name} is not a checkpoint slot of this framebag")
        accs = g["accs"]
        self.names = sorted(accs)
        self.trees = {name: _tree(accs[name]) for name in self.names}


def _put(tree: tuple[Any, ...], v: Any, rows: np.ndarray, crc: int, where: str) -> int:
    kind = tree[0]
    if kind == "leaf":
        _, ds, row = tree
        try:
            code, arr = _leaf(v)
        except TypeError:
            raise _Changed(f"{where} is of type {type(v).__name__}") from None
        if arr.dtype != ds.dtype:
            raise _Changed(f"{where} has dtype {arr.dtype}, not {ds.dtype}")
        flat = np.ascontiguousarray(arr).reshape(-1)
        if ds.shape[0] != flat.size:
            ds.resize((flat.size,))
        if flat.size:
            ds.write_direct(flat)
        rows[row] = 0
        rows[row, :2] = code, arr.ndim
        rows[row, 2 : 2 + arr.ndim] = arr.shape
        return _crc(flat, crc)
    if kind == "none":
        if v is not None:
            raise _Changed(f"{where} is {type(v).__name__}, not None")
        return crc
    children = tree[-1]
    if type(v).__name__ != kind:
        raise _Changed(f"{where} is {type(v).__name__}, not {kind}")
    if kind == "dict":
        if list(v) != tree[1]:
            raise _Changed(f"{where} has keys {list(v)}, not {tree[1]}")
        items = list(zip(v.values(), [f"{where}[{k!r}]" for k in v]))
    else:
        if len(v) != len(children):
            raise _Changed(f"{where} has {len(v)} items, not {len(children)}")
        items = [(item, f"{where}[{i}]") for i, item in enumerate(v)]
    for child, (item, at) in zip(children, items):
        crc = _put(child, item, rows, crc, at)
    return crc


def _get(tree: tuple[Any, ...], rows: np.ndarray, crc: int) -> tuple[Any, int]:
    kind = tree[0]
    if kind == "leaf":
        _, ds, row = tree
        if not 0 <= row < len(rows):
            raise _Unreadable(f"{ds.name} has no row in the leaves table")
        code, ndim = (int(x) for x in rows[row, :2])
        shape = tuple(int(x) for x in rows[row, 2 : 2 + ndim]) if 0 <= ndim <= _MAXDIM else None
        if code not in (_NDARRAY, _NPSCALAR, *_PYTHON) or shape is None \
                or min(shape, default=0) < 0 or ds.shape[0] != int(np.prod(shape, dtype=np.int64)) \
                or (code != _NDARRAY and shape != ()):
            raise _Unreadable(f"{ds.name} does not match its row in the leaves table")
        flat = ds[()]
        crc = _crc(flat, crc)
        arr = flat.reshape(shape)
        if code == _NDARRAY:
            return arr, crc
        if code == _NPSCALAR:
            return arr[()], crc
        return _PYTHON[code](arr[()]), crc
    if kind == "none":
        return None, crc
    items = []
    for child in tree[-1]:
        item, crc = _get(child, rows, crc)
        items.append(item)
    if kind == "dict":
        return dict(zip(tree[1], items)), crc
    return (tuple(items) if kind == "tuple" else items), crc


class _Changed(Exception):
    """An accumulator that no longer fits the structure laid out from the first frame."""


def _head_crc(generation: int, n_errors: int, done: np.ndarray, none: np.ndarray) -> int:
    crc = _crc(np.array([generation, n_errors], dtype="<i8"), 0)
    return _crc(np.asarray(none, dtype=np.uint8), _crc(np.asarray(done, dtype=np.uint8), crc))


def _crc(a: np.ndarray, crc: int) -> int:
    """CRC-32 of the bytes of ``a`` (as stored), continuing ``crc``."""
    return zlib.crc32(np.ascontiguousarray(a).reshape(-1).view(np.uint8).data, crc)


def _drop_chunks(g: h5py.Group) -> None:
    """Free the chunks of the resizable datasets under slot ``g``, keeping their shapes.

    For the slot a resumed run writes next, which may be the one that failed its
    checksum: HDF5 reads a chunk that a write covers only in part (the packed done
    mask fills a fraction of its chunk), and a damaged chunk would fail every
    checkpoint. A dropped chunk reads as zeros, so the slot fails its CRC until it
    is written whole; the slot read back is left as it is.
    """
    def drop(_: str, ds: Any) -> None:
        if isinstance(ds, h5py.Dataset) and ds.chunks and ds.maxshape[0] is None:
            shape = ds.shape
            ds.resize((0, *shape[1:]))
            ds.resize(shape)
    g.visititems(drop)


def _write_checkpoint(slot: _Slot, f: h5py.File, state: dict[str, Any],
                      span: tuple[int, int] | None = None) -> int:
    """Write ``state`` into ``slot``, flush, then stamp its ``meta`` (see the module doc).

    ``span``: the slot already holds the packed done mask but for these bytes
    (None: write it whole). Returns the array bytes written.
    """
    g = slot.g
    accs = state["accs"]
    none = np.array([accs.get(name) is None for name in slot.names], dtype=np.uint8)
    done = np.ascontiguousarray(state["done"], dtype=np.uint8)
    ds = g["done"]
    if ds.shape[0] != done.size:
        ds.resize((done.size,))
        span = None  # what it held is not laid out as it is now: write it whole
    lo, hi = (0, done.size) if span is None else span
    if hi > lo:
        ds[lo:hi] = done[lo:hi]
    written = hi - lo
    g["none"][...] = none
    crc = _head_crc(state["generation"], state["n_errors"], done, none)
    rows = np.zeros(g["leaves"].shape, dtype=np.int64)
    for name, is_none in zip(slot.names, none):
        if is_none:
            continue
        try:
            crc = _put(slot.trees[name], accs[name], rows, crc, "accumulator")
        except _Changed as exc:
            raise FramebagError(
                f"the fold of function {name!r} changed its accumulator since the first frame "
                f"({exc}); an accumulator must keep the containers, keys and dtypes it had "
                "(its arrays may change shape)"
            ) from None
    if rows.size:
        g["leaves"][...] = rows
    crc = _crc(rows.astype("<i8"), crc)
    f.flush()
    g["meta"][...] = [state["generation"], state["n_errors"], crc]
    f.flush()
    return written + rows.nbytes + sum(_leaf_nbytes(slot.trees[name]) for name, is_none
                                       in zip(slot.names, none) if not is_none)


def _leaf_nbytes(tree: tuple[Any, ...]) -> int:
    """The bytes held by the datasets of a laid-out accumulator (as last written)."""
    if tree[0] == "leaf":
        return int(tree[1].shape[0]) * tree[1].dtype.itemsize
    return 0 if tree[0] == "none" else sum(_leaf_nbytes(child) for child in tree[-1])


def _read_slot(g: h5py.Group, generation: int, n_errors: int, crc: int) -> dict[str, Any]:
    slot = _Slot(g)
    done = g["done"][()]
    none = g["none"][()]
    rows = g["leaves"][()]
    if len(none) != len(slot.names) or rows.ndim != 2 or rows.shape[1] != 2 + _MAXDIM:
        raise _Unreadable(f"{g.name} is laid out for other functions")
    have = _head_crc(generation, n_errors, done, none)
    accs: dict[str, Any] = {}
    for name, is_none in zip(slot.names, none):
        if not is_none:
            accs[name], have = _get(slot.trees[name], rows, have)
    have = _crc(rows.astype("<i8"), have)
    if have != crc:
        raise _Unreadable(f"{g.name} fails its CRC (torn or damaged)")
    return {"generation": generation, "done": done, "accs": accs, "n_errors": n_errors}


def _read_checkpoint(ck: h5py.Group) -> dict[str, Any] | None:
    """The newest valid slot's state, or None if nothing was ever committed.

    Raises :class:`_Unreadable` when no slot is valid though one was committed,
    or when the checkpoint is not one this framebag wrote.
    """
    if ck.attrs.get("format") != CHECKPOINT_FORMAT:
        raise _Unreadable("it was written by an older framebag, in a format that is no longer "
                          "read")
    metas: list[tuple[int, int, int, int]] = []
    reasons = []
    for i in (0, 1):
        try:
            gen, n_errors, crc = (int(x) for x in ck[f"slot{i}/meta"][()])
        except (OSError, KeyError, ValueError, TypeError) as exc:
            reasons.append(f"slot{i}: {_first_line(exc)}")
            continue
        metas.append((gen, i, n_errors, crc))
    if not reasons and all(m[0] == 0 for m in metas):
        return None  # laid out, never committed: nothing is done yet
    for gen, i, n_errors, crc in sorted(metas, reverse=True):
        if gen <= 0:
            continue
        try:
            state = _read_slot(ck[f"slot{i}"], gen, n_errors, crc)
        except (_Unreadable, OSError, KeyError, ValueError, TypeError) as exc:
            reasons.append(f"slot{i}: {_first_line(exc)}")
            continue
        state["slot"] = i
        return state
    raise _Unreadable("; ".join(reasons) or "no slot is valid")


def read_checkpoint(path: Path, group: h5py.Group) -> dict[str, Any] | None:
    """The checkpoint of ``group`` (see :func:`_read_checkpoint`), or a FramebagError.

    An unreadable checkpoint stops resume with a sentence that offers ``--overwrite``:
    resuming from zero would silently redo (and, for folds, double) the work.
    """
    try:
        ck = group["checkpoint"]
        if not isinstance(ck, h5py.Group):
            raise _Unreadable("it is not a group")
        return _read_checkpoint(ck)
    except (_Unreadable, OSError, KeyError) as exc:
        raise FramebagError(
            f"--resume: the checkpoint of {str(path)!r} ({group.name}/checkpoint) cannot be read "
            f"({_first_line(exc)}); use --overwrite to start again"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().strip("'\"")
    # HDF5's text may advise h5clear, which would corrupt a file another run writes
    text = re.sub(r"\s*\(may use <h5clear file>[^)]*\)", "", text)
    return text.splitlines()[0] if text else type(exc).__name__


def verify(path: Path, group: h5py.Group) -> None:
    """Check every object of a workflow's output group, so nothing damaged is written to.

    Every object header and attribute is read; every result, ``done`` and
    ``errors`` is read whole, so HDF5 checks every chunk (fletcher32); of the
    checkpoint only the chunk indexes are read, since a damaged chunk there is
    the other slot's business (:func:`read_checkpoint`) and is rewritten whole.
    Damaged metadata must be found here, by a plain or bounded open: once the
    file is in SWMR write mode, HDF5 retries a bad metadata read for minutes.
    Fails with one sentence naming the output and the dataset.
    """
    _check_group(path, group, in_checkpoint=False)


def _check_group(path: Path, group: h5py.Group, in_checkpoint: bool,
                 seen: set[Any] | None = None) -> None:
    seen = set() if seen is None else seen  # an object linked twice (NXdata) is read once
    for name in sorted(group):
        where = f"{group.name}/{name}"
        try:
            obj = group[name]
            if obj.id in seen:
                continue
            seen.add(obj.id)
            dict(obj.attrs)
            if isinstance(obj, h5py.Group):
                _check_group(path, obj, in_checkpoint or name == "checkpoint", seen)
            elif not in_checkpoint:
                _read_whole(obj)
            elif obj.chunks is not None:
                for i in range(obj.id.get_num_chunks()):
                    obj.id.get_chunk_info(i)
        except FramebagError:
            raise
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            raise FramebagError(
                f"--resume: {where} of output file {str(path)!r} is damaged "
                f"({_first_line(exc)}); use --overwrite to start again"
            ) from None


def _open_to_resume(path: Path) -> h5py.File:
    """``path`` open for writing again, or one sentence saying why not.

    When it cannot be opened for writing (a killed writer's "open for write" flag, or
    a reader holding HDF5's file lock) it is first copied into a fresh file, which
    takes its place; a reader that had it open keeps reading the old copy. If the
    fresh file cannot be opened either (another program opened it in between), that
    program is named as the cause.
    """
    try:
        return h5py.File(path, "r+", libver=LIBVER)
    except OSError:
        with _damaged(path):
            _unflag(path)
    try:
        return h5py.File(path, "r+", libver=LIBVER)
    except OSError as exc:
        if "unable to lock file" in str(exc) or isinstance(exc, BlockingIOError):
            raise FramebagError(
                f"--resume: output file {str(path)!r} is open in another program that holds "
                "HDF5's file lock on it (a reader that did not open it in SWMR mode?); close "
                "it there, then rerun") from None
        raise FramebagError(f"--resume: output file {str(path)!r} is damaged "
                            f"({_first_line(exc)}); use --overwrite to start again") from None


@contextlib.contextmanager
def _damaged(path: Path) -> Iterator[None]:
    """Turn an h5py error on a damaged output into one sentence that offers --overwrite."""
    try:
        yield
    except (OSError, KeyError, RuntimeError) as exc:
        raise FramebagError(f"--resume: output file {str(path)!r} is damaged "
                            f"({_first_line(exc)}); use --overwrite to start again") from None


def _read_whole(ds: h5py.Dataset, budget: int = 64 << 20) -> None:
    """Read ``ds`` in slabs of whole chunks along axis 0, about ``budget`` bytes each."""
    if ds.shape == () or ds.chunks is None or ds.size == 0:
        ds[()]
        return
    row = int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize
    step = max(1, budget // max(1, row * ds.chunks[0])) * ds.chunks[0]
    for start in range(0, ds.shape[0], step):
        ds[start : start + step]


def open_existing(path: Path) -> h5py.File:
    """Open an existing output read-only, in bounded time, or say why not in one sentence.

    A plain (non-SWMR) open first; only a file flagged "open for write" by a
    killed writer is opened with SWMR read, its metadata retries bounded (see
    the module docstring).
    """
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        if "already open for write" not in str(exc):
            raise FramebagError(f"--resume: cannot read output file {str(path)!r} "
                                f"({_first_line(exc)}); use --overwrite to start again") from None
    try:
        return open_swmr_read(path)
    except OSError as exc:
        raise FramebagError(f"--resume: cannot read output file {str(path)!r} "
                            f"({_first_line(exc)}); use --overwrite to start again") from None


def check_resumable(path: Path, workflow: str, provenance: dict[str, Any],
                    scan_shape: tuple[int, ...], data: DataInfo | None = None) -> None:
    """Check, read-only, that ``path`` is an earlier output of this very job.

    With ``data`` (the input's data dataset now), the input is also compared
    with the fingerprint the output recorded (:func:`framebag.fingerprint.check`).
    """
    with open_existing(path) as f, _damaged(path):
        group = f.get(f"entry/{workflow}")
        if group is None:
            found = ", ".join(f["entry"]) if "entry" in f else "none"
            raise FramebagError(
                f"--resume: {str(path)!r} holds no framebag output of workflow {workflow!r} "
                f"(found: {found})"
            )
        _check_same(path, group.attrs, provenance)
        fingerprint.check_setups(str(path), group.attrs.get(fingerprint.SETUP_ATTR),
                                 provenance.get(fingerprint.SETUP_ATTR, {}))
        had = tuple(int(x) for x in group.attrs["scan_shape"])
        growing = group["done"].maxshape[0] is None
        if had != tuple(scan_shape) and not (
                growing and had[1:] == tuple(scan_shape[1:]) and had[0] <= scan_shape[0]):
            raise FramebagError(
                f"--resume: {str(path)!r} was made for scan shape {had}, but the input "
                f"now has scan shape {tuple(scan_shape)}; use --overwrite to start again"
            )
        verify(path, group)
        read_checkpoint(path, group)
        if data is not None:
            fingerprint.check(str(path), group, data, list(provenance["keys"]), growing)


def _check_layout(path: Path, group: h5py.Group, schema: Schema, rank: int) -> None:
    """Refuse an output whose result datasets are not what this run would write."""
    for name, (is_stack, shape, dtype) in schema.items():
        ds = group.get(name)
        lead = rank if is_stack else 0
        if schema.meta.get(name, {}).get("fold") == "ragged":  # its table's rows
            lead = 1
            ds = ds.get("data") if isinstance(ds, h5py.Group) else None
        if not isinstance(ds, h5py.Dataset):
            raise FramebagError(f"--resume: {str(path)!r} has no result dataset {name!r}; use "
                                "--overwrite to start again")
        have = tuple(ds.shape[lead:])
        if ds.dtype != np.dtype(dtype) or have != tuple(shape):
            raise FramebagError(
                f"--resume: result {group.name}/{name} of {str(path)!r} has dtype {ds.dtype} and "
                f"value shape {have}, but this run gives dtype {np.dtype(dtype)} and shape "
                f"{tuple(shape)}; use --overwrite to start again")


def _check_same(path: Path, attrs: Any, provenance: dict[str, Any]) -> None:
    for key in ("workflow", "workflow_hash", "parameters", "input_file", "data", "keys",
                "scan_axes"):
        want = provenance.get(key)
        want = want if isinstance(want, (str, int, float)) else json.dumps(want)
        have = attrs.get(key)
        if isinstance(have, bytes):
            have = have.decode()
        if have != want and key == "scan_axes":
            made, given = (json.loads(str(text or "[]")) or [] for text in (have, want))
            if made != given:
                raise FramebagError(
                    f"--resume: {str(path)!r} was made with "
                    f"{_axes_text(made)}, but this run gives {_axes_text(given)}; resume "
                    f"with {_axes_text(made)} (or use --overwrite to start again)")
            continue
        if have != want and key == "workflow_hash":
            raise FramebagError(
                f"--resume: the workflow's source file changed since {str(path)!r} was made "
                f"(its sha256 was {str(have)[:12]}..., now {str(want)[:12]}...), so the frames "
                "done so far may not match what it computes now; use --overwrite to start again"
            )
        if have != want:
            what = {"data": "data dataset",
                    "keys": "key datasets"}.get(key, key.replace("_", " "))
            raise FramebagError(
                f"--resume: {str(path)!r} does not match this run ({what}: {have!r} there, "
                f"{want!r} now); use --overwrite to start again"
            )


def _axes_text(axes: list[str]) -> str:
    """Scan axes as the option that gives them: ``--axes A B``, or ``no --axes``."""
    return f"--axes {' '.join(axes)}" if axes else "no --axes (index axes)"


def _unflag(path: Path) -> None:
    """Clear a crashed writer's "open for write" flag by copying into a fresh file.

    The copy needs free space for the whole file; a failure to write it is an
    :class:`OutputWriteError` that leaves the output as it was.
    """
    tmp = _temp_beside(path)
    dst = None
    try:
        with open_swmr_read(path) as src:
            dst = h5py.File(tmp, "w", libver=LIBVER)
            for key, value in src.attrs.items():
                dst.attrs[key] = value
            for name in src:
                src.copy(src[name], dst, name=name)
            dst.close()
        shutil.copymode(path, tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        if dst is not None:
            detach(dst)
        Path(tmp).unlink(missing_ok=True)
        reason = os_reason(exc)
        if reason is not None:
            raise OutputWriteError(
                f"--resume: cannot repair output file {str(path)!r} (left flagged open by an "
                f"interrupted run) by copying it: {reason}; the copy needs "
                f"{os.path.getsize(path) / 2**20:.1f} MiB free beside it") from exc
        raise
