"""What a run returns: :class:`Results`, read lazily from the output file.

:class:`Results` maps each result's name to its array (read from the output when
first asked for), with the ``done`` mask, the skipped frames, the run's stats and
a short repr; :class:`Ragged` is a ragged result's per-frame rows;
:class:`ManyResults` is what :func:`framebag.run_many` returns, one entry per
input.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FramebagError

__all__ = ["Results", "Ragged", "ManyResults"]


_UNREAD = object()


class Ragged:
    """A ragged result of :class:`Results`: per frame an array of rows, ``(k, *row_shape)``.

    ``ragged[iy, ix]`` is that frame's rows (``k`` may be 0; a frame not done has
    none); ``counts`` is the scan-shaped count map, ``offsets`` where each frame's
    rows start in ``rows`` (-1: not done), ``rows`` the whole table. They are
    read from the output when first used, and kept.
    """

    def __init__(self, res: Results, name: str, scan_shape: tuple[int, ...],
                 row_shape: tuple[int, ...], dtype: np.dtype, total: int) -> None:
        self._res, self.name = res, name
        self.shape, self.row_shape, self.dtype, self.total = scan_shape, row_shape, dtype, total
        self._arrays: dict[str, np.ndarray] = {}

    def _array(self, what: str) -> np.ndarray:
        if what not in self._arrays:
            res = self._res
            res._check_unchanged(self.name)
            import h5py

            with h5py.File(res.output, "r") as f:
                g = f[f"{res._group}/{self.name}"]
                for key in ("count", "offset", "data"):
                    if key == what or (what != "data" and key != "data"):
                        self._arrays[key] = g[key][()]
        return self._arrays[what]

    @property
    def counts(self) -> np.ndarray:
        """The number of rows of each frame, scan-shaped (0 where not done)."""
        return self._array("count")

    @property
    def offsets(self) -> np.ndarray:
        """The row of each frame's first entry in :attr:`rows`, scan-shaped (-1: not done)."""
        return self._array("offset")

    @property
    def rows(self) -> np.ndarray:
        """The whole table of rows, ``(total, *row_shape)``, in the order they were committed."""
        return self._array("data")

    def __getitem__(self, index: int | tuple[int, ...]) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        if len(index) != len(self.shape) or not all(isinstance(i, (int, np.integer))
                                                     for i in index):
            raise IndexError(f"ragged result {self.name!r} is indexed by one scan index of "
                             f"{len(self.shape)} integers, not {index!r}")
        k, at = int(self.counts[index]), int(self.offsets[index])
        return self.rows[at : at + k] if k else np.zeros((0, *self.row_shape), self.dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return (f"Ragged({self.name!r}, scan {self.shape}, {self.total} rows of shape "
                f"{self.row_shape} {self.dtype})")


class Results(dict):
    """The results keyed by function name, plus ``done``, ``output``, ``errors`` and ``stats``.

    A result is read from the output file when it is first looked up, and kept: a
    stack of whole frames is as large as the input, and ``framebag run`` never looks
    at it, so the driver's memory does not grow with the scan. Looking a result up
    after the output file was changed (rewritten by another run) is an error, never
    the other run's values.

    ``folds`` and ``units`` give each result's fold name and units (``""`` if
    none were declared); ``dims`` names each result's dims and ``coords`` holds
    the 1-d values of the named dims (scan axes, pixel indices, bin centres),
    as the output's NXdata groups record them; ``aux_coords`` holds scan-shaped
    positions as ``(dims, values)``. Its repr is a short summary;
    :meth:`to_xarray` gives an ``xarray.Dataset``.
    """

    done: np.ndarray
    #: the frames the run was to process (``roi=``), or None for the whole scan
    roi: np.ndarray | None = None
    output: Path
    errors: list[tuple[tuple[int, ...], str, str]]
    stats: dict[str, Any]
    folds: dict[str, str]
    units: dict[str, str]
    dims: dict[str, tuple[str, ...]]
    coords: dict[str, np.ndarray]
    aux_coords: dict[str, tuple[tuple[str, ...], np.ndarray]]

    _group = ""
    _stamp: tuple[int, int, int] = (0, 0, 0)

    def _check_unchanged(self, name: str) -> None:
        st = os.stat(self.output)
        if (st.st_ino, st.st_mtime_ns, st.st_ctime_ns) != self._stamp:
            raise FramebagError(f"output file {str(self.output)!r} changed after the run "
                                f"ended; read result {name!r} from it directly")

    def _load(self, name: str) -> Any:
        value = dict.__getitem__(self, name)
        if value is _UNREAD:
            import h5py

            self._check_unchanged(name)
            with h5py.File(self.output, "r") as f:
                value = f[f"{self._group}/{name}"][()]
            dict.__setitem__(self, name, value)
        return value

    def __getitem__(self, name: str) -> Any:
        return self._load(name)

    def __iter__(self) -> Any:  # not dict's own: dict(res) and {**res} then use __getitem__
        return iter(list(dict.keys(self)))

    def get(self, name: str, default: Any = None) -> Any:
        return self._load(name) if name in self else default

    def values(self) -> list[Any]:  # type: ignore[override]
        return [self._load(k) for k in self]

    def items(self) -> list[tuple[str, Any]]:  # type: ignore[override]
        return [(k, self._load(k)) for k in self]


    def _meta(self, name: str) -> tuple[Any, Any]:
        """A result's shape and dtype, without reading its values when they are not read yet."""
        value = dict.__getitem__(self, name)
        if isinstance(value, Ragged):
            return f"{value.shape}, {value.total} rows of shape {value.row_shape}", value.dtype
        if value is not _UNREAD:
            return np.shape(value), getattr(value, "dtype", type(value).__name__)
        try:
            import h5py

            with h5py.File(self.output, "r") as f:
                ds = f[f"{self._group}/{name}"]
                return ds.shape, ds.dtype
        except (OSError, KeyError):
            return "?", "?"

    def __repr__(self) -> str:
        done = getattr(self, "done", None)
        head = "Results("
        if getattr(self, "output", None) is not None:
            head += f"{str(self.output)!r}, "
        if done is not None:
            n, total = int(np.count_nonzero(done)), int(np.size(done))
            roi = getattr(self, "roi", None)
            of = "" if roi is None else " of the ROI"
            total = total if roi is None else int(np.count_nonzero(roi))
            head += f"{n}/{total} frames{of} done ({100.0 * n / total if total else 0:.1f}%), "
        errors = getattr(self, "errors", None) or []
        head += f"{len(errors)} skipped" if errors else "none skipped"
        folds = getattr(self, "folds", {})
        units = getattr(self, "units", {})
        lines = [head + ")"]
        for name in self:
            shape, dtype = self._meta(name)
            line = f"  {name}: {folds.get(name, '?')}, shape {shape}, {dtype}"
            if units.get(name):
                line += f", units {units[name]}"
            lines.append(line)
        return "\n".join(lines)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # IPython and Jupyter
        p.text(repr(self))

    def to_xarray(self) -> Any:
        """The results as an ``xarray.Dataset``, dims named, coordinates filled in.

        Scan dims are named after the scan axes (``--axes``: the positions are
        their coordinates; else ``scan_0``, ``scan_1`` ... with indices), frame
        dims ``frame_y``, ``frame_x``, a histogram's dim ``<name>_bin`` with the
        bin centres. ``done`` is a variable; a variable's attributes hold its
        ``fold`` and ``units``. Needs xarray (``pip install 'framebag[xarray]'``).
        """
        try:
            import xarray
        except ImportError:
            raise ImportError("Results.to_xarray() needs xarray, which is not installed: "
                              "pip install 'framebag[xarray]'") from None
        dims = dict(getattr(self, "dims", {}))
        coords: dict[str, Any] = dict(getattr(self, "coords", {}))
        for name, (cdims, values) in getattr(self, "aux_coords", {}).items():
            coords[name] = (cdims, values)
        data_vars: dict[str, Any] = {}
        scan_dims: tuple[str, ...] = ()
        for name, value in self.items():
            if isinstance(value, Ragged):  # its count map: xarray has no ragged variables
                dims[f"{name}_count"] = dims.get(name) or tuple(
                    f"scan_{k}" for k in range(len(value.shape)))
                name, value = f"{name}_count", value.counts
            value = np.asarray(value)
            names = dims.get(name) or tuple(f"{name}_dim_{k}" for k in range(value.ndim))
            attrs = {"fold": self.folds.get(name, "")} if hasattr(self, "folds") else {}
            if getattr(self, "units", {}).get(name):
                attrs["units"] = self.units[name]
            data_vars[name] = (names, value, attrs)
            if attrs.get("fold") == "stack":
                scan_dims = names[: np.ndim(self.done)] if hasattr(self, "done") else ()
        if hasattr(self, "done"):
            if not scan_dims:
                scan_dims = tuple(f"scan_{k}" for k in range(np.ndim(self.done)))
            data_vars["done"] = (scan_dims, np.asarray(self.done))
        used = {d for v in data_vars.values() for d in v[0]}
        coords = {k: v for k, v in coords.items()
                  if (k in used) or (isinstance(v, tuple) and set(v[0]) <= used)}
        attrs = {"output": str(getattr(self, "output", ""))}
        return xarray.Dataset(data_vars, coords=coords, attrs=attrs)


def _read_ragged(res: Results, g: Any, name: str, ds: Any, scan_dims: tuple[str, ...]) -> None:
    """Enter ragged result ``name`` in ``res``: a :class:`Ragged`, its fold, units, dims."""
    from .hdf5 import attr_text
    from .output import nxdata_of

    data = ds["data"]
    dict.__setitem__(res, name, Ragged(res, name, ds["count"].shape, data.shape[1:],
                                       data.dtype, data.shape[0]))
    res.folds[name] = attr_text(ds.attrs.get("fold")) or "?"
    res.units[name] = attr_text(data.attrs.get("units"))
    nx = nxdata_of(g, name)  # the count map's: its scan axes
    axes = [attr_text(a) for a in np.atleast_1d(nx.attrs.get("axes", []))] \
        if nx is not None else []
    dims = []
    for k, dim in enumerate(scan_dims):
        axis = axes[k] if k < len(axes) else "."
        if nx is not None and axis != "." and axis in nx:
            dim = axis
            res.coords.setdefault(dim, nx[axis][()])
        dims.append(dim)
    res.dims[name] = tuple(dims)


def _read_results(res: Results, g: Any, names: list[str], scan_rank: int) -> None:
    """Fill ``res`` from a workflow's output group: values, done, folds, units, dims, coords.

    Dims are named from each result's NXdata ``@axes`` (see :meth:`Results.to_xarray`).
    """
    import h5py

    from .hdf5 import attr_text
    from .output import nxdata_of

    res.done = g["done"][()].astype(bool)
    res.folds, res.units, res.dims, res.coords, res.aux_coords = {}, {}, {}, {}, {}
    scan_dims = tuple(f"scan_{k}" for k in range(scan_rank))
    for name in names:
        ds = g[name]
        if isinstance(ds, h5py.Group):  # a ragged result (see output._layout_ragged)
            _read_ragged(res, g, name, ds, scan_dims)
            continue
        dict.__setitem__(res, name, _UNREAD)  # read when looked up (see Results)
        res.folds[name] = attr_text(ds.attrs.get("fold")) or "?"
        res.units[name] = attr_text(ds.attrs.get("units"))
        nx = nxdata_of(g, name)
        axes = [attr_text(a) for a in np.atleast_1d(nx.attrs.get("axes", []))] \
            if nx is not None else []
        if len(axes) != ds.ndim:
            axes = ["."] * ds.ndim
        dims = []
        for k, axis in enumerate(axes):
            if nx is None or axis == "." or axis not in nx:
                dims.append(scan_dims[k] if res.folds[name] == "stack" and k < scan_rank
                            else f"{name}_dim_{k}")
                continue
            dim = f"{name}_bin" if axis == "bin_centres" else axis
            dims.append(dim)
            res.coords.setdefault(dim, nx[axis][()])
        res.dims[name] = tuple(dims)
        if res.folds[name] == "stack" and nx is not None:
            for key, obj in nx.items():
                if getattr(obj, "ndim", 0) > 1 and int(obj.attrs.get("scan_dim", 0)) == -1:
                    res.aux_coords.setdefault(key, (tuple(dims[:scan_rank]), obj[()]))


class ManyResults(dict):
    """What :func:`run_many` gives back: per input path, its :class:`Results` or its error.

    ``failed`` and ``succeeded`` split it; ``outputs`` maps every input to the output
    path it was given (written, partly written, or not at all for a failed scan).
    """

    outputs: dict[Path, Path]
    wall: float

    @property
    def failed(self) -> dict[Path, BaseException]:
        """The inputs whose scan failed, with the error that stopped it."""
        return {k: v for k, v in self.items() if isinstance(v, BaseException)}

    @property
    def succeeded(self) -> dict[Path, Results]:
        """The inputs whose scan ran to its end, with their results."""
        return {k: v for k, v in self.items() if not isinstance(v, BaseException)}
