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
from .describe import _filters, framebag_groups, guess_layout, open_for_write, table
from .errors import FramebagError
from .hdf5 import attr_text
from .keys import KeyFollower, check_flag
from .output import NXDATA_SUFFIX, nxdata_of, ragged_results, results
from .partitions import scan_index

__all__ = ["inspect_file", "add_parser", "EXAMPLE_WORKFLOW"]

#: the workflow the suggested command line uses
EXAMPLE_WORKFLOW = "framebag.workflows.frame_sum"


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
        finished, flag_value = _finished_flag(f, finished, p, lines)
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
    lines.append(f"likely data: {data}  (scan shape {info.scan_shape}, "
                 f"frame shape {info.frame_shape}, {info.dtype})")
    if keys:
        lines.append(f"likely keys: {', '.join(keys)}")
    else:
        lines.append("likely keys: none (with no keys, every frame the data hold is complete; "
                     "the scan dims are all but the last two: set --scan-rank N otherwise)")
    lines += _run_lines(p, data, keys, finished, live, int(complete.sum()), complete.size)
    return "\n".join(lines)


def _finished_flag(f: h5py.File, finished: str | None, p: Path, lines: list[str]
                   ) -> tuple[str | None, Any]:
    """``(finished, its value)``; a flag the run would refuse is said in ``lines`` and
    dropped."""
    if not finished:
        return finished, None
    try:
        check_flag(f[finished], finished, str(p))
        return finished, np.asarray(f[finished][()]).ravel()[0]
    except FramebagError as exc:
        lines.append(f"finished flag: {exc}")
        return None, None


def _run_lines(p: Path, data: str, keys: list[str], finished: str | None, live: bool,
               n: int, total: int) -> list[str]:
    """The complete frames and a ready ``framebag run`` command for the layout found."""
    pct = 100.0 * n / total if total else 0.0
    lines = [f"complete frames: {n}/{total} ({pct:.1f}%)"]
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
    return lines


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
        lines.append(f"workflow {wname}  (/entry/{wname}, NXprocess)")
        lines.append(_status_line(a, flagged))
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
        lines += _done_lines(g, done) + _result_lines(g, wname, done)
        if attr_text(g.attrs.get("default")):
            lines.append(f"  default plot: /entry/{wname}/{attr_text(g.attrs.get('default'))}")
        lines += _error_lines(g, wname, done.shape if done is not None else None)
    return "\n".join(lines)


def _done_lines(g: h5py.Group, done: np.ndarray | None) -> list[str]:
    """How much of the scan, and of its ROI if the run had one, is done."""
    if done is None:
        return []
    n, total = int(done.sum()), done.size
    lines = [f"  done: {n}/{total} frames ({100.0 * n / total if total else 0:.1f}%)"
             f" of scan shape {done.shape}"]
    if "roi_mask" in g:  # a run over part of the scan (--roi): done relative to it
        roi = g["roi_mask"][()].astype(bool)
        inside, want = int((done & roi).sum()), int(roi.sum())
        lines.append(f"  roi: {attr_text(g.attrs.get('roi'))}: {inside}/{want} frames done "
                     f"({100.0 * inside / want if want else 0:.1f}%)")
    return lines


def _result_lines(g: h5py.Group, wname: str, done: np.ndarray | None) -> list[str]:
    """The table of results (shape, dtype, fold, units, NXdata axes), and the row counts
    of ragged ones."""
    folds = _json(g.attrs.get("folds"))
    rows = [["result", "shape", "dtype", "fold", "units", "axes (NXdata)"]]
    for name, d in results(g):
        found = folds.get(name)
        info: dict[str, Any] = found if isinstance(found, dict) else {}
        fold = attr_text(d.attrs.get("fold")) or info.get("fold") or "folded"
        units = attr_text(d.attrs.get("units"))
        if not units and info.get("units"):  # a histogram counts; its bins carry units
            units = f"{info['units']} (bins)" if fold == "histogram" else info["units"]
        nx = nxdata_of(g, name)
        group = f"{name}{NXDATA_SUFFIX}: {_axes(nx) or 'scalar'}" if nx is not None else "none"
        rows.append([name, str(d.shape), str(d.dtype), fold, units or "-", group])
    counts = []
    for name, rg in ragged_results(g):  # a table of rows, with count and offset per frame
        data, count = rg["data"], rg["count"][()]
        units = attr_text(data.attrs.get("units"))
        shape = "(" + ", ".join(["k", *map(str, data.shape[1:])]) + ") per frame"
        nx = nxdata_of(g, name)  # its signal: the scan-shaped count, over the scan's axes
        group = f"{name}{NXDATA_SUFFIX}: {_axes(nx)} " \
            f"({attr_text(nx.attrs.get('signal')) or 'count'}: rows per frame)" \
            if nx is not None else "none"
        rows.append([name, shape, str(data.dtype), "ragged", units or "-", group])
        per = count[done] if done is not None and done.shape == count.shape else count
        counts.append(f"    {name}: {data.shape[0]} rows in /entry/{wname}/{name}/data; "
                      f"per frame done: min {per.min() if per.size else '-'}, max "
                      f"{per.max() if per.size else '-'}, mean "
                      f"{per.mean() if per.size else 0:.3g}")
    return ["  results:", *table(rows, "    "), *(["  ragged rows:"] + counts if counts else [])]


def _axes(nx: h5py.Group) -> str:
    """An NXdata group's axes, as its ``axes`` attribute names them (``.``: no axis)."""
    return ", ".join(attr_text(x) for x in np.atleast_1d(nx.attrs.get("axes", [])))


def _status_line(a: Any, flagged: bool) -> str:
    """The output's status, what ended its run, and what to do with a run left running."""
    status = attr_text(a.get("status")) or "unknown"
    line = f"  status: {status}"
    if a.get("ended_by") is not None and status != "running":
        line += f" ({attr_text(a.get('ended_by'))})"
    if status == "running":
        line += (" - being written now" if flagged else "")
        line += "; if its run was killed, continue it with the same command and --resume"
    return line


def _error_lines(g: h5py.Group, wname: str, scan_shape: tuple[int, ...] | None) -> list[str]:
    """The output's count of skipped frames and the first ten of them."""
    errs = g["errors"][()] if "errors" in g else np.zeros(0)
    lines = [f"  errors: {len(errs)}" + (" (frames skipped by --on-error skip)"
                                         if len(errs) else "")]
    for e in errs[:10]:
        where = scan_index(e["flat"], scan_shape) if scan_shape else int(e["flat"])
        lines.append(f"    frame {where} {attr_text(e['function'])}: {attr_text(e['message'])}")
    if len(errs) > 10:
        lines.append(f"    ... and {len(errs) - 10} more (dataset /entry/{wname}/errors)")
    return lines


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
