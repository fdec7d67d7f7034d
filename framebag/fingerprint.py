"""The input's fingerprint in the output, so that ``--resume`` refuses any other input.

Comparing the input's path is not enough: a scan re-simulated or re-acquired at
the same path would be resumed into the old results. The output records:

- **what the data dataset is** (the ``input_fingerprint`` attribute, JSON): its
  frame shape, its scan shape (only the dims after the first for a growing
  scan), dtype, chunking and filters (id and options of each);
- **the key values of the frames done** (``fingerprint/keys``, float64, one row
  per key dataset, one column per flat index, 0 where no frame was recorded),
  written for each commit's newly done frames before the commit's flush, so
  every frame a checkpoint marks done has its key values recorded;
- **the content of a sample of frames done** (``fingerprint/frames``, int64 rows
  of ``(flat index, CRC32 of the frame's values)``): the lowest and the highest
  flat index done so far. A frame is read (decompressed) on the driver only when
  the lowest or highest done index changes, at most two frame reads per commit.
  Decoded values rather than raw chunk bytes: a chunk is shared by frames done
  at different times, and its raw bytes are those of a partly written chunk
  in a live file, while a done frame's values never change.

:func:`check` compares all three against the input as it is now and names the
first difference in one sentence. A followed scan that only grew is the same
input: only the frames recorded are compared.

The recorded flat indices are independent of the checkpoint's done mask, so
none of this depends on how checkpoints are stored.

The per-worker setups (``@workflow.setup``) read files of their own (a mask, a
calibration): :func:`describe_setups` records, in the ``setup`` attribute, each
setup's parameters and the sha256 of every existing file a parameter names, and
:func:`check_setups` refuses to resume when one of those files changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from pathlib import PurePath
from typing import Any

import h5py
import numpy as np

from . import hdf5
from .errors import FramebagError
from .keys import DataInfo
from .partitions import blocks, scan_index
from .reading import read_run

__all__ = ["ATTR", "GROUP", "SETUP_ATTR", "describe", "layout", "Recorder", "check",
           "describe_setups", "check_setups"]

#: the provenance attribute holding the static part
ATTR = "input_fingerprint"
#: the group, in /entry/<workflow>, holding the per-frame part
GROUP = "fingerprint"
_COLUMNS = 4096
#: the provenance attribute of the setups: parameters, and the files they name by content
SETUP_ATTR = "setup"


def describe(info: DataInfo, growing: bool) -> dict[str, Any]:
    """The static fingerprint of the data dataset: shape, dtype, chunking, filters."""
    ds = hdf5.dataset(info.path, info.name)
    dcpl = ds.id.get_create_plist()
    filters = []
    for i in range(dcpl.get_nfilters()):
        code, _flags, values, _name = dcpl.get_filter(i)
        filters.append([int(code), [int(v) for v in values]])
    return {
        "frame_shape": list(info.frame_shape),
        "scan_shape": list(info.scan_shape[1:] if growing else info.scan_shape),
        "growing": bool(growing),
        "dtype": np.dtype(info.dtype).str,
        "chunks": list(info.chunks) if info.chunks else None,
        "filters": filters,
    }


def layout(group: h5py.Group, nkeys: int, nframes: int) -> None:
    """Create the per-frame fingerprint datasets (before the file goes SWMR)."""
    g = group.create_group(GROUP)
    # a keyless input has no key values: zero rows (HDF5 wants chunk dims of at least 1)
    g.create_dataset("keys", shape=(nkeys, nframes), maxshape=(max(nkeys, 1), None),
                     dtype="f8", fillvalue=0, chunks=(max(nkeys, 1), _COLUMNS))
    g.create_dataset("frames", data=np.full((2, 2), -1, dtype=np.int64))


def _frame_crc(info: DataInfo, flat: int, live: bool = False) -> int:
    """CRC32 of frame ``flat``'s values; ``live``: refresh the data first (it may have grown)."""
    frame = read_run(info.path, info.name, flat, flat + 1, info.scan_shape, info.frame_shape,
                     info.dtype, refresh=live)
    return zlib.crc32(np.ascontiguousarray(frame).data)


class Recorder:
    """The driver's writer of the per-frame fingerprint, one call per commit."""

    def __init__(self, keys: list[str], group: h5py.Group, live: bool = False) -> None:
        self.keys = list(keys)
        self.live = live
        self.group = group[GROUP]
        self.rows = self.group["frames"][()]

    def note(self, info: DataInfo, newly_done: np.ndarray) -> None:
        """Record the key values of ``newly_done`` (flat indices) and update the sample."""
        if newly_done.size == 0:
            return
        if self.keys:
            self._note_keys(info, newly_done)
        self._note_frames(newly_done, info)

    def _note_keys(self, info: DataInfo, newly_done: np.ndarray) -> None:
        ds = self.group["keys"]
        lo, top = int(newly_done.min()), int(newly_done.max()) + 1
        if ds.shape[1] < top:
            ds.resize(top, axis=1)
        # one read of each key over the span of the new frames (at most one poll's worth),
        # never one per frame or per run: out-of-order frames make many short runs
        stored = ds[:, lo:top]
        for k, name in enumerate(self.keys):
            key = hdf5.dataset(info.path, name)
            values = np.concatenate([np.asarray(key[sel], dtype=np.float64).reshape(-1)
                                     for sel, _ in blocks(lo, top, info.scan_shape)])
            stored[k, newly_done - lo] = values[newly_done - lo]
        ds[:, lo:top] = stored

    def _note_frames(self, newly_done: np.ndarray, info: DataInfo) -> None:
        lo, hi = int(newly_done.min()), int(newly_done.max())
        changed = False
        if self.rows[0, 0] < 0 or lo < self.rows[0, 0]:
            self.rows[0] = (lo, _frame_crc(info, lo, self.live))
            changed = True
        if hi > self.rows[1, 0]:
            self.rows[1] = (hi, _frame_crc(info, hi, self.live))
            changed = True
        if changed:
            self.group["frames"][...] = self.rows


