"""Workflow: the registry of per-frame functions, their folds and parameters.

A workflow module creates one :class:`Workflow` and registers functions on it::

    workflow = Workflow("frame_sum", data="entry/data/data", keys=["entry/keys/key_1"])

    @workflow.frame                 # fold "stack": one value per frame
    def total(frame):
        return frame.sum()

    @workflow.frame(fold="max")     # one frame-shaped result
    def brightest(frame):
        return frame

    @workflow.frames                # batched: a stack (n, *frame_shape) in, n values out
    def totals(frames):
        return frames.sum(axis=(1, 2))

A function's keyword parameters with defaults are the workflow's parameters;
``framebag run --set y0=2`` overrides them (converted to the default's type).
A parameter named ``index`` is not a parameter: it receives the frame's scan
index as a tuple (for batched functions, an ``(n, scan_rank)`` array).

Per-worker setup: ``@workflow.setup`` registers a function whose value every
frame function may ask for, by a parameter of the setup's name with no default::

    @workflow.setup                 # once per worker process, per parameter values
    def mask(mask_file="mask.npy"):
        return np.load(mask_file)

    @workflow.frame
    def masked_sum(frame, mask):    # receives mask()'s value
        return frame[mask].sum()

The setup's keyword parameters are workflow parameters like any other
(``--set mask_file=/data/mask.npy``). Its value is computed where the frames
are processed (on each worker, and on the driver for the probe), never sent
from the driver, and cached there per process: see :meth:`Workflow.setup`.

:meth:`Workflow.apply` is the per-partition hot path run on the workers: one
call per function per frame (or per stack), no I/O, no copies of the frames.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import inspect
import os
import socket
import sys
import threading
import types
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

import numpy as np

from . import folds as _folds
from .errors import FramebagError, FrameError, SetupError, ValueKindError
from .layout import AXIS_NAMES, NXDATA_SUFFIX, RESERVED
from .partials import Kinds, Partial
from .partitions import scan_index

if TYPE_CHECKING:  # types only; run() and run_many() import the engine when called
    from .engine import ManyResults, Results

__all__ = ["Workflow", "FrameFunction", "SetupFunction", "SetupError", "FrameError",
           "ValueKindError", "Partial", "load_workflow"]

_INDEX = "index"

#: numpy dtype kinds a function may return: bool, integers, floats, complex
NUMERIC = "biufc"

@dataclass
class FrameFunction:
    """One registered function: how to call it and how to fold its values."""

    name: str
    func: Callable[..., Any]
    fold: _folds.Fold
    batched: bool
    wants_index: bool
    defaults: dict[str, Any]
    #: the units of the function's values (the ``units=`` of the decorator), or ""
    units: str = ""
    #: the setups it asks for: its parameters after the frame with no default (not ``index``)
    wants: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        self.wants = _wanted(self.func)

    def bind(self, params: Mapping[str, Any],
             setups: Mapping[str, Any] | None = None) -> dict[str, Any]:
        kw = {k: params.get(k, v) for k, v in self.defaults.items()}
        for name in self.wants:  # the setup values it asks for
            kw[name] = (setups or {})[name]
        return kw

    def __setstate__(self, state: dict[str, Any]) -> None:
        # unpickled on a worker: name the workflow file again in the code (see _named_code)
        self.__dict__.update(state)
        self.func = _named_code(self.func)


@dataclass
class SetupFunction:
    """One registered per-worker setup: its function and its parameters with defaults."""

    name: str
    func: Callable[..., Any]
    defaults: dict[str, Any]

    def bind(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {k: params.get(k, v) for k, v in self.defaults.items()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.func = _named_code(self.func)


#: this process's setup values: ``(workflow token, setup name) -> (parameters, files, value)``.
#: One value per setup of a workflow (new parameters or files replace it), and at most
#: ``_SETUP_CACHE_SIZE`` in all, the least recently used dropped first.
_SETUP_CACHE: OrderedDict[tuple[str, str], tuple[str, str | None, Any]] = OrderedDict()
_SETUP_CACHE_SIZE = 16
#: held while a setup runs, so the threads of one worker run it once between them
_SETUP_LOCK = threading.Lock()


def _this_process() -> str:
    """Where code runs, for a message: the dask worker's address and host:pid, or the driver."""
    host = f"{socket.gethostname()}:{os.getpid()}"
    try:
        from distributed import get_worker

        return f"worker {get_worker().address} ({host})"
    except (ImportError, ValueError):
        return f"the driver ({host})"


