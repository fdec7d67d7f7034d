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
        fingerprint/            the input's identity, for resume (see framebag.fingerprint)

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
import re
import shutil
import zlib
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import fingerprint
from .errors import FramebagError
from .keys import DataInfo
from .lock import OutputLock
from .partitions import blocks, selection_shape

__all__ = ["OutputFile", "Schema", "default_output_path", "RESERVED", "results", "create_swmr"]

#: the datasets and groups of the layout itself, beside the results, in /entry/<workflow>
RESERVED = ("done", "errors", "checkpoint", fingerprint.GROUP)
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
        one = (1,) * len(self.scan_shape) + vshape
        for start, stop in spans:
            if stop - start == 1:  # the common case when completion is fragmented
                index, rest = [], int(start)
                for n in reversed(self.scan_shape):
                    rest, i = divmod(rest, n)
                    index.append(i)
                fspace.select_hyperslab(tuple(reversed(index)) + zeros, one,
                                        op=h5py.h5s.SELECT_OR)
                continue
            for sel, _ in blocks(start, stop, self.scan_shape):
                fspace.select_hyperslab(tuple(s.start for s in sel) + zeros,
                                        selection_shape(sel) + vshape, op=h5py.h5s.SELECT_OR)
        values = runs[0][2] if len(runs) == 1 else np.concatenate([v for _, _, v in runs])
        values = np.ascontiguousarray(values)
        ds.id.write(h5py.h5s.create_simple(values.shape), fspace, values)

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
    tmp = _temp_beside(path)
    f = None
    try:
        f = h5py.File(tmp, "w", libver=LIBVER)
        layout(f)
        f.swmr_mode = True
        os.replace(tmp, path)
    except BaseException as exc:
        if f is not None:
            detach(f)
        Path(tmp).unlink(missing_ok=True)
        failed = write_error(path, exc)
        if failed is not None:
            raise failed from exc
        raise
    return f


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
    if fingerprint.ATTR in provenance:
        fingerprint.layout(g, len(provenance["keys"]), int(np.prod(scan_shape, dtype=np.int64)))
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
                    scan_shape: tuple[int, ...], data: DataInfo | None = None) -> None:
    """Check, read-only, that ``path`` is an earlier output of this very job.

    With ``data`` (the input's data dataset now), the input is also compared
    with the fingerprint the output recorded (:func:`framebag.fingerprint.check`).
    """
    try:
        f = h5py.File(path, "r", swmr=True)
    except OSError as exc:
        # HDF5's text may advise h5clear, which would corrupt a file another run writes
        reason = re.sub(r"\s*\(may use <h5clear file>[^)]*\)", "", str(exc).splitlines()[0])
        raise FramebagError(f"--resume: cannot read output file {str(path)!r}: {reason}") from None
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
        if data is not None:
            fingerprint.check(str(path), group, data, list(provenance["keys"]), growing)


def _check_same(path: Path, attrs: Any, provenance: dict[str, Any]) -> None:
    for key in ("workflow", "workflow_hash", "parameters", "input_file", "data", "keys"):
        want = provenance.get(key)
        want = want if isinstance(want, (str, int, float)) else json.dumps(want)
        have = attrs.get(key)
        if isinstance(have, bytes):
            have = have.decode()
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


def _unflag(path: Path) -> None:
    """Clear a crashed writer's "open for write" flag by copying into a fresh file.

    The copy needs free space for the whole file; a failure to write it is an
    :class:`OutputWriteError` that leaves the output as it was.
    """
    tmp = _temp_beside(path)
    dst = None
    try:
        with h5py.File(path, "r", swmr=True) as src:
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
