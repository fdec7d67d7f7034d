"""The output file: layout, done mask, checkpoints and resume. Written only by the driver.

Layout (NeXus)::

    /entry                      NXentry, default=<workflow>
    /entry/<workflow>           NXprocess; provenance in its attributes
        <function>              one dataset per function: scan_shape + value_shape for
                                stacks, the finalized fold (e.g. frame-shaped) otherwise
        done                    uint8, scan-shaped: 1 where a frame is in every result
        errors                  (flat, function, message) of frames skipped by on_error
        checkpoint/slot0,slot1  pickled fold accumulators + done mask (see below)
        checkpoint/meta         int64 (2, 3): generation, nbytes, crc32 of each slot

All datasets are created before the file enters SWMR mode, so other processes
can open it with ``swmr=True`` and watch results and ``done`` grow.

Checkpointing, and why resume is exact. Each :meth:`OutputFile.commit`:

1. writes the stacked values of the new frames, the current folded results and
   new error rows, and flushes;
2. writes the accumulators, done mask and error count, pickled, into the older
   of two slots, flushes, then stamps that slot's generation, size and CRC in
   ``meta`` and flushes again;
3. writes the public ``done`` mask and flushes.

A crash between any two steps leaves the newest *valid* slot describing a state
in which every done frame is in every accumulator exactly once (the slot is
written whole before it is stamped, and a torn slot fails its CRC so the other
slot is used). Stacked values are written before the slot that marks their
frames done; a frame written but not yet marked is simply redone on resume,
which overwrites it. ``--resume`` restores the accumulators and done mask from
the slot and rewrites ``done`` and the folded results from them.

A writer killed in SWMR mode leaves the file flagged "open for write" (what
``h5clear -s`` clears). Resume copies such a file, read with ``swmr=True``, into a
fresh file and atomically replaces the old one, so the user never needs h5clear.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
import zlib
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .errors import FramebagError
from .layout import RESERVED
from .partitions import blocks, selection_shape

__all__ = ["OutputFile", "Schema", "default_output_path", "RESERVED", "results", "create_swmr"]

ERROR_DTYPE = np.dtype([("flat", "<i8"), ("function", "S64"), ("message", "S256")])
LIBVER = ("v110", "latest")


def default_output_path(input_path: str | os.PathLike, workflow: str) -> Path:
    """``<stem>_<workflow>.h5`` next to the input."""
    p = Path(input_path)
    return p.with_name(f"{p.stem}_{workflow}.h5")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Schema(dict):
    """Per function: ``(is_stack, shape, dtype)`` of its output dataset."""


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
        self._value_shapes: dict[str, tuple[int, ...]] = {}
        self.n_errors = int(self.group["errors"].shape[0])

    # creating ------------------------------------------------------------------

    @classmethod
    def check_target(cls, path: str | os.PathLike, overwrite: bool, resume: bool) -> Path:
        """Refuse an existing output without --overwrite/--resume, or an unwritable path."""
        path = Path(path)
        if overwrite and resume:
            raise FramebagError("--overwrite and --resume contradict each other; choose one")
        if path.is_dir():
            raise FramebagError(f"output path {str(path)!r} is a directory, not a file")
        if path.exists() and not (overwrite or resume):
            raise FramebagError(
                f"output file {str(path)!r} exists; pass --overwrite to replace it "
                "or --resume to continue it"
            )
        parent = path.resolve().parent
        if not parent.is_dir():
            raise FramebagError(f"output directory {str(parent)!r} does not exist")
        if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise FramebagError(f"output file {str(path)!r} is not writable")
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
    def resume(cls, path: Path, workflow: str, provenance: dict[str, Any],
               scan_shape: tuple[int, ...]) -> tuple[OutputFile, dict[str, Any]]:
        """Reopen an earlier run's output after checking it is the same job.

        Returns the file and the restored accumulators; ``.done`` holds the done mask.
        """
        check_resumable(path, workflow, provenance, scan_shape)
        try:
            f = h5py.File(path, "r+", libver=LIBVER)
        except OSError:
            _unflag(path)
            f = h5py.File(path, "r+", libver=LIBVER)
        try:
            group = f[f"entry/{workflow}"]
            state = _read_checkpoint(group["checkpoint"])
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
            out.done[:] = np.unpackbits(state["done"], count=out.done.size).astype(bool)
            accs = state["accs"]
            out.n_errors = state["n_errors"]
            out.group["errors"].resize((out.n_errors,))
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

    def write_stack(self, name: str, start: int, stop: int, values: np.ndarray) -> None:
        """Place one partition's stacked values at its run's scan indices."""
        ds = self.group[name]
        vshape = values.shape[1:]
        offset = 0
        for sel, count in blocks(start, stop, self.scan_shape):
            src = values[offset : offset + count].reshape(selection_shape(sel) + vshape)
            ds.write_direct(np.ascontiguousarray(src), dest_sel=sel + (slice(None),) * len(vshape))
            offset += count

    def commit(self, newly_done: np.ndarray, results: dict[str, np.ndarray],
               accs: dict[str, Any], errors: list[tuple[int, str, str]]) -> None:
        """Make one combine step durable: results, then checkpoint, then ``done``."""
        for name, value in results.items():
            self.group[name][...] = value
        if errors:
            ds = self.group["errors"]
            rows = np.array(
                [(i, f.encode()[:64], m.encode("utf-8", "replace")[:256]) for i, f, m in errors],
                dtype=ERROR_DTYPE,
            )
            ds.resize((self.n_errors + len(rows),))
            ds[self.n_errors :] = rows
            self.n_errors += len(rows)
        self.f.flush()
        self.done[newly_done] = True
        self.generation += 1
        _write_checkpoint(self.group["checkpoint"], self.f, {
            "generation": self.generation,
            "done": np.packbits(self.done),
            "accs": accs,
            "n_errors": self.n_errors,
        })
        self.group["done"][...] = self.done.reshape(self.scan_shape)
        self.f.flush()

    def grow(self, scan_shape: tuple[int, ...]) -> None:
        """Extend ``done`` and the stacked results along the first scan dim (growing input).

        Only for an output created with ``growing=True``; the other scan dims stay.
        """
        scan_shape = tuple(int(x) for x in scan_shape)
        if scan_shape[0] <= self.scan_shape[0]:
            return
        for ds in self.group.values():
            if isinstance(ds, h5py.Dataset) and (ds.name.endswith("/done")
                                                 or ds.attrs.get("fold") == "stack"):
                ds.resize(scan_shape[0], axis=0)
        extra = int(np.prod(scan_shape, dtype=np.int64)) - self.done.size
        self.done = np.r_[self.done, np.zeros(extra, dtype=bool)]
        self.scan_shape = scan_shape
        self.group.attrs["scan_shape"] = np.asarray(scan_shape, dtype=np.int64)

    def close(self, status: str = "complete", **attrs: Any) -> None:
        """Stamp the end time and status, then close.

        The attributes are written on the open SWMR handle: reopening the file
        would be refused while any reader holds it open.
        """
        if not self.f.id.valid:
            return
        g = self.group
        g.attrs["end_time"] = _now()
        g.attrs["status"] = status
        for k, v in attrs.items():
            g.attrs[k] = v
        self.f.flush()
        self.f.close()


def create_swmr(path: Path, layout: Callable[[h5py.File], None]) -> h5py.File:
    """A new HDF5 file at ``path``, laid out by ``layout``, open for writing in SWMR mode.

    It is laid out under a temporary name, goes SWMR, and only then moves into
    place: readers can only ever find it in SWMR mode, so one that opens it early
    never blocks the writer (HDF5 file locking). On failure nothing is left behind.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    f = None
    try:
        f = h5py.File(tmp, "w", libver=LIBVER)
        layout(f)
        f.swmr_mode = True
        os.replace(tmp, path)
    except BaseException:
        if f is not None:
            f.close()
        Path(tmp).unlink(missing_ok=True)
        raise
    return f


