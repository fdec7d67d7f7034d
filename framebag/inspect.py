"""``framebag inspect FILE``: what is in an input file, or what a framebag output holds.

For an input it lists every dataset (shape, dtype, chunks, filters), through
external links and with a virtual dataset's source files (see
:func:`framebag.hdf5.walk`), guesses the data and key datasets by the key
contract (keys are numeric datasets whose shape, less trailing length-1 dims,
is the leading part of the data's shape; none for a plain array), counts the
complete frames with the same :class:`~framebag.keys.KeyFollower`, made as the
suggested command would make it, shows the finished flag (refusing an array)
and prints a ready ``framebag run`` command. For a framebag output it shows
the provenance, the done fraction, each result's fold, units, shape and NXdata
axes, and the errors.

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
from .errors import FramebagError
from .hdf5 import attr_text
from .keys import KeyFollower, check_flag, extent, scan_rank_of
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
    """The input report; the complete frames are counted by the run's own KeyFollower."""
    lines = [f"input file {p} ({p.stat().st_size / 2**20:.1f} MiB)"]
    if flagged:
        lines.append("  open for write: a SWMR writer has it now (or was killed); "
                     "follow it with --follow")
    with hdf5.open_readonly(p) as f:
        entries = hdf5.walk(f)
        if not entries:
            lines.append("  no datasets")
            return "\n".join(lines)
        lines += ["datasets:", *table(_rows(entries))]
        data, keys, finished = guess_layout(f)
        flag_value = None
        if finished:
            try:
                check_flag(f[finished], finished, str(p))
                flag_value = np.asarray(f[finished][()]).ravel()[0]
            except FramebagError as exc:
                lines.append(f"finished flag: {exc}")
                finished = None
    if data is None:
        lines.append("no data dataset found: framebag needs a numeric dataset of rank >= 2 "
                     "(scan dims, then frame dims)")
        return "\n".join(lines)
    if finished:
        lines.append(f"finished flag: {finished} = {flag_value} "
                     f"({'set' if flag_value else 'not set: the scan is still going'})")
    elif not any(line.startswith("finished flag:") for line in lines):
        lines.append("finished flag: none found")
    live = flagged or (finished is not None and not flag_value)
    try:  # the run's own rule: the same follower, as the suggested command would make it
        follower = KeyFollower(p, data, keys, finished if live else None, live=live)
        complete = follower.poll()
    except FramebagError as exc:
        lines.append(f"likely data: {data}, likely keys: {', '.join(keys) or 'none'}")
        lines.append(f"the run would refuse this layout: {exc}")
        return "\n".join(lines)
    info = follower.data
    n, total = int(complete.sum()), complete.size
    lines.append(f"likely data: {data}  (scan shape {info.scan_shape}, "
                 f"frame shape {info.frame_shape}, {info.dtype})")
    if keys:
        lines.append(f"likely keys: {', '.join(keys)}")
    else:
        lines.append("likely keys: none (with no keys, every frame the data hold is complete; "
                     "the scan dims are all but the last two: set --scan-rank N otherwise)")
    pct = 100.0 * n / total if total else 0.0
    lines.append(f"complete frames: {n}/{total} ({pct:.1f}%)")
    cmd = ["framebag", "run", EXAMPLE_WORKFLOW, str(p), "--data", data]
    for k in keys:
        cmd += ["--keys", k]
    if not keys:
        cmd.append("--no-keys")  # the example workflow names keys of its own
    if live:
        cmd.append("--follow")
        if finished:
            cmd += ["--finished", finished]
    lines.append("run a workflow on it (replace the example workflow with yours):")
    lines.append("  " + shlex.join(cmd))
    if live and not keys:
        lines.append("  (without keys a frame counts as complete once the data's extent covers "
                     "it: safe only for a writer that writes a frame's data before it extends "
                     "the dataset past it)")
    if not live and n < total:
        lines.append(f"  (only the {n} complete frames are processed; if a detector is still "
                     "writing the file, add --follow)")
    return "\n".join(lines)


def _rows(entries: list[hdf5.Entry]) -> list[list[str]]:
    """The dataset table: where a dataset's values live is shown when not plainly here."""
    rows = [["dataset", "shape", "dtype", "chunks", "filters", "where"]]
    for e in entries:
        d = e.dataset
        if d is None:
            rows.append([e.name, "-", "-", "-", "-", e.where])
            continue
        shape = str(d.shape)
        if d.maxshape and d.maxshape != d.shape:
            shape += f" max {d.maxshape}"
        rows.append([e.name, shape, str(d.dtype), str(d.chunks) if d.chunks else "contiguous",
                     _filters(d), e.where])
    if not any(r[-1] for r in rows[1:]):
        rows = [r[:-1] for r in rows]
    return rows


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
            if "roi_mask" in g:  # a run over part of the scan (--roi): done relative to it
                roi = g["roi_mask"][()].astype(bool)
                inside, want = int((done & roi).sum()), int(roi.sum())
                lines.append(f"  roi: {attr_text(a.get('roi'))}: {inside}/{want} frames done "
                             f"({100.0 * inside / want if want else 0:.1f}%)")
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