#: the file name cloudpickle gives every code object it pickles by value
_DYNAMIC = "<dynamic-code>"


def _recode(code: types.CodeType, filename: str) -> types.CodeType:
    consts = tuple(_recode(c, filename) if isinstance(c, types.CodeType) else c
                   for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


def _named_code(func: Any) -> Any:
    """``func`` with the functions of its workflow file naming that file again.

    cloudpickle (3.x) rebuilds a function pickled by value with the file name
    ``<dynamic-code>``, so a warning or traceback raised in it on a worker says
    ``<dynamic-code>:8``. Its globals still hold the file's ``__file__``: every
    function of that file (the registered one and the helpers it calls, which
    share those globals) gets its code back under that name, so warnings and
    tracebacks show the workflow file, its line and the source text.
    """
    if not isinstance(func, types.FunctionType):
        return func
    glob = func.__globals__
    filename = glob.get("__file__")
    if not isinstance(filename, str):
        return func
    for value in [func, *glob.values()]:
        if (isinstance(value, types.FunctionType) and value.__globals__ is glob
                and value.__code__.co_filename == _DYNAMIC):
            value.__code__ = _recode(value.__code__, filename)
    return func


def _user_line(exc: BaseException) -> str:
    """`` (file:line)`` of the innermost traceback entry outside framebag and the libraries."""
    import traceback

    ours = str(Path(__file__).parent)
    libs = tuple({sys.prefix, sys.base_prefix, sys.exec_prefix})
    where = ""
    for entry in traceback.extract_tb(exc.__traceback__):
        name = entry.filename
        if name.startswith(ours) or name.startswith(libs) or name.startswith("<"):
            continue
        where = f" (at {name}:{entry.lineno})"
    return where


class Workflow:
    """A named set of per-frame functions run in one pass over an HDF5 scan.

    ``data`` and ``keys`` are the default dataset paths (the CLI's ``--data`` and
    ``--keys`` override them); ``finished`` is the optional path of the
    "scan finished" flag used when following a live file. ``axes`` are the
    default paths of the scan's motor positions, one per scan dim (the CLI's
    ``--axes``): the output's scan axes, instead of scan indices.

    Functions are registered with :meth:`frame` and :meth:`frames`; what a
    function receives is decided by its parameters' names: the first is the
    frame (or stack), ``index`` the scan index, a parameter with a default a
    workflow parameter (``--set``), and a parameter without a default the value
    of the setup function of that name (:meth:`setup`: loaded once per worker
    process, like LiberTEM's task data, but asked for by name as a pytest fixture
    is). A name that is none of these is refused when the workflow is loaded or run.
    """

    def __init__(
        self,
        name: str,
        *,
        data: str | None = None,
        keys: list[str] | str | None = None,
        finished: str | None = None,
        axes: list[str] | str | None = None,
    ) -> None:
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"workflow name {name!r} must be letters, digits, '_' or '-'")
        self.name = name
        self.data = data
        self.keys = [keys] if isinstance(keys, str) else list(keys or [])
        self.finished = finished
        self.axes = [axes] if isinstance(axes, str) else list(axes or [])
        self.functions: dict[str, FrameFunction] = {}
        self.setups: dict[str, SetupFunction] = {}
        self.source: str = ""
        #: who this workflow is, in the setup caches of the workers (it travels with it)
        self.token = uuid.uuid4().hex

    # registration ------------------------------------------------------------

    def frame(self, func: Callable[..., Any] | None = None, *, fold: Any = None,
              name: str | None = None, units: str = "", **fold_options: Any) -> Any:
        """Register a function of one frame. Usable bare or as ``@frame(fold=...)``.

        ``units`` (e.g. ``"counts"``, ``"mm"``) are the units of the values it
        returns; the output records them on the result (see the README's output layout).
        """
        return self._register(func, fold, name, False, fold_options, units)

    def frames(self, func: Callable[..., Any] | None = None, *, fold: Any = None,
               name: str | None = None, units: str = "", **fold_options: Any) -> Any:
        """Register a batched function: a stack ``(n, *frame_shape)`` in, ``n`` values out."""
        return self._register(func, fold, name, True, fold_options, units)

    def _register(self, func: Any, fold: Any, name: str | None, batched: bool,
                  fold_options: dict[str, Any], units: str = "") -> Any:
        if not isinstance(units, str):
            raise TypeError(f"units must be a string such as 'mm' or 'counts', not {units!r}")

        def register(f: Callable[..., Any]) -> Callable[..., Any]:
            fname = name or f.__name__
            if fname in self.functions:
                raise ValueError(f"workflow {self.name!r} already has a function {fname!r}")
            if fname in RESERVED:
                raise ValueError(f"{fname!r} is reserved for the output layout; rename it")
            if fname.endswith(NXDATA_SUFFIX) or AXIS_NAMES.fullmatch(fname):
                raise ValueError(f"{fname!r} is reserved for the output's NXdata groups (names "
                                 f"ending in {NXDATA_SUFFIX!r}, and scan_0, frame_y, frame_x, "
                                 "bin_centres, bin_edges ...); rename it")
            self.functions[fname] = FrameFunction(
                fname, f, _folds.resolve(fold, **fold_options), batched, *_signature(f),
                units=units,
            )
            return f

        return register(func) if func is not None else register

    def setup(self, func: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
        """Register a per-worker setup function. Usable bare or as ``@setup(name=...)``.

        A frame function (or batched one) receives the setup's value through a
        parameter of the setup's name that has no default. The setup's own
        parameters all need defaults: they are workflow parameters, set with
        ``--set`` like a frame function's. It runs once per worker process for
        each set of parameter values (and on the driver, for the probe), when
        the first task there needs it; the value stays cached in that process
        for later tasks and later runs of the same workflow object with the same
        parameter values, unless a file a parameter names changed (its sha256,
        taken on the driver at the start of each run). Nothing of it is sent over
        the network. The files its parameters name are hashed
        into the output's provenance, and ``--resume`` refuses an output made
        with other file contents.
        """
        def register(f: Callable[..., Any]) -> Callable[..., Any]:
            sname = name or f.__name__
            if not sname.isidentifier() or sname == _INDEX:
                raise ValueError(f"setup name {sname!r} must be a Python identifier other than "
                                 f"{_INDEX!r}")
            if sname in self.setups:
                raise ValueError(f"workflow {self.name!r} already has a setup {sname!r}")
            self.setups[sname] = SetupFunction(sname, f, _setup_signature(f))
            return f

        return register(func) if func is not None else register

    def check_setups(self) -> None:
        """Refuse, in one sentence, a function that asks for a setup no one registered,
        or a setup that has the name of a parameter."""
        params = self.params
        for fn in self.functions.values():
            for want in fn.wants:
                if want not in self.setups:
                    have = ", ".join(sorted(self.setups)) or "none"
                    raise FramebagError(
                        f"function {fn.name!r} of workflow {self.name!r} asks for {want!r}, "
                        f"which is neither a parameter with a default nor a setup (setups: "
                        f"{have}); give it a default, or register a setup function named "
                        f"{want!r} with @workflow.setup")
        for sname in self.setups:
            if sname in params:
                raise FramebagError(f"setup {sname!r} of workflow {self.name!r} has the name of "
                                    "a parameter; rename one of them")

    def setup_values(self, params: Mapping[str, Any],
                     files: str | None = None) -> dict[str, Any]:
        """Every setup's value for ``params``, from this process's cache or computed now.

        ``files`` says which contents the files named by the parameters have (the run
        passes their sha256, taken once on the driver): a value cached for other
        contents is computed again. ``None`` takes a value cached for any contents.
        Raises :class:`SetupError` naming the setup and this process when one fails.
        """
        out: dict[str, Any] = {}
        for s in self.setups.values():
            kw = s.bind(params)
            key = repr(sorted(kw.items()))
            slot = (self.token, s.name)
            with _SETUP_LOCK:
                hit = _SETUP_CACHE.get(slot)
                if hit is not None and hit[0] == key and files in (None, hit[1]):
                    _SETUP_CACHE.move_to_end(slot)
                    out[s.name] = hit[2]
                    continue
                _SETUP_CACHE.pop(slot, None)  # the old value goes before the new one is made
                try:
                    value = s.func(**kw)
                except Exception as exc:  # noqa: BLE001 - any error of user code, in one line
                    cause = " ".join(f"{type(exc).__name__}: {exc}".split())
                    raise SetupError(f"setup function {s.name!r} failed on {_this_process()}: "
                                     f"{cause}{_user_line(exc)}") from exc
                _SETUP_CACHE[slot] = (key, files, value)
                while len(_SETUP_CACHE) > _SETUP_CACHE_SIZE:
                    _SETUP_CACHE.popitem(last=False)
            out[s.name] = value
        return out

    def setup_params(self, params: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """Each setup's parameters and their values in ``params``, for the provenance."""
        return {s.name: s.bind(params) for s in self.setups.values()}

    # parameters --------------------------------------------------------------

    @property
    def params(self) -> dict[str, Any]:
        """Every function's and setup's keyword parameter and its default (shared names
        share a value)."""
        out: dict[str, Any] = {}
        for fn in self.functions.values():
            out.update(fn.defaults)
        for s in self.setups.values():
            out.update(s.defaults)
        return out

    def resolve_params(self, given: Mapping[str, Any] | None) -> dict[str, Any]:
        """Check ``given`` against the declared parameters and convert strings.

        Values given as strings (from ``--set``) are converted to the type of the
        default; an unknown name or an unconvertible value is a FramebagError, and so
        is a function asking for a setup that is not there (:meth:`check_setups`).
        """
        self.check_setups()
        known = self.params
        out = dict(known)
        for key, value in (given or {}).items():
            if key not in known:
                valid = ", ".join(sorted(known)) or "none"
                raise FramebagError(
                    f"unknown parameter {key!r} for workflow {self.name!r} (parameters: {valid})"
                )
            out[key] = _convert(key, value, known[key])
        return out

    # the hot path ------------------------------------------------------------

    def apply(self, frames: np.ndarray, start: int, scan_shape: tuple[int, ...],
              params: Mapping[str, Any], on_error: str = "raise",
              expect: Kinds | None = None, setups: Mapping[str, Any] | None = None) -> Partial:
        """Run every function over ``frames`` (the run ``start .. start+len``) and fold.

        Each frame is computed by all functions before it is folded, so a frame
        that fails in any function (with ``on_error="skip"``) is left out of all.

        Every value must be numeric and of one dtype per function (and one shape,
        for a stack): the first value of each function is checked against
        ``expect`` (the kinds an earlier partial showed, see :attr:`Partial.kinds`),
        every later one against the first, by its type and dtype only -- a value
        is converted only when its type differs. A value that breaks this raises
        :class:`ValueKindError`, whatever ``on_error`` says.

        ``setups`` are the setup values (:meth:`setup_values`, looked up once per task
        by the caller); without them, they are looked up here.
        """
        n = len(frames)
        done = np.ones(n, dtype=bool)
        errors: list[tuple[int, str, str]] = []
        per_frame = [f for f in self.functions.values() if not f.batched]
        batched = [f for f in self.functions.values() if f.batched]
        if setups is None and self.setups:
            setups = self.setup_values(params)
        kwargs = {f.name: f.bind(params, setups) for f in self.functions.values()}
        expect = expect or {}
        kinds: Kinds = {}
        index: Any = None  # the scan indices, made only when a function asks for them
        if any(f.wants_index for f in self.functions.values()):
            index = np.stack(np.unravel_index(np.arange(start, start + n), scan_shape), axis=1)

        values: dict[str, Any] = {}
        for f in batched:
            kw = dict(kwargs[f.name])
            if f.wants_index:
                kw[_INDEX] = index
            try:
                out = np.asarray(f.func(frames, **kw))
                if len(out) != n:
                    raise ValueError(f"returned {len(out)} values for a stack of {n} frames")
                values[f.name] = out
            except Exception as exc:  # noqa: BLE001 - reported with the frame, below
                if on_error != "skip" or n == 1:
                    self._fail(f.name, start, scan_shape, exc, on_error, errors, done, 0)
                    values[f.name] = None
                else:
                    values[f.name] = self._batched_one_by_one(
                        f, frames, kw, start, scan_shape, errors, done, index
                    )
            if values[f.name] is not None:
                kinds[f.name] = _batched_kind(f.name, values[f.name], start, scan_shape,
                                              f.fold.is_stack, expect.get(f.name))

        stacks: dict[str, np.ndarray] = {}
        accs: dict[str, Any] = {f.name: f.fold.initial() for f in self.functions.values()
                                if not f.fold.is_stack}
        if per_frame:
            calls = [(f.name, f.func, kwargs[f.name], f.wants_index, f.fold) for f in per_frame]
            outs: dict[str, Any] = {f.name: None for f in per_frame if f.fold.is_stack}
            # per function, of its first value here: (type, dtype, shape, whether the type is
            # an array, whose dtype and shape vary by instance); the hot path's check
            first: dict[str, tuple[type, np.dtype, tuple[int, ...], bool | None]] = {}
            alive = done.tolist()  # frames a batched function failed on are skipped
            for i in range(n):
                if not alive[i]:
                    continue
                frame = frames[i]
                row = []
                for fname, func, kw, wants_index, _ in calls:
                    try:
                        v = func(frame, index=tuple(index[i]), **kw) if wants_index \
                            else func(frame, **kw)
                    except Exception as exc:  # noqa: BLE001
                        self._fail(fname, start + i, scan_shape, exc, on_error, errors, done, i)
                        break
                    row.append(v)
                else:
                    for (fname, _, _, _, fold), v in zip(calls, row):
                        k = first.get(fname)
                        t = type(v)
                        if k is None or t is not k[0] or k[3] is None or (k[3] and (
                                (v.dtype is not k[1] and v.dtype != k[1])
                                or (fold.is_stack and v.shape != k[2]))):
                            k = first[fname] = _value_kind(
                                fname, v, start + i, scan_shape, fold.is_stack,
                                kinds.get(fname) or expect.get(fname), kinds)
                        if fold.is_stack:
                            out = outs[fname]
                            if out is None:
                                out = outs[fname] = np.zeros((n, *k[2]), dtype=k[1])
                            out[i] = v
                        else:
                            try:
                                accs[fname] = fold.binop(accs[fname], v)
                            except Exception as exc:  # noqa: BLE001 - e.g. a changed shape
                                _fold_error(fname, fold, accs[fname], v, start + i, scan_shape,
                                            exc)
            for fname, out in outs.items():
                if out is not None:
                    stacks[fname] = out

        for f in batched:
            vals = values[f.name]
            if vals is None:
                continue
            if f.fold.is_stack:
                if not done.all():
                    vals = np.array(vals, copy=True)
                    vals[~done] = 0
                stacks[f.name] = vals
            else:
                accs[f.name] = f.fold.add_many(accs[f.name], vals if done.all() else vals[done])
        return Partial(start, start + n, done, stacks, accs, errors, kinds=kinds)

    def _batched_one_by_one(self, f: FrameFunction, frames: np.ndarray, kw: dict[str, Any],
                            start: int, scan_shape: tuple[int, ...], errors: list,
                            done: np.ndarray, index: Any) -> np.ndarray | None:
        """After a batched call failed under on_error='skip', find the failing frames."""
        rows: list[Any] = []
        for i in range(len(frames)):
            if f.wants_index:
                kw[_INDEX] = index[i : i + 1]
            try:
                rows.append(np.asarray(f.func(frames[i : i + 1], **kw))[0])
            except Exception as exc:  # noqa: BLE001
                self._fail(f.name, start + i, scan_shape, exc, "skip", errors, done, i)
                rows.append(None)
        good = next((r for r in rows if r is not None), None)
        if good is None:
            return None
        return np.stack([np.zeros_like(good) if r is None else r for r in rows])

    @staticmethod
    def _fail(fname: str, flat: int, scan_shape: tuple[int, ...], exc: Exception,
              on_error: str, errors: list, done: np.ndarray, i: int) -> None:
        message = f"{type(exc).__name__}: {exc}"
        if on_error != "skip":
            raise FrameError(
                f"function {fname!r} failed on frame {scan_index(flat, scan_shape)}: {message}"
                f"{_user_line(exc)}"
            ) from exc
        done[i] = False
        errors.append((flat, fname, message))

    # running -----------------------------------------------------------------

    def run(self, input: str | Path, output: str | Path | None = None, *,  # noqa: A002
            client: Any = None, profile: str | None = None,
            params: Mapping[str, Any] | None = None, **options: Any) -> Results:
        """Run the workflow over ``input`` and return the results keyed by function name.

        With ``client`` (a ``distributed.Client``) no cluster is started; otherwise the
        ``profile`` (default ``local``) is started and shut down. ``options`` are the
        engine's run options (``data``, ``keys``, ``follow``, ``timeout``,
        ``partition_bytes``, ``overwrite``, ``resume``, ``on_error`` ...).
        """
        from .engine import run

        return run(self, input, output, client=client, profile=profile, params=params,
                   **options)

    def run_many(self, inputs: Iterable[str | Path], out_dir: str | Path | None = None, *,
                 client: Any = None, profile: str | None = None,
                 params: Mapping[str, Any] | None = None, **options: Any) -> ManyResults:
        """Run the workflow over each of ``inputs`` on one cluster; one output per input.

        Outputs get the default names, next to each input or in ``out_dir`` (an
        existing directory). A scan that fails does not stop the others: the result
        maps each input path to its results (as :meth:`run` returns them) or to the
        exception that stopped it; ``.failed`` and ``.succeeded`` split it. ``options``
        are :meth:`run`'s and apply to each output on its own (``resume``,
        ``overwrite``).
        """
        from .engine import run_many

        return run_many(self, list(inputs), out_dir, client=client, profile=profile,
                        params=params, **options)

    def __repr__(self) -> str:
        return f"Workflow({self.name!r}, functions={list(self.functions)})"


# helpers -----------------------------------------------------------------------


def _signature(f: Callable[..., Any]) -> tuple[bool, dict[str, Any]]:
    sig = inspect.signature(f)
    ps = list(sig.parameters.values())
    if not ps or ps[0].kind not in (ps[0].POSITIONAL_ONLY, ps[0].POSITIONAL_OR_KEYWORD):
        raise TypeError(f"{f.__name__}: the first parameter must take the frame")
    wants_index = False
    defaults: dict[str, Any] = {}
    for p in ps[1:]:
        if p.name == _INDEX:
            wants_index = True
        elif p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(
                f"{f.__name__}: parameter {p.name!r} cannot be filled; framebag passes only "
                "the frame, the index, setup values and parameters with defaults"
            )
        elif p.default is not p.empty:
            defaults[p.name] = p.default
        # no default: a setup's value (checked against the setups at run start)
    return wants_index, defaults


def _wanted(f: Callable[..., Any]) -> tuple[str, ...]:
    """The setups a function asks for: its parameters after the frame with no default."""
    ps = list(inspect.signature(f).parameters.values())[1:]
    return tuple(p.name for p in ps if p.name != _INDEX and p.default is p.empty
                 and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))


def _setup_signature(f: Callable[..., Any]) -> dict[str, Any]:
    """A setup function's parameters and their defaults; each needs one."""
    defaults: dict[str, Any] = {}
    for p in inspect.signature(f).parameters.values():
        if p.default is p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) \
                or p.kind == p.POSITIONAL_ONLY:
            raise TypeError(
                f"setup {f.__name__}: parameter {p.name!r} needs a default; a setup function "
                "takes only parameters with defaults (the workflow's parameters)"
            )
        defaults[p.name] = p.default
    return defaults