def results(group: h5py.Group) -> list[tuple[str, h5py.Dataset]]:
    """``(function name, dataset)`` of every result in a workflow's output group."""
    return [(name, ds) for name, ds in group.items()
            if name not in RESERVED and isinstance(ds, h5py.Dataset)]


def _layout(f: h5py.File, workflow: str, scan_shape: tuple[int, ...], schema: Schema,
            provenance: dict[str, Any], growing: bool = False) -> None:
    # growing: the first scan dim is unlimited, and chunked as if it were already long
    grow = (None,) if growing else (scan_shape[0],)
    chunk_scan = (max(scan_shape[0], 256), *scan_shape[1:]) if growing else tuple(scan_shape)
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
        if is_stack:
            full = tuple(scan_shape) + tuple(shape)
            ds = g.create_dataset(name, shape=full, dtype=dtype, fillvalue=0,
                                  maxshape=grow + full[1:],
                                  chunks=_chunks(chunk_scan + tuple(shape),
                                                 np.dtype(dtype).itemsize))
            ds.attrs["fold"] = "stack"
        else:
            ds = g.create_dataset(name, shape=shape, dtype=dtype)
        ds.attrs["function"] = name
    g.create_dataset("done", shape=scan_shape, dtype=np.uint8, fillvalue=0,
                     maxshape=grow + tuple(scan_shape[1:]), chunks=_chunks(chunk_scan, 1))
    g.create_dataset("errors", shape=(0,), maxshape=(None,), dtype=ERROR_DTYPE, chunks=(256,))
    ck = g.create_group("checkpoint")
    for slot in ("slot0", "slot1"):
        ck.create_dataset(slot, shape=(0,), maxshape=(None,), dtype=np.uint8, chunks=(1 << 16,))
    ck.create_dataset("meta", data=np.zeros((2, 3), dtype=np.int64))


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


