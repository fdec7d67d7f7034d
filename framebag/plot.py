"""Quick-look pictures of an output file: ``framebag plot OUTPUT [-o DIR]`` and ``run --plot``.

One PNG per result, chosen by the result's shape:

* a stacked scalar (one number per frame) is a scan map in scan indices with a
  colour bar (a curve for a 1-D scan);
* a stacked short vector (up to 4 numbers per frame, e.g. a centre of mass) is
  one scan map per component;
* a stacked longer 1-D value (a profile per frame) is a waterfall (frames in
  flat scan order against the value index) beside the mean curve with its
  standard deviation;
* a stacked frame-shaped value is shown as its mean image over the done frames;
* a folded 2-D result (a frame-shaped sum, mean, max ...) is an image, a
  folded 1-D result (a histogram ...) a curve;
* a result with no picture (a fold of one number, values of more dims) gets one
  line saying why instead, with the number itself for a fold of one.

Every picture says what it shows: the title names the workflow, the function,
its fold, the parameters and the input file; scan maps are labelled with the
scan axes (slow and fast), images with the frame pixels; colour bars carry the
result's ``units`` attribute when it has one; results with both signs use a
diverging map centred on 0; a histogram is drawn as counts against its bin
centres (the output's ``folds`` attribute records the edges). Where a result
has an NXdata group, its axes label the picture: the scan's motor positions
(``--axes``) instead of indices, pixel axes, bin centres.

Frames not done (or NaN) are masked: grey in maps, gaps in curves, left out of
means. The file is read with ``swmr=True``, so a running output can be looked
at. matplotlib is optional (the ``[plot]`` extra) and drawn through the Agg
canvas directly, so no GUI backend or global ``pyplot`` state is touched.

One module of a little over 400 lines because it is one job, one picture per
result, whose helpers (masking, colour maps, axes labels) every kind of picture
shares; none of it is used elsewhere.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .describe import framebag_groups
from .errors import FramebagError
from .hdf5 import attr_text, open_readonly
from .output import nxdata_of, ragged_results, results

__all__ = ["write_pictures", "require_matplotlib", "default_dir", "add_parser"]

log = logging.getLogger("framebag")

#: stacked vectors up to this length are drawn as one scan map per component
MAX_COMPONENTS = 4
#: rows of a waterfall (frames are sampled evenly beyond this)
MAX_WATERFALL_ROWS = 2000
#: frames read at once when averaging stacked values
SLAB_BYTES = 64 << 20


def require_matplotlib() -> None:
    """Raise a one-line FramebagError if matplotlib is not installed."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise FramebagError(
            "quick-look pictures need matplotlib: pip install 'framebag[plot]'"
        )


def default_dir(output: str | os.PathLike) -> Path:
    """``<output stem>_plots`` next to the output file."""
    p = Path(output)
    return p.with_name(f"{p.stem}_plots")


def write_pictures(output: str | os.PathLike, outdir: str | os.PathLike | None = None,
                   notes: list[str] | None = None) -> list[Path]:
    """Write one PNG per picturable result of every framebag workflow in ``output``.

    Returns the paths written (in ``outdir``, default :func:`default_dir`). ``notes``,
    when given, gets one line for each result with no picture, saying why: a fold of
    one number (its value is in the line), a value of more dims than a picture shows.
    """
    require_matplotlib()

    outdir = Path(outdir) if outdir is not None else default_dir(output)
    written: list[Path] = []
    with open_readonly(output, "output file") as f:
        groups = framebag_groups(f)
        if not groups:
            raise FramebagError(f"{str(output)!r} holds no framebag output (no /entry/<workflow>)")
        outdir.mkdir(parents=True, exist_ok=True)
        for wname, g in groups:
            scan_shape = tuple(int(x) for x in g.attrs["scan_shape"])
            done = g["done"][()].astype(bool) if "done" in g else np.ones(scan_shape, bool)
            about = _about(g)
            pictured = [(name, ds, False) for name, ds in results(g)] + \
                [(name, rg["count"], True) for name, rg in ragged_results(g)]
            for name, ds, ragged in pictured:
                path = outdir / f"{wname}_{name}.png"
                fig = _ragged_figure(wname, name, ds, scan_shape, done, about) if ragged \
                    else _figure_for(wname, name, ds, scan_shape, done, about)
                if fig is None:
                    note = _no_picture(wname, name, ds, scan_shape, done, ragged)
                    log.debug("%s", note)
                    if notes is not None:
                        notes.append(note)
                    continue
                fig.savefig(path, dpi=100)
                written.append(path)
    return written