def _convert(key: str, value: Any, default: Any) -> Any:
    if not isinstance(value, str) or isinstance(default, str):
        return value
    try:
        if isinstance(default, bool):
            low = value.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(default, (int, float, complex)):
            return type(default)(value)
        if isinstance(default, PurePath):  # a file a setup loads: Path stays Path
            return type(default)(value)
        if default is None or isinstance(default, (list, tuple, dict)):
            parsed = ast.literal_eval(value)
            if default is not None and not isinstance(parsed, type(default)):
                raise ValueError(value)
            return parsed
    except (ValueError, SyntaxError):
        raise FramebagError(
            f"--set {key}={value}: cannot convert {value!r} to "
            f"{type(default).__name__} (the type of its default {default!r})"
        ) from None
    return value


def _what(v: Any) -> str:
    """A returned value described for a message: its type, and its dtype and shape if any."""
    if v is None:
        return "None"
    name = type(v).__name__
    try:
        a = np.asarray(v)
    except Exception:  # noqa: BLE001 - an object numpy cannot even look at
        return name
    if a.dtype.kind not in NUMERIC:
        return f"{name} of dtype {a.dtype}" if isinstance(v, (np.ndarray, np.generic)) else name
    return f"{name} of shape {a.shape} dtype {a.dtype}"