def _write_checkpoint(ck: h5py.Group, f: h5py.File, state: dict[str, Any]) -> None:
    blob = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    meta = ck["meta"][...]
    slot = int(np.argmin(meta[:, 0]))
    ds = ck[f"slot{slot}"]
    if ds.shape[0] < len(blob):
        ds.resize((len(blob),))
    ds[: len(blob)] = np.frombuffer(blob, dtype=np.uint8)
    f.flush()
    ck["meta"][slot] = [state["generation"], len(blob), zlib.crc32(blob)]
    f.flush()


def _read_checkpoint(ck: h5py.Group) -> dict[str, Any] | None:
    meta = ck["meta"][...]
    for slot in np.argsort(-meta[:, 0]):
        gen, nbytes, crc = (int(x) for x in meta[slot])
        if gen == 0:
            continue
        blob = ck[f"slot{slot}"][:nbytes].tobytes()
        if len(blob) == nbytes and zlib.crc32(blob) == crc:
            return pickle.loads(blob)
    return None


def check_resumable(path: Path, workflow: str, provenance: dict[str, Any],
                    scan_shape: tuple[int, ...]) -> None:
    """Check, read-only, that ``path`` is an earlier output of this very job."""
    try:
        f = h5py.File(path, "r", swmr=True)
    except OSError as exc:
        raise FramebagError(f"--resume: cannot read output file {str(path)!r}: {exc}") from None
    with f:
        group = f.get(f"entry/{workflow}")
        if group is None or "checkpoint" not in group:
            found = ", ".join(f["entry"]) if "entry" in f else "none"
            raise FramebagError(
                f"--resume: {str(path)!r} holds no framebag output of workflow {workflow!r} "
                f"(found: {found})"
            )
        _check_same(path, group.attrs, provenance)
        had = tuple(int(x) for x in group.attrs["scan_shape"])
        growing = group["done"].maxshape[0] is None
        if had != tuple(scan_shape) and not (
                growing and had[1:] == tuple(scan_shape[1:]) and had[0] <= scan_shape[0]):
            raise FramebagError(
                f"--resume: {str(path)!r} was made for scan shape {had}, but the input "
                f"now has scan shape {tuple(scan_shape)}; use --overwrite to start again"
            )


def _check_same(path: Path, attrs: Any, provenance: dict[str, Any]) -> None:
    for key in ("workflow", "workflow_hash", "parameters", "input_file", "data", "keys"):
        want = provenance.get(key)
        want = want if isinstance(want, (str, int, float)) else json.dumps(want)
        have = attrs.get(key)
        if isinstance(have, bytes):
            have = have.decode()
        if have != want:
            what = {"workflow_hash": "workflow source", "data": "data dataset",
                    "keys": "key datasets"}.get(key, key.replace("_", " "))
            raise FramebagError(
                f"--resume: {str(path)!r} does not match this run ({what}: {have!r} there, "
                f"{want!r} now); use --overwrite to start again"
            )


def _unflag(path: Path) -> None:
    """Clear a crashed writer's "open for write" flag by copying into a fresh file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(path, "r", swmr=True) as src, h5py.File(tmp, "w", libver=LIBVER) as dst:
            for key, value in src.attrs.items():
                dst.attrs[key] = value
            for name in src:
                src.copy(src[name], dst, name=name)
        shutil.copymode(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