# choosing a picture ------------------------------------------------------------


def _json_attr(g: Any, key: str) -> Any:
    try:
        return json.loads(attr_text(g.attrs.get(key)) or "null")
    except ValueError:
        return None


def _about(g: Any) -> dict[str, Any]:
    """What a workflow group's provenance says that a title needs: folds, parameters, input."""
    return {"folds": _json_attr(g, "folds") or {},
            "parameters": _json_attr(g, "parameters") or {},
            "input": Path(attr_text(g.attrs.get("input_file"))).name}


def _no_picture(wname: str, name: str, ds: Any, scan_shape: tuple[int, ...],
                done: np.ndarray, ragged: bool) -> str:
    """Why result ``name`` has no picture, in one line; a fold of one number gives its value."""
    fold = "ragged" if ragged else attr_text(ds.attrs.get("fold")) or "folded"
    who = f"{wname}/{name} (fold {fold})"
    if ragged:
        return (f"{who}: no picture of its rows per frame over a scan of {len(scan_shape)} "
                "dims (its count map is drawn for 1 or 2)")
    if fold != "stack" and ds.shape == ():
        units = attr_text(ds.attrs.get("units"))
        value = np.asarray(ds[()]).item()
        return (f"{who} = {value!r}{f' {units}' if units else ''} over "
                f"{int(done.sum())}/{done.size} frames done: one number, nothing to draw")
    if fold == "stack" and not done.any():
        return f"{who}: no frame done yet, nothing to draw"
    what = f"values of shape {ds.shape}" if fold != "stack" else \
        f"values of shape {tuple(ds.shape[len(scan_shape):])} per frame"
    return (f"{who}: no quick-look picture for {what} dtype {ds.dtype} (it draws numbers "
            "per frame, curves and images)")


def _figure_for(wname: str, name: str, ds: Any, scan_shape: tuple[int, ...],
                done: np.ndarray, about: dict[str, Any] | None = None) -> Any:
    """The picture of one result (a stack's scan map, waterfall or mean frame; a fold's
    curve or image), titled with its workflow, fold and parameters; None if it has none."""
    about = about or {"folds": {}, "parameters": {}, "input": ""}
    is_stack = attr_text(ds.attrs.get("fold")) == "stack"
    fold_info = about["folds"].get(name) or {}
    fold = "stack" if is_stack else (fold_info.get("fold") or attr_text(ds.attrs.get("fold")))
    ndone, ntotal = int(done.sum()), done.size
    params = ", ".join(f"{k}={v}" for k, v in about["parameters"].items())
    head = f"workflow {wname}: {name}" + (f" (fold {fold})" if fold else "")
    head += f"; {params}" if params else "; no parameters"
    units = attr_text(ds.attrs.get("units"))
    label = f"{name} ({units})" if units else name
    axes = _nxdata_axes(ds, name)
    sub = (f"input {about['input']}, " if about["input"] else "") + f"{ndone}/{ntotal} frames done"
    if is_stack:
        drawn = _stack_figure(name, ds, scan_shape, done, units, label, axes, sub)
    else:
        drawn = _fold_figure(name, ds, fold, fold_info, units, label, axes, sub)
    if drawn is None:
        return None
    fig, sub = drawn
    fig.suptitle(f"{head}\n{sub}", fontsize=10)
    return fig


