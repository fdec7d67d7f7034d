"""One open handle per input file and dataset, per process.

Two handles to one dataset in one process return wrong data after ``refresh()``
(h5py 3.16 / HDF5 2.0), so every reader in a process -- the driver's key
follower and a worker's slab reads alike -- goes through this cache. Files are
opened read-only with ``swmr=True``: that reads finished files, live SWMR files
and files left flagged "open for write" by a crashed writer alike. The input is
never opened for writing.

A file replaced at the same path (new inode) is reopened, not served stale.
:func:`close` leaves alone the handles a read is using (:func:`holding`): two runs
on one input may share a cluster, and the first to end closes that input's handles
on every worker while the other's tasks may be halfway through a read.
A file that is missing, empty, or held by a writer that has not entered SWMR
mode yet raises :class:`InputNotReady`, which a followed run waits out.

A SWMR open skips two of HDF5's checks: that the file is as long as the end of
file stored in its superblock (past it, a truncated file reads as zeros), and
that metadata checksums hold at the first try (it retries a damaged block for
minutes, since a live writer may be halfway through it). So a finished input is
first checked by :func:`check_finished` with a plain read-only open, which
makes both; only a followed file may still be growing.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from .errors import FramebagError

_lock = threading.RLock()
_files: dict[str, tuple[tuple[int, int] | None, h5py.File]] = {}
_datasets: dict[tuple[str, str], h5py.Dataset] = {}
_held: dict[str, int] = {}  # reads using a file's handles now, by path (see holding)


class InputNotReady(FramebagError):
    """The input file is not there yet, or cannot be opened yet.

    Raised for a missing or empty file and for one HDF5 refuses to open (a
    writer holds it, not yet in SWMR mode). A followed run waits for it, up to
    its timeout; any other run reports it at once.
    """


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def open_readonly(path: str | os.PathLike, what: str = "input file", **kwargs: Any) -> h5py.File:
    """Open ``path`` read-only with ``swmr=True``, or say in one sentence why not.

    ``what`` names the file in the message ("input file", "output file" ...).
    A missing or empty file, or one HDF5 refuses to open, raises
    :class:`InputNotReady`; a directory, an unreadable or a non-HDF5 file a
    plain :class:`FramebagError`. ``kwargs`` go to :class:`h5py.File`.
    """
    name = os.fspath(path)
    _check_path(name, what)
    try:
        if set(kwargs) <= {"rdcc_nbytes"} and _metadata_read_attempts() is not None:
            return open_swmr_read(name, kwargs.get("rdcc_nbytes"))
        return h5py.File(name, "r", swmr=True, **kwargs)
    except OSError as exc:
        raise InputNotReady(f"cannot open {what} {name!r}: {exc}") from exc


#: metadata read attempts of an SWMR read; HDF5's default of 100, with
#: a sleep that doubles on each, hangs for minutes on a damaged file
SWMR_READ_ATTEMPTS = 10


def open_swmr_read(path: str | os.PathLike, rdcc_nbytes: int | None = None) -> h5py.File:
    """An SWMR read-only h5py.File of ``path`` whose metadata retries are bounded.

    HDF5 retries a metadata block whose checksum fails up to 100 times, with a
    sleep that doubles each time, since a live writer may be halfway through it;
    on a damaged file that hangs for minutes (and ignores SIGTERM). Ten tries
    still ride out a writer's flush. ``rdcc_nbytes`` sets the chunk cache.
    """
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)  # HDF5's close degree, as h5py's own
    if rdcc_nbytes is not None:
        mdc, nslots, _, w0 = fapl.get_cache()
        fapl.set_cache(mdc, nslots, rdcc_nbytes, w0)
    setter = _metadata_read_attempts()
    if setter is None or setter(fapl.id, SWMR_READ_ATTEMPTS) < 0:
        raise OSError("this h5py's HDF5 cannot bound its SWMR metadata retries")
    fid = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ,
                        fapl=fapl)
    return h5py.File(fid)


@functools.cache
def _metadata_read_attempts() -> Any:
    """``H5Pset_metadata_read_attempts`` of the libhdf5 h5py uses, or None.

    Looked up through h5py's own extension module: the dynamic linker searches
    the libraries it links, which is the very libhdf5 h5py calls. Its version
    must be h5py's, so a stray copy of the library is never used.
    """
    try:
        lib = ctypes.CDLL(h5py.h5p.__file__)
        setter = lib.H5Pset_metadata_read_attempts
        version = lib.H5get_libversion
    except (OSError, AttributeError):
        return None
    parts = [ctypes.c_uint() for _ in range(3)]
    version.argtypes = [ctypes.POINTER(ctypes.c_uint)] * 3
    if version(*[ctypes.byref(p) for p in parts]) < 0 or \
            tuple(p.value for p in parts) != tuple(h5py.version.hdf5_version_tuple[:3]):
        return None
    setter.argtypes = [ctypes.c_int64, ctypes.c_uint]
    setter.restype = ctypes.c_int
    return setter


def _check_path(name: str, what: str) -> None:
    """Raise if ``name`` is not a readable HDF5 file (see :func:`open_readonly`)."""
    if not os.path.exists(name):
        raise InputNotReady(f"{what} {name!r} does not exist")
    if os.path.isdir(name):
        raise FramebagError(f"{what} {name!r} is a directory, not an HDF5 file")
    if not os.access(name, os.R_OK):
        raise FramebagError(f"{what} {name!r} is not readable (permission denied)")
    if not h5py.is_hdf5(name):
        if os.path.getsize(name) == 0:
            raise InputNotReady(f"{what} {name!r} is empty")
        raise FramebagError(f"{what} {name!r} is not an HDF5 file")


def check_finished(path: str | os.PathLike, data: str, keys: list[str]) -> None:
    """Refuse, in one sentence naming the file, a finished input that is truncated or damaged.

    The file is opened without SWMR, as HDF5 checks it then: its size against
    the end of file stored in its superblock, and every metadata checksum on the
    first read. The ``data`` dataset is opened there and the ``keys`` read, so
    damage to them fails at once. A file left flagged "open
    for write" by a crashed SWMR writer refuses that open whatever its state; it
    is checked by comparing its stored end of file with its size instead. The
    input is only read.

    Holds the handle cache's lock throughout: while a file is open without SWMR,
    HDF5 refuses an SWMR open of it in the same process (another run's reads).
    """
    with _lock:
        _check_finished(path, data, keys)


def _check_finished(path: str | os.PathLike, data: str, keys: list[str]) -> None:
    name = os.path.abspath(os.fspath(path))
    _check_path(name, "input file")
    try:
        plain = h5py.File(name, "r")
    except OSError as exc:
        reason = hdf5_reason(exc)
        if "truncated file" in reason:
            stored = re.search(r"stored_eof\s*=\s*(\d+)", reason)
            raise _truncated(name, os.path.getsize(name),
                             int(stored.group(1)) if stored else None) from None
        if "open for write" not in reason and "open for SWMR" not in reason:
            raise FramebagError(f"HDF5 refuses to open input file {name!r} ({reason})") from None
        plain = None  # a crashed SWMR writer's flags: check its end of file below
    if plain is not None:
        with plain:
            for n in [data, *keys]:
                try:
                    obj = plain[n]  # not .get(): it would hide the error as "not there"
                    if n != data and isinstance(obj, h5py.Dataset):
                        obj[()]
                    if isinstance(obj, h5py.Dataset) and obj.is_virtual:
                        _check_virtual_sources(name, n, obj)
                except (OSError, KeyError, RuntimeError) as exc:
                    reason = hdf5_reason(exc)
                    if isinstance(exc, KeyError) and ("doesn't exist" in reason
                                                      or "not found" in reason):
                        continue  # not there: dataset() names what is
                    broken = _broken_link(plain, n, name)
                    if broken is not None:
                        raise broken from None
                    raise FramebagError(f"dataset {n!r} in input file {name!r} is damaged: "
                                        f"HDF5 cannot read it ({reason})") from None
    stored = open_file(name).id.get_filesize()  # the larger of the stored end and the size
    size = os.path.getsize(name)
    if size < stored:
        raise _truncated(name, size, stored)


def _check_virtual_sources(name: str, dataset: str, ds: h5py.Dataset) -> None:
    """Refuse a virtual dataset whose source file is missing.

    HDF5 reads the part of a virtual dataset mapped to a missing source file as
    the fill value, without an error, so a lost detector data file would give
    zeros. A relative source is looked for where HDF5 looks: under
    ``$HDF5_VDS_PREFIX``, beside the virtual file, and from the working
    directory. Printf-style names (``%b``) are left to HDF5.
    """
    here = os.path.dirname(name)
    prefix = os.environ.get("HDF5_VDS_PREFIX", "")
    for src in {vs.file_name for vs in ds.virtual_sources()}:
        if src == "." or "%" in src:
            continue
        places = [src] if os.path.isabs(src) else \
            [p for p in (prefix and os.path.join(prefix, src), os.path.join(here, src), src) if p]
        if not any(os.path.isfile(p) for p in places):
            raise FramebagError(
                f"dataset {dataset!r} in input file {name!r} is virtual and its source file "
                f"{src!r} is missing; HDF5 would read its frames as the fill value")


def _truncated(name: str, size: int, stored: int | None) -> FramebagError:
    whole = f" of the {stored} its HDF5 superblock records" if stored else ""
    return FramebagError(
        f"input file {name!r} is truncated: it holds {size} bytes{whole} (an interrupted copy "
        "or write?); only a file followed with --follow may still be growing"
    )


def hdf5_reason(exc: BaseException) -> str:
    """HDF5's own words from an h5py error, without its "Unable to ... (...)" wrapper."""
    text = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc).strip()
    if text.endswith(")") and "(" in text:
        text = text[text.index("(") + 1 : -1]
    return text


