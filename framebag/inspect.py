"""``framebag inspect FILE``: what is in an input file, or what a framebag output holds.

For an input it lists every dataset (shape, dtype, chunks, filters), guesses
the data and key datasets by the key contract (keys are integer datasets whose
shape, less trailing length-1 dims, is the leading part of the data's shape),
counts the complete frames with the same :class:`~framebag.keys.KeyFollower`
the run uses, shows the finished flag and prints a ready ``framebag run``
command. For a framebag output it shows the provenance, the done fraction,
each result's fold, units, shape and NXdata axes, and the errors.

Files are opened read-only with ``swmr=True``: that opens finished files,
files being written in SWMR mode, and files a killed writer left flagged
"open for write" (which is reported).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import hdf5
from .hdf5 import attr_text
from .keys import KeyFollower, extent, scan_rank_of
from .output import NXDATA_SUFFIX, nxdata_of, results
from .partitions import scan_index

__all__ = ["inspect_file", "guess_layout", "framebag_groups", "add_parser", "EXAMPLE_WORKFLOW"]

#: the workflow the suggested command line uses
EXAMPLE_WORKFLOW = "framebag.workflows.frame_sum"


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
    return [(n, f[n]) for n in hdf5.list_datasets(f)]


def guess_layout(f: h5py.File) -> tuple[str | None, list[str], str | None]:
    """The likely ``(data, keys, finished)`` dataset paths of a detector file.

    Keys are integer datasets of rank >= 1; the data is the largest dataset whose
    leading dims equal a key's scan shape (its shape less trailing 1s) and that
    has frame dims after them; every integer dataset of that scan shape is a key.
    The finished flag is a one-element dataset with "finish" in its name.
    """
    dsets = _datasets(f)
    ints = [(n, d) for n, d in dsets if d.dtype.kind in "iu" and d.ndim >= 1]
    best: tuple[int, str, list[str]] | None = None
    for name, d in dsets:
        if d.ndim < 2 or d.dtype.kind not in "biufc":
            continue
        keys = []
        for kname, k in ints:
            if kname == name:
                continue
            rank = scan_rank_of(k.maxshape or k.shape)
            if rank < d.ndim and extent(d, rank) == extent(k, rank):
                keys.append((rank, kname))
        if not keys:
            continue
        rank = min(r for r, _ in keys)  # the shortest scan leaves the most frame dims
        shortest = [k for r, k in keys if r == rank]
        size = int(np.prod(d.shape, dtype=np.int64)) * d.dtype.itemsize
        if best is None or size > best[0]:
            best = (size, name, shortest)
    finished = next((n for n, d in dsets if "finish" in n.rsplit("/", 1)[-1].lower()
                     and d.size == 1), None)
    if best is None:
        return None, [], finished
    return best[1], best[2], finished


# the reports ---------------------------------------------------------------------------


def inspect_file(path: str | os.PathLike) -> str:
    """The text ``framebag inspect`` prints for ``path`` (an input or a framebag output)."""
    p = Path(path)
    flagged = open_for_write(p)  # only meaningful once the open below succeeds
    with hdf5.open_readonly(p, "file") as f:
        groups = framebag_groups(f)
        if groups:
            return _inspect_output(p, f, groups, flagged)
    try:
        return _inspect_input(p, flagged)
    finally:
        hdf5.close(str(p))


def table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    """``rows`` as lines of left-aligned columns two spaces apart."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def _inspect_input(p: Path, flagged: bool) -> str:
    f = hdf5.open_file(str(p))  # the process's one handle, shared with the KeyFollower below
    lines = [f"input file {p} ({p.stat().st_size / 2**20:.1f} MiB)"]
    if flagged:
        lines.append("  open for write: a SWMR writer has it now (or was killed); "
                     "follow it with --follow")
    dsets = _datasets(f)
    if not dsets:
        lines.append("  no datasets")
        return "\n".join(lines)
    rows = [["dataset", "shape", "dtype", "chunks", "filters"]]
    for name, d in dsets:
        shape = str(d.shape)
        if d.maxshape and d.maxshape != d.shape:
            shape += f" max {d.maxshape}"
        rows.append([name, shape, str(d.dtype), str(d.chunks) if d.chunks else "contiguous",
                     _filters(d)])
    lines += ["datasets:", *table(rows)]
    data, keys, finished = guess_layout(f)
    if data is None:
        lines.append("no data/key pair found: keys are integer datasets whose shape (less "
                     "trailing 1s) starts the data's shape")
        return "\n".join(lines)
    follower = KeyFollower(p, data, keys, None, live=False)
    complete = follower.poll()
    info = follower.data
    n, total = int(complete.sum()), complete.size
    lines.append(f"likely data: {data}  (scan shape {info.scan_shape}, "
                 f"frame shape {info.frame_shape}, {info.dtype})")
    lines.append(f"likely keys: {', '.join(keys)}")
    flag_value = None
    if finished:
        flag_value = np.asarray(f[finished][()]).ravel()[0]
        lines.append(f"finished flag: {finished} = {flag_value} "
                     f"({'set' if flag_value else 'not set: the scan is still going'})")
    else:
        lines.append("finished flag: none found")
    pct = 100.0 * n / total if total else 0.0
    lines.append(f"complete frames: {n}/{total} ({pct:.1f}%)")
    live = flagged or (finished is not None and not flag_value)
    cmd = ["framebag", "run", EXAMPLE_WORKFLOW, str(p), "--data", data]
    for k in keys:
        cmd += ["--keys", k]
    if live:
        cmd.append("--follow")
        if finished:
            cmd += ["--finished", finished]
    lines.append("run a workflow on it (replace the example workflow with yours):")
    lines.append("  " + shlex.join(cmd))
    if not live and n < total:
        lines.append(f"  (only the {n} complete frames are processed; if a detector is still "
                     "writing the file, add --follow)")
    return "\n".join(lines)