def _stack_figure(name: str, ds: Any, scan_shape: tuple[int, ...], done: np.ndarray,
                  units: str, label: str, axes: Any, sub: str) -> tuple[Any, str] | None:
    """A stack's figure and its subtitle: a scan map per component, a waterfall of curves,
    or the mean frame."""
    ndone, ntotal = int(done.sum()), done.size
    vshape = tuple(ds.shape[len(scan_shape):])
    curve = len(scan_shape) == 1 and (vshape == () or (
        len(vshape) == 1 and vshape[0] <= MAX_COMPONENTS))
    if ndone < ntotal and len(vshape) <= 1:
        sub += "; gaps = not done" if curve else "; grey = not done"
    scan_axes = axes[: len(scan_shape)] if axes else None
    if vshape == ():
        fig, ax = _fig(1)
        _scan_map(fig, ax[0], _masked(ds[()], done), label, scan_axes)
    elif len(vshape) == 1 and vshape[0] <= MAX_COMPONENTS:
        values = ds[()]
        fig, ax = _fig(vshape[0])
        for c in range(vshape[0]):
            _scan_map(fig, ax[c], _masked(values[..., c], done),
                      f"{name}[{c}]" + (f" ({units})" if units else ""), scan_axes)
    elif len(vshape) == 1:
        fig, ax = _fig(2)
        _waterfall(fig, ax[0], ax[1], ds, scan_shape, done, label)
    elif len(vshape) == 2:
        mean = _stack_mean(ds, scan_shape, done)
        if mean is None:
            return None
        fig, ax = _fig(1)
        _image(fig, ax[0], mean, f"mean of {label}")
        sub = sub.replace(f"{ndone}/{ntotal} frames done",
                          f"mean over the {ndone}/{ntotal} frames done")
    else:
        return None
    return fig, sub


def _fold_figure(name: str, ds: Any, fold: str, fold_info: dict[str, Any], units: str,
                 label: str, axes: Any, sub: str) -> tuple[Any, str] | None:
    """A fold's figure and its subtitle: an image, a histogram over its bins, or a curve."""
    value = np.asarray(ds[()])
    if value.dtype.kind not in "biuf" or value.ndim not in (1, 2):
        return None
    fig, ax = _fig(1)
    edges = np.asarray(fold_info.get("bin_edges") or [], dtype=np.float64)
    along = axes[0] if axes and value.ndim == 1 and axes[0] is not None else None
    if value.ndim == 2:
        _image(fig, ax[0], value, label, axes)
    elif fold == "histogram" and (along is not None or edges.size == value.size + 1):
        centres = along[1] if along is not None else (edges[:-1] + edges[1:]) / 2
        ax[0].plot(centres, value, drawstyle="steps-mid")
        ax[0].set_xlabel(along[0] if along is not None else
                         "value (bin centre)" + (f", {units}" if units else ""))
        ax[0].set_ylabel("counts")
    else:
        ax[0].plot(along[1] if along is not None else np.arange(value.size), value,
                   drawstyle="steps-mid")
        ax[0].set_xlabel(along[0] if along is not None else f"{name} index")
        ax[0].set_ylabel(label)
    return fig, sub.replace("frames done", "frames done, folded")


def _ragged_figure(wname: str, name: str, count: Any, scan_shape: tuple[int, ...],
                   done: np.ndarray, about: dict[str, Any]) -> Any:
    """A ragged result's picture: its count map (rows per frame), frames not done grey."""
    if len(scan_shape) > 2:
        return None
    counts = count[()]
    fig, ax = _fig(1)
    _scan_map(fig, ax[0], _masked(counts, done), f"{name}: rows per frame",
              _nxdata_axes(count.parent, name))  # its parent: the workflow group
    params = ", ".join(f"{k}={v}" for k, v in about["parameters"].items())
    n = int(done.sum())
    sub = (f"input {about['input']}, " if about["input"] else "") + \
        f"{n}/{done.size} frames done, {int(counts.sum())} rows"
    if n < done.size:
        sub += "; grey = not done"
    fig.suptitle(f"workflow {wname}: {name} (fold ragged); {params or 'no parameters'}\n{sub}",
                 fontsize=10)
    return fig


def _nxdata_axes(ds: Any, name: str) -> list[tuple[str, np.ndarray] | None] | None:
    """Per dim of result ``name``: ``(label, values)`` of its NXdata axis, None for ``.``.

    The label is the axis's ``long_name`` (or its name and units). None if the
    result has no NXdata group (an output of an older framebag).
    """
    nx = nxdata_of(ds.parent, name)
    if nx is None:
        return None
    out: list[tuple[str, np.ndarray] | None] = []
    for axis in (attr_text(a) for a in np.atleast_1d(nx.attrs.get("axes", []))):
        obj = nx.get(axis) if axis != "." else None
        if obj is None or getattr(obj, "ndim", 0) != 1:
            out.append(None)
            continue
        units = attr_text(obj.attrs.get("units"))
        label = attr_text(obj.attrs.get("long_name")) or (f"{axis} ({units})" if units
                                                          else axis)
        out.append((label, np.asarray(obj[()])))
    return out