def open_file(path: str) -> h5py.File:
    """The process's read-only handle on ``path``, opened on first use."""
    path = os.path.abspath(path)
    with _lock:
        cached = _files.get(path)
        if cached is not None:
            if cached[1].id.valid and cached[0] == _identity(path):
                return cached[1]
            _drop(path)
        # no chunk cache: partitions are chunk-aligned, so a chunk is read once, and
        # without the cache HDF5 reads it straight into our buffer (25% faster reads)
        f = open_readonly(path, rdcc_nbytes=0)
        _files[path] = (_identity(path), f)
        return f


def dataset(path: str, name: str) -> h5py.Dataset:
    """The process's one handle on dataset ``name`` in ``path``."""
    path = os.path.abspath(path)
    with _lock:
        f = open_file(path)
        ds = _datasets.get((path, name))
        if ds is not None and ds.id.valid:
            return ds
        try:
            obj = f.get(name)
        except (OSError, KeyError, RuntimeError) as exc:
            raise FramebagError(f"dataset {name!r} in input file {path!r} is damaged: HDF5 "
                                f"cannot open it ({hdf5_reason(exc)})") from None
        if obj is None:
            broken = _broken_link(f, name, path)
            if broken is not None:
                raise broken
            raise FramebagError(
                f"dataset {name!r} is not in input file {path!r} "
                f"(datasets there: {', '.join(list_datasets(f)[:12]) or 'none'})"
            )
        if not isinstance(obj, h5py.Dataset):
            raise FramebagError(f"{name!r} in input file {path!r} is a group, not a dataset")
        _datasets[(path, name)] = obj
        return obj


