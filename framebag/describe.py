"""What an HDF5 file holds, for the commands that show it (inspect, plot, workflows).

:func:`framebag_groups` finds framebag's output groups in a file,
:func:`guess_layout` the likely data, key and finished-flag datasets of a
detector file (by the key contract of :class:`~framebag.keys.KeyFollower`),
:func:`open_for_write` whether a writer holds (or held) the file, and
:func:`table` lays rows out as text columns. The commands are
:mod:`framebag.inspect`, :mod:`framebag.plot` and :mod:`framebag.catalog`.
"""

from __future__ import annotations

import os

import h5py
import numpy as np

from . import hdf5
from .hdf5 import attr_text
from .keys import extent, scan_rank_of

__all__ = ["framebag_groups", "guess_layout", "open_for_write", "table", "KEY_KINDS"]


def open_for_write(path: str | os.PathLike) -> bool:
    """True if the file is flagged "open for write" (a SWMR writer has it, or was killed)."""
    try:
        with h5py.File(path, "r"):
            return False
    except OSError:
        return True


def framebag_groups(f: h5py.File) -> list[tuple[str, h5py.Group]]:
    """``(workflow, group)`` of every framebag NXprocess group under ``/entry``."""
    entry = f.get("entry")
    if not isinstance(entry, h5py.Group):
        return []
    out = []
    for name, g in entry.items():
        if isinstance(g, h5py.Group) and attr_text(g.attrs.get("program")) == "framebag":
            out.append((name, g))
    return out


# describing datasets -----------------------------------------------------------------


def _filters(ds: h5py.Dataset) -> str:
    """The dataset's filter pipeline by name, plugins (bitshuffle, blosc ...) included."""
    plist = ds.id.get_create_plist()
    names = []
    for i in range(plist.get_nfilters()):
        code, _flags, values, name = plist.get_filter(i)
        label = name.decode("ascii", "replace").split(";")[0].split()[0] if name else str(code)
        if code == h5py.h5z.FILTER_DEFLATE and values:
            label = f"gzip({values[0]})"
        names.append(label)
    return "+".join(names) or "none"


def _datasets(f: h5py.File) -> list[tuple[str, h5py.Dataset]]:
    """The datasets to guess from: each once, by its own path, not by a soft link to it
    (NeXus links its NXdata to the detector's data; one dataset read under two paths
    would get two handles)."""
    return [(e.name, e.dataset) for e in hdf5.walk(f)
            if e.dataset is not None and not e.where.startswith("soft link")]


#: dtype kinds a key dataset may have (the run's rule, see :class:`~framebag.keys.KeyFollower`)
KEY_KINDS = "biuf"


def guess_layout(f: h5py.File) -> tuple[str | None, list[str], str | None]:
    """The likely ``(data, keys, finished)`` dataset paths of a detector file.

    Keys are numeric datasets (integer, float or bool) of rank >= 1; the data is
    the largest dataset whose leading dims equal a key's scan shape (its shape
    less trailing 1s) and that has frame dims after them; every such dataset of
    that scan shape is a key. Where no dataset matches exactly, keys that
    disagree with the data only in the length of the first scan dim are taken
    if "key" is in their path (the run processes the frames both cover). Where
    some candidates have "key" in their path, only those are offered (a float
    motor position of the scan's length is not a key). With no keys at all, the data
    is the largest numeric dataset of rank >= 2 and the keys are ``[]``. The
    finished flag is a dataset with "finish" in its name (whatever its size:
    the run refuses one of more than one element).
    """
    dsets = _datasets(f)
    numeric = [(n, d) for n, d in dsets if d.dtype.kind in KEY_KINDS and d.ndim >= 1]
    best: tuple[bool, int, str, list[str]] | None = None
    for name, d in dsets:
        if d.ndim < 2 or d.dtype.kind not in "biufc":
            continue
        found: list[tuple[bool, bool, int, str]] = []  # (exact, "key" in path, rank, path)
        for kname, k in numeric:
            if kname == name:
                continue
            rank = scan_rank_of(k.maxshape or k.shape)
            if rank >= d.ndim:
                continue
            have, want = extent(d, rank), extent(k, rank)
            named = "key" in kname.lower()
            if have == want or (named and have[1:] == want[1:]):
                found.append((have == want, named, rank, kname))
        if not found:
            continue
        exact = any(e for e, _, _, _ in found)
        named = any(n for e, n, _, _ in found if e == exact)
        chosen = [(r, k) for e, n, r, k in found if e == exact and (n or not named)]
        rank = min(r for r, _ in chosen)  # the shortest scan leaves the most frame dims
        names = [k for r, k in chosen if r == rank]
        size = int(np.prod(d.shape, dtype=np.int64)) * d.dtype.itemsize
        if best is None or (exact, size) > best[:2]:
            best = (exact, size, name, names)
    finished = next((n for n, d in dsets if "finish" in n.rsplit("/", 1)[-1].lower()), None)
    if best is not None:
        return best[2], best[3], finished
    plain = [(int(np.prod(d.shape, dtype=np.int64)) * d.dtype.itemsize, n) for n, d in dsets
             if d.ndim >= 2 and d.dtype.kind in "biufc" and n != finished]
    if plain:
        return max(plain)[1], [], finished
    return None, [], finished


def table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    """``rows`` as lines of left-aligned columns two spaces apart."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