def _extent(values: np.ndarray) -> tuple[float, float] | None:
    """The first and last of evenly spaced, finite positions (an image's extent), else None."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2 or not np.isfinite(v).all():
        return None
    step = np.diff(v)
    if not np.allclose(step, step[0], rtol=1e-3) or step[0] == 0:
        return None
    return float(v[0] - step[0] / 2), float(v[-1] + step[0] / 2)


def _masked(values: np.ndarray, done: np.ndarray) -> np.ma.MaskedArray:
    values = np.asarray(values)
    mask = ~done
    if values.dtype.kind in "fc":
        mask = mask | ~np.isfinite(values)
    return np.ma.masked_array(values, mask=mask)


def _fig(panels: int) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2 * panels, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    return fig, list(axes)


def _cmap(signed: bool = False) -> Any:
    import matplotlib

    return matplotlib.colormaps["RdBu_r" if signed else "viridis"].with_extremes(bad="0.8")


def _colours(values: Any) -> dict[str, Any]:
    """``imshow`` colour options: viridis, or a diverging map centred on 0 for signed values."""
    from matplotlib.colors import CenteredNorm

    v = np.ma.masked_invalid(np.ma.asarray(values, dtype=np.float64))
    if v.count() and v.min() < 0 < v.max():
        return {"cmap": _cmap(signed=True), "norm": CenteredNorm(vcenter=0.0)}
    return {"cmap": _cmap()}


def _scan_labels(rank: int) -> tuple[str, str]:
    """(y, x) labels of a scan map: the scan's slow and fast axes, in scan indices."""
    if rank == 2:
        return "scan axis 0 (slow), index", "scan axis 1 (fast), index"
    return (f"scan axes 0..{rank - 2} (slow, flattened), index",
            f"scan axis {rank - 1} (fast), index")