def _value_kind(fname: str, v: Any, flat: int, scan_shape: tuple[int, ...], is_stack: bool,
                ref: tuple[np.dtype, tuple[int, ...], int] | None,
                kinds: Kinds) -> tuple[type, np.dtype, tuple[int, ...], bool | None]:
    """Check a value whose type differs from the function's first value here (or the first).

    Returns its ``(type, dtype, shape, is_array)`` for the hot path's check (``is_array``
    None: a list, tuple or Python int, checked on every frame) and, for
    a function's first value, records ``(dtype, shape, flat)`` in ``kinds``. Raises
    :class:`ValueKindError` for a value that is not numeric, or whose dtype (or shape,
    for a stack) differs from ``ref``.
    """
    try:
        a = np.asarray(v)
    except Exception:  # noqa: BLE001 - e.g. a ragged list numpy refuses
        a = np.asarray(None)
    where = scan_index(flat, scan_shape)
    if a.dtype.kind not in NUMERIC:
        raise ValueKindError(
            f"function {fname!r} returned {_what(v)} on frame {where}; a function must return "
            "a number or a numeric array"
        )
    if ref is not None and (a.dtype != ref[0] or (is_stack and a.shape != ref[1])):
        earlier = f"shape {ref[1]} dtype {ref[0]}" if is_stack else f"dtype {ref[0]}"
        raise ValueKindError(
            f"function {fname!r} returned {_what(v)} on frame {where}, but {earlier} on frame "
            f"{scan_index(ref[2], scan_shape)}; "
            + ("a stacked result needs one shape and dtype" if is_stack
               else "every value of a function needs one dtype")
        )
    kinds.setdefault(fname, (a.dtype, a.shape, flat))
    # a list, tuple or Python int has no dtype of its own: [1, 2.5] after [1, 2], or an
    # int past int64, would be cast (or overflow) in the stack, so each is checked again
    fixed = isinstance(v, (float, complex, np.generic)) or isinstance(v, np.ndarray)
    return type(v), a.dtype, a.shape, isinstance(v, np.ndarray) if fixed else None