def _broken_link(f: h5py.File, name: str, path: str) -> FramebagError | None:
    """The error for an external link at ``name`` that cannot be followed, else None."""
    try:
        link = f.get(name, getlink=True)
    except (OSError, KeyError, RuntimeError):
        return None
    if not isinstance(link, h5py.ExternalLink):
        return None
    return FramebagError(
        f"dataset {name!r} in input file {path!r} is an external link to {link.path!r} in "
        f"{link.filename!r}, which cannot be opened (is that file there, next to the input?)")


def attr_text(value: Any) -> str:
    """An HDF5 attribute value as text: bytes decoded, arrays as lists, None as ""."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return str(value.tolist())
    return str(value)


def list_datasets(f: h5py.File) -> list[str]:
    """Every dataset path in ``f`` (external and soft links followed), each with where it
    lives when not plainly in ``f`` (see :func:`walk`)."""
    return [f"{e.name} ({e.where})" if e.where else e.name for e in walk(f)]


@dataclass(frozen=True)
class Entry:
    """One dataset of a file as :func:`walk` finds it.

    ``dataset`` is None where a link cannot be followed (its target file or
    object is missing); ``where`` says where the values live when not plainly
    here: an external link's target file and path, or a virtual dataset's
    source files.
    """

    name: str
    dataset: h5py.Dataset | None
    where: str = ""


def walk(f: h5py.File) -> list[Entry]:
    """Every dataset of ``f``, following external and soft links, in name order.

    ``visititems`` stops at links (the Eiger/Dectris master file holds nothing
    but external links to its data files), so this walks the groups itself.
    A group is entered once, by the first path that reaches it.
    """
    out: list[Entry] = []
    seen: set[Any] = set()

    def visit(g: h5py.Group, prefix: str, via: str) -> None:
        for name in g:
            path = f"{prefix}{name}"
            link = g.get(name, getlink=True)
            where = via
            if isinstance(link, h5py.ExternalLink):
                where = f"external link to {link.filename}:{link.path}"
            elif isinstance(link, h5py.SoftLink):
                where = f"soft link to {link.path}"
            try:
                obj = g[name]
            except (KeyError, OSError, RuntimeError):
                out.append(Entry(path, None, f"{where} (cannot be opened: missing?)"))
                continue
            if isinstance(obj, h5py.Group):
                ident = (obj.file.filename, obj.id.__hash__())
                if ident not in seen:
                    seen.add(ident)
                    visit(obj, path + "/", where)
            elif isinstance(obj, h5py.Dataset):
                if obj.is_virtual:
                    where = ", ".join(filter(None, [where, _virtual_sources(obj)]))
                out.append(Entry(path, obj, where))

    visit(f, "", "")
    return out


def files_behind(path: str, names: list[str]) -> dict[str, str]:
    """The other files that datasets ``names`` of input ``path`` read from: the target
    of an external link, the source files of a virtual dataset. ``{file: dataset}``."""
    here = os.path.abspath(path)
    out: dict[str, str] = {}
    for name in names:
        ds = dataset(here, name)
        home = os.path.abspath(ds.file.filename)
        if home != here:
            out.setdefault(home, name)
        if ds.is_virtual:
            for m in ds.virtual_sources():
                if m.file_name != ".":
                    out.setdefault(os.path.join(os.path.dirname(home), m.file_name), name)
    return out


def missing_sources(ds: h5py.Dataset) -> list[str]:
    """The source files of virtual dataset ``ds`` that are not there (HDF5 would read
    their frames as the fill value without a word)."""
    here = os.path.dirname(ds.file.filename)
    files = dict.fromkeys(m.file_name for m in ds.virtual_sources()) if ds.is_virtual else {}
    return [n for n in files if n != "." and not os.path.exists(os.path.join(here, n))
            and not os.path.exists(n)]


def _virtual_sources(ds: h5py.Dataset) -> str:
    """"virtual over N files: a.h5, b.h5 ..." naming the files that are not there."""
    files = list(dict.fromkeys(m.file_name for m in ds.virtual_sources()))
    missing = missing_sources(ds)
    shown = [f"{n} (missing)" if n in missing else n for n in files]
    more = f" and {len(shown) - 6} more" if len(shown) > 6 else ""
    return f"virtual over {len(files)} file{'s' * (len(files) != 1)}: {', '.join(shown[:6])}{more}"


@contextmanager
def holding(path: str) -> Iterator[None]:
    """While inside, :func:`close` leaves this process's handles on ``path`` open."""
    path = os.path.abspath(path)
    with _lock:
        _held[path] = _held.get(path, 0) + 1
    try:
        yield
    finally:
        with _lock:
            _held[path] -= 1
            if not _held[path]:
                del _held[path]


def close(path: str | None = None) -> None:
    """Close the handles on ``path`` (or on every file) held by this process, but not
    those a read is using (:func:`holding`): the last run on a file closes them."""
    with _lock:
        paths = [os.path.abspath(path)] if path else list(_files)
        for p in paths:
            if p not in _held:
                _drop(p)


def _drop(path: str) -> None:
    """Close the handles on ``path`` now (``_lock`` held)."""
    for key in [k for k in _datasets if k[0] == path]:
        del _datasets[key]
    entry = _files.pop(path, None)
    if entry is not None and entry[1].id.valid:
        entry[1].close()