def _inspect_output(p: Path, f: h5py.File, groups: list[tuple[str, h5py.Group]],
                    flagged: bool) -> str:
    lines = [f"framebag output {p} ({p.stat().st_size / 2**20:.1f} MiB)"]
    for wname, g in groups:
        a = g.attrs
        status = attr_text(a.get("status")) or "unknown"
        lines.append(f"workflow {wname}  (/entry/{wname}, NXprocess)")
        line = f"  status: {status}"
        if a.get("ended_by") is not None and status != "running":
            line += f" ({attr_text(a.get('ended_by'))})"
        if status == "running":
            line += (" - being written now" if flagged else "")
            line += "; if its run was killed, continue it with the same command and --resume"
        lines.append(line)
        lines.append(f"  started {attr_text(a.get('start_time')) or '?'}, "
                     f"ended {attr_text(a.get('end_time')) or '-'}")
        lines.append(f"  framebag {attr_text(a.get('framebag_version')) or '?'}, workflow source "
                     f"sha256 {attr_text(a.get('workflow_hash'))[:16] or '?'}")
        keys = attr_text(a.get("keys"))
        try:
            keys = ", ".join(json.loads(keys))
        except (ValueError, TypeError):
            pass
        lines.append(f"  input {attr_text(a.get('input_file'))}: data {attr_text(a.get('data'))}, "
                     f"keys {keys}" + (f", finished {attr_text(a.get('finished'))}"
                                       if attr_text(a.get("finished")) else ""))
        lines.append(f"  parameters: {attr_text(a.get('parameters')) or '{}'}")
        done = g["done"][()].astype(bool) if "done" in g else None
        if done is not None:
            n, total = int(done.sum()), done.size
            lines.append(f"  done: {n}/{total} frames ({100.0 * n / total if total else 0:.1f}%)"
                         f" of scan shape {done.shape}")
        folds = _json(a.get("folds"))
        rows = [["result", "shape", "dtype", "fold", "units", "axes (NXdata)"]]
        for name, d in results(g):
            found = folds.get(name)
            info: dict[str, Any] = found if isinstance(found, dict) else {}
            fold = attr_text(d.attrs.get("fold")) or info.get("fold") or "folded"
            units = attr_text(d.attrs.get("units"))
            if not units and info.get("units"):  # a histogram counts; its bins carry units
                units = f"{info['units']} (bins)" if fold == "histogram" else info["units"]
            nx = nxdata_of(g, name)
            axes = ", ".join(attr_text(x) for x in np.atleast_1d(nx.attrs.get("axes", [])))\
                if nx is not None else ""
            group = f"{name}{NXDATA_SUFFIX}: {axes or 'scalar'}" if nx is not None else "none"
            rows.append([name, str(d.shape), str(d.dtype), fold, units or "-", group])
        lines += ["  results:", *table(rows, "    ")]
        if attr_text(g.attrs.get("default")):
            lines.append(f"  default plot: /entry/{wname}/{attr_text(g.attrs.get('default'))}")
        errs = g["errors"][()] if "errors" in g else np.zeros(0)
        scan_shape = done.shape if done is not None else None
        lines.append(f"  errors: {len(errs)}" + (" (frames skipped by --on-error skip)"
                                                  if len(errs) else ""))
        for e in errs[:10]:
            where = scan_index(e["flat"], scan_shape) if scan_shape else int(e["flat"])
            lines.append(f"    frame {where} {attr_text(e['function'])}: {attr_text(e['message'])}")
        if len(errs) > 10:
            lines.append(f"    ... and {len(errs) - 10} more (dataset /entry/{wname}/errors)")
    return "\n".join(lines)


def _json(value: Any) -> dict[str, Any]:
    try:
        out = json.loads(attr_text(value) or "{}")
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}


# the command -------------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    """Register ``framebag inspect``."""
    p = sub.add_parser("inspect", help="show what an input or output file holds",
                       description="Show the datasets, the likely data and keys, the complete "
                       "frames and a ready run command of an input file; or the provenance, "
                       "done fraction and errors of a framebag output.")
    p.add_argument("file", help="an input HDF5 file or a framebag output file")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    print(inspect_file(args.file))
    return 0