def _batched_kind(fname: str, values: np.ndarray, start: int, scan_shape: tuple[int, ...],
                  is_stack: bool, ref: tuple[np.dtype, tuple[int, ...], int] | None,
                  ) -> tuple[np.dtype, tuple[int, ...], int]:
    """Check a batched function's values (one per frame) as :func:`_value_kind` does."""
    if values.dtype.kind not in NUMERIC:
        bad = next((i for i, v in enumerate(values)
                    if np.asarray(v).dtype.kind not in NUMERIC), 0) if values.ndim else 0
        v = values[bad] if values.ndim else values
        raise ValueKindError(
            f"batched function {fname!r} returned {_what(v)} for frame "
            f"{scan_index(start + bad, scan_shape)} (in an array of dtype {values.dtype}); "
            "a function must return numbers or numeric arrays"
        )
    shape = values.shape[1:]
    if ref is not None and (values.dtype != ref[0] or (is_stack and shape != ref[1])):
        earlier = f"shape {ref[1]} dtype {ref[0]}" if is_stack else f"dtype {ref[0]}"
        raise ValueKindError(
            f"batched function {fname!r} returned values of shape {shape} dtype "
            f"{values.dtype} for frames from {scan_index(start, scan_shape)}, but {earlier} "
            f"for frame {scan_index(ref[2], scan_shape)}; "
            + ("a stacked result needs one shape and dtype" if is_stack
               else "every value of a function needs one dtype")
        )
    return values.dtype, shape, start