def check(path: str, group: h5py.Group, info: DataInfo, keys: list[str],
          growing: bool) -> None:
    """Refuse, in one sentence saying what differs, an input that is not the recorded one."""
    where = f"--resume: input file {info.path!r} is not the one {path!r} was made from"
    tail = "; use --overwrite to start again"
    text = group.attrs.get(ATTR)
    if text is None or GROUP not in group:
        raise FramebagError(f"--resume: {path!r} records no fingerprint of its input (made by "
                            f"an older framebag), so it cannot be resumed safely{tail}")
    had = json.loads(hdf5.attr_text(text))
    now = describe(info, growing)
    names = {"frame_shape": "frame shape", "scan_shape": "scan shape", "growing": "growing",
             "dtype": "dtype", "chunks": "chunking", "filters": "filters"}
    for field, what in names.items():
        if had.get(field) != now[field]:
            raise FramebagError(f"{where} (data {info.name!r}: {what} {_show(had.get(field))} "
                                f"there, {_show(now[field])} now){tail}")
    rec = group[GROUP]["keys"][()]
    for k, name in enumerate(keys):
        current = np.asarray(hdf5.dataset(info.path, name)[()], dtype=np.float64).reshape(-1)
        recorded = np.flatnonzero(rec[k] != 0)
        if recorded.size == 0:
            continue
        if recorded[-1] >= current.size:
            raise FramebagError(f"{where} (key dataset {name!r} is shorter: frame "
                                f"{scan_index(int(recorded[-1]), info.scan_shape)} is gone){tail}")
        differ = recorded[current[recorded] != rec[k][recorded]]
        if differ.size:
            i = int(differ[0])
            raise FramebagError(
                f"{where} (key dataset {name!r} at frame {scan_index(i, info.scan_shape)}: "
                f"{_show(rec[k][i])} there, {_show(current[i])} now){tail}")
    for flat, crc in group[GROUP]["frames"][()]:
        if flat < 0:
            continue
        if flat >= info.nframes or _frame_crc(info, int(flat), live=True) != crc:
            raise FramebagError(f"{where} (content of frame "
                                f"{scan_index(int(flat), info.scan_shape)} differs){tail}")


def _sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def describe_setups(setups: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each setup's parameters (``setup -> {parameter: value}``) and, for every value
    that is the path of an existing file, that file's absolute path and sha256."""
    out: dict[str, Any] = {}
    for name, kw in setups.items():
        files = {}
        for param, value in kw.items():
            if isinstance(value, (str, os.PathLike)) and str(value) and os.path.isfile(value):
                files[param] = {"path": os.path.abspath(value), "sha256": _sha256(value)}
        out[name] = {"parameters": {k: os.fspath(v) if isinstance(v, PurePath) else v
                                    for k, v in kw.items()},
                     "files": files}
    return out


def check_setups(path: str, recorded: Any, now: dict[str, Any]) -> None:
    """Refuse, in one sentence naming the setup, parameter and file, to resume an output
    whose setup files (``recorded``: its ``setup`` attribute) differ from ``now``'s."""
    had = json.loads(hdf5.attr_text(recorded)) if recorded is not None else {}
    tail = "; use --overwrite to start again"
    for name, entry in now.items():
        before = had.get(name, {}).get("files", {})
        for param in sorted(set(before) | set(entry["files"])):
            a, b = before.get(param), entry["files"].get(param)
            if a == b:
                continue
            if a is None:
                raise FramebagError(f"--resume: setup {name!r} parameter {param!r} names the file "
                                    f"{b['path']!r} now, which was no file when {path!r} was "
                                    f"made{tail}")
            if b is None:
                raise FramebagError(f"--resume: setup {name!r} file {a['path']!r} (parameter "
                                    f"{param!r}) is gone since {path!r} was made{tail}")
            raise FramebagError(
                f"--resume: setup {name!r} file {b['path']!r} (parameter {param!r}) changed "
                f"since {path!r} was made (sha256 {a['sha256'][:12]}... then, "
                f"{b['sha256'][:12]}... now){tail}")


def _show(value: Any) -> str:
    if isinstance(value, list):
        return str(tuple(_show(v) if isinstance(v, list) else v for v in value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