def _integer_ticks(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


# the pictures --------------------------------------------------------------------


def _scan_map(fig: Any, ax: Any, values: np.ma.MaskedArray, label: str,
              axes: list[tuple[str, np.ndarray] | None] | None = None) -> None:
    """A scan-shaped array: curve (1-D) or map (2-D and more).

    Drawn against the NXdata scan axes (``axes``): the positions where they are
    motor positions (evenly spaced, for a map), else the scan indices.
    """
    axes = axes if axes and len(axes) == values.ndim else [None] * values.ndim
    if values.ndim == 1:
        ax0 = axes[0]
        ax.plot(ax0[1] if ax0 is not None else np.arange(values.size), values, marker=".",
                markersize=3)
        ax.set_xlabel(ax0[0] if ax0 is not None else "scan axis 0, index")
        ax.set_ylabel(label)
        if ax0 is None or ax0[1].dtype.kind in "iu":
            ax.xaxis.get_major_locator().set_params(integer=True)
        return
    rank = values.ndim
    ylabel, xlabel = _scan_labels(rank)
    if rank > 2:
        values = values.reshape(-1, values.shape[-1])
        axes = [None, axes[-1]]
    ny, nx = values.shape
    ys = _extent(axes[0][1]) if axes[0] is not None and axes[0][1].dtype.kind == "f" else None
    xs = _extent(axes[1][1]) if axes[1] is not None and axes[1][1].dtype.kind == "f" else None
    extent = None
    if xs is not None or ys is not None:  # positions: the map in their units
        extent = (*(xs or (-0.5, nx - 0.5)), *((ys[1], ys[0]) if ys else (ny - 0.5, -0.5)))
    aspect = "equal" if extent is None and max(ny, nx) <= 4 * min(ny, nx) else "auto"
    im = ax.imshow(values, interpolation="nearest", aspect=aspect, extent=extent,
                   **_colours(values))
    fig.colorbar(im, ax=ax, label=label, shrink=0.9)
    ax.set_xlabel(axes[1][0] if axes[1] is not None and rank == 2 else xlabel)
    ax.set_ylabel(axes[0][0] if axes[0] is not None and rank == 2 else ylabel)
    from matplotlib.ticker import MaxNLocator

    if xs is None:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if ys is None:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def _image(fig: Any, ax: Any, image: np.ndarray, label: str,
           axes: list[tuple[str, np.ndarray] | None] | None = None) -> None:
    """A frame-shaped array: image in pixels with a colour bar, labelled by its NXdata axes."""
    image = np.ma.masked_invalid(np.asarray(image, dtype=np.float64))
    im = ax.imshow(image, interpolation="nearest", **_colours(image))
    fig.colorbar(im, ax=ax, label=label, shrink=0.9)
    axes = axes if axes and len(axes) == 2 else [None, None]
    ax.set_xlabel(axes[1][0] if axes[1] is not None else "frame x (pixel)")
    ax.set_ylabel(axes[0][0] if axes[0] is not None else "frame y (pixel)")
    _integer_ticks(ax)


def _slabs(ds: Any, scan_shape: tuple[int, ...]) -> Any:
    """(first-axis slice, values) of a stacked dataset, a bounded number of bytes at a time."""
    row = int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize
    step = max(1, SLAB_BYTES // max(1, row))
    for i in range(0, scan_shape[0], step):
        yield slice(i, min(i + step, scan_shape[0])), ds[i : i + step]


def _stack_mean(ds: Any, scan_shape: tuple[int, ...], done: np.ndarray) -> np.ndarray | None:
    vshape = tuple(ds.shape[len(scan_shape):])
    total = np.zeros(vshape, dtype=np.float64)
    n = 0
    for sel, values in _slabs(ds, scan_shape):
        d = done[sel]
        if d.any():
            total += values[d].sum(axis=0, dtype=np.float64)
            n += int(d.sum())
    return total / n if n else None


def _waterfall(fig: Any, ax_w: Any, ax_m: Any, ds: Any, scan_shape: tuple[int, ...],
               done: np.ndarray, name: str) -> None:
    """Per-frame 1-D values: waterfall (sampled rows) and the mean curve with its std."""
    nvals = ds.shape[-1]
    nframes = done.size
    keep = np.unique(np.linspace(0, nframes - 1, min(nframes, MAX_WATERFALL_ROWS)).astype(int))
    rows = np.zeros((keep.size, nvals), dtype=np.float64)
    row_done = done.ravel()[keep]
    s1 = np.zeros(nvals, dtype=np.float64)
    s2 = np.zeros(nvals, dtype=np.float64)
    n = 0
    per_first = int(np.prod(scan_shape[1:], dtype=np.int64))
    for sel, values in _slabs(ds, scan_shape):
        flat = values.reshape(-1, nvals).astype(np.float64, copy=False)
        d = done[sel].ravel()
        good = flat[d]
        good = good[np.isfinite(good).all(axis=1)]
        s1 += good.sum(axis=0)
        s2 += (good**2).sum(axis=0)
        n += len(good)
        base = sel.start * per_first
        inside = (keep >= base) & (keep < base + len(flat))
        rows[inside] = flat[keep[inside] - base]
    masked = np.ma.masked_array(rows, mask=np.repeat(~row_done[:, None], nvals, axis=1))
    masked = np.ma.masked_invalid(masked)
    im = ax_w.imshow(masked, interpolation="nearest", aspect="auto", **_colours(masked))
    fig.colorbar(im, ax=ax_w, label=name, shrink=0.9)
    ax_w.set_xlabel(f"{name} index")
    ax_w.set_ylabel("frame (flat scan index)" + (" (sampled)" if keep.size < nframes else ""))
    if keep.size < nframes:
        ticks = ax_w.get_yticks()
        ticks = ticks[(ticks >= 0) & (ticks < keep.size)]
        ax_w.set_yticks(ticks, [str(keep[int(t)]) for t in ticks])
    x = np.arange(nvals)
    if n:
        mean = s1 / n
        std = np.sqrt(np.maximum(s2 / n - mean**2, 0.0))
        ax_m.plot(x, mean, label=f"mean of {n} frames")
        ax_m.fill_between(x, mean - std, mean + std, alpha=0.3, label="± 1 std")
        ax_m.legend(fontsize=8)
    ax_m.set_xlabel(f"{name} index")
    ax_m.set_ylabel(name)


# the command ---------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    """Register ``framebag plot``."""
    p = sub.add_parser("plot", help="write quick-look PNGs of an output file",
                       description="Write one PNG per result of a framebag output file.")
    p.add_argument("output", help="a framebag output file (may still be running)")
    p.add_argument("-o", "--outdir", help="directory for the PNGs (default: <stem>_plots)")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    notes: list[str] = []
    paths = write_pictures(args.output, args.outdir, notes)
    for p in paths:
        print(p)
    for note in notes:
        print(f"framebag: {note}")
    if not paths:
        print(f"framebag: no result in {args.output} has a shape to picture")
    return 0