def _fold_error(fname: str, fold: _folds.Fold, acc: Any, v: Any, flat: int,
                scan_shape: tuple[int, ...], exc: Exception) -> None:
    try:
        earlier = f"shape {np.shape(fold.finalize(acc))} before"
    except Exception:  # noqa: BLE001 - a custom fold's accumulator may not finalize
        earlier = "the earlier frames"
    raise FrameError(
        f"function {fname!r}: fold {fold.name!r} failed on frame {scan_index(flat, scan_shape)}, "
        f"which gave shape {np.shape(v)} against {earlier} ({type(exc).__name__}: {exc})"
    ) from exc


def load_workflow(spec: str | Path) -> Workflow:
    """Load the :class:`Workflow` in a Python file or an importable (dotted) module.

    A file is imported under a private module name and registered with cloudpickle
    by value, so workers that cannot import it still get its functions.
    """
    path = Path(spec)
    if path.suffix == ".py" or path.exists():
        if not path.is_file():
            raise FramebagError(f"workflow file {str(spec)!r} does not exist")
        source = path.read_bytes()
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
        modname = f"framebag_user_{path.stem}_{digest}"
        mspec = importlib.util.spec_from_file_location(modname, path)
        if mspec is None or mspec.loader is None:
            raise FramebagError(f"cannot import workflow file {str(spec)!r}")
        module = importlib.util.module_from_spec(mspec)
        sys.modules[modname] = module
        try:
            mspec.loader.exec_module(module)
        except FramebagError:
            raise
        except Exception as exc:
            del sys.modules[modname]
            raise FramebagError(
                f"workflow file {str(spec)!r} failed to import: {type(exc).__name__}: {exc}"
            ) from exc
        import cloudpickle

        cloudpickle.register_pickle_by_value(module)
        where = str(path)
    else:
        try:
            module = importlib.import_module(str(spec))
        except ImportError as exc:
            raise FramebagError(
                f"workflow {str(spec)!r} is neither a file nor an importable module ({exc})"
            ) from exc
        source = inspect.getsource(module).encode() if hasattr(module, "__file__") else b""
        where = str(spec)
    found = [v for v in vars(module).values() if isinstance(v, Workflow)]
    if not found:
        raise FramebagError(f"workflow {where!r} defines no framebag.Workflow")
    if len(found) > 1:
        names = ", ".join(w.name for w in found)
        raise FramebagError(f"workflow {where!r} defines several Workflows ({names}); keep one")
    wf = found[0]
    if not wf.functions:
        raise FramebagError(f"workflow {wf.name!r} in {where!r} registers no function")
    wf.check_setups()
    wf.source = hashlib.sha256(source).hexdigest()
    return wf
