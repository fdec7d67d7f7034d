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

One module of about 1,200 lines because registration and the hot path share
the per-result bookkeeping (``outputs=``, declared kinds, ragged rows, setups):
:meth:`Workflow.apply` reads exactly what the decorators record, and the value
checks that both use sit at the end of the module.
"""

from __future__ import annotations

import ast
import bisect
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import socket
import sys
import threading
import types
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from . import folds as _folds
from .errors import FramebagError, FrameError, SetupError, ValueKindError
from .layout import AXIS_NAMES, NXDATA_SUFFIX, RESERVED
from .partials import Kinds, Partial
from .partitions import scan_index

if TYPE_CHECKING:  # types only; run() and run_many() import the engine when called
    from .engine import ManyResults, Results
    from .options import RunOptions

__all__ = ["Workflow", "FrameFunction", "SetupFunction", "SetupError", "FrameError",
           "ValueKindError", "Partial", "load_workflow"]

_INDEX = "index"

#: numpy dtype kinds a function may return: bool, integers, floats, complex
NUMERIC = "biufc"

#: the flat index a declared kind carries in :data:`Kinds` (no frame showed it)
DECLARED = -1

@dataclass
class FrameFunction:
    """One result of a registered function: how to call the function and how to fold
    the values (one per function, or one per key of its ``outputs=``)."""

    name: str
    func: Callable[..., Any]
    fold: _folds.Fold
    batched: bool
    wants_index: bool
    defaults: dict[str, Any]
    #: the units of the function's values (the ``units=`` of the decorator), or ""
    units: str = ""
    #: the registered function's name: ``name`` itself, or for one result of ``outputs=``
    #: the function that returns it (``name`` is then ``<function>_<key>``)
    function: str = ""
    #: this result's key in the dict the function returns (``outputs=``), or None
    key: str | None = None
    #: the declared value shape (``shape=``; ``"frame"``: the frame's shape) and dtype
    #: (``dtype=``), both or neither: a declared result is not probed on the driver
    shape: tuple[int, ...] | str | None = None
    dtype: np.dtype | None = None

    #: the setups it asks for: its parameters after the frame with no default (not ``index``)
    wants: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        self.function = self.function or self.name
        self.wants = _wanted(self.func)

    def declared(self, frame_shape: tuple[int, ...],
                 ) -> tuple[np.dtype, tuple[int, ...], int] | None:
        """``(dtype, value shape, DECLARED)`` when shape and dtype are declared, else None."""
        if self.dtype is None or self.shape is None:
            return None
        shape = tuple(frame_shape) if self.shape == "frame" else self.shape
        assert isinstance(shape, tuple)
        return self.dtype, shape, DECLARED

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


#: the scheduler's event topic on which workers say that a setup starts and returns here
SETUP_EVENTS = "framebag-setup"


def _tell_scheduler(setup: str, phase: str) -> None:
    """On a dask worker, record on the scheduler that ``setup`` starts (``phase`` "start")
    or returned ("done") in this worker process, and wait until it is recorded: a setup
    that then ends the process (``os._exit``, a signal) leaves "start" alone there, and
    the driver names the setup (:meth:`Workflow.killed_in_setup`). Once per setup per worker
    process; nothing on the driver, or when the scheduler is gone."""
    try:
        from distributed import get_worker
        from distributed.utils import sync

        worker = get_worker()
        sync(worker.loop, worker.scheduler.log_event, topic=SETUP_EVENTS,
             msg={"worker": worker.address, "setup": setup, "phase": phase})
    except Exception:  # noqa: BLE001 - only a better message is lost, never the setup
        pass


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
        #: every result, by its name: a function's name, or ``<function>_<key>`` for each
        #: key of its ``outputs=`` (those entries share one call, see :meth:`_calls`)
        self.functions: dict[str, FrameFunction] = {}
        self.setups: dict[str, SetupFunction] = {}
        self.source: str = ""
        #: who this workflow is, in the setup caches of the workers (it travels with it)
        self.token = uuid.uuid4().hex

    # registration ------------------------------------------------------------

    def frame(self, func: Callable[..., Any] | None = None, *, fold: Any = None,
              name: str | None = None, units: str | Mapping[str, str] = "",
              outputs: Mapping[str, Any] | None = None, shape: Any = None, dtype: Any = None,
              **fold_options: Any) -> Any:
        """Register a function of one frame. Usable bare or as ``@frame(fold=...)``.

        ``units`` (e.g. ``"counts"``, ``"mm"``) are the units of the values it
        returns; the output records them on the result (see the README's output layout).

        ``outputs={"x": "stack", "total": "sum", ...}`` makes several results of one
        call: the function returns a dict with exactly these keys, and each value
        is folded by its own fold (any ``fold=`` spec, or a :class:`~framebag.Fold`
        such as ``histogram(bins=64, range=(0, 1000))``) into the result
        ``<function>_<key>``. ``units``, ``shape`` and ``dtype`` then take one value
        for every key, or a dict per key.

        ``shape`` (a tuple, ``()`` for a scalar, or ``"frame"``) and ``dtype`` declare
        the value of one frame; with both declared for each of its results, the
        driver never calls the function to probe it. A value that differs from its
        declaration stops the run.
        """
        return self._register(func, fold, name, False, fold_options, units, outputs, shape,
                              dtype)

    def frames(self, func: Callable[..., Any] | None = None, *, fold: Any = None,
               name: str | None = None, units: str | Mapping[str, str] = "",
               outputs: Mapping[str, Any] | None = None, shape: Any = None, dtype: Any = None,
               **fold_options: Any) -> Any:
        """Register a batched function: a stack ``(n, *frame_shape)`` in, ``n`` values out
        (with ``outputs=``, a dict of arrays with ``n`` values each). ``shape`` declares
        one frame's value, as for :meth:`frame`. The stack's frames are in scan order,
        but with a ROI not always next to each other in the scan (``::2`` gives every
        other frame): its ``index`` parameter gives each one's scan index."""
        return self._register(func, fold, name, True, fold_options, units, outputs, shape,
                              dtype)

    def _register(self, func: Any, fold: Any, name: str | None, batched: bool,
                  fold_options: dict[str, Any], units: Any = "",
                  outputs: Mapping[str, Any] | None = None, shape: Any = None,
                  dtype: Any = None) -> Any:
        keys = _output_keys(outputs, fold, fold_options)
        # per output key ("" for a function of one result): its units, shape and dtype
        per_key = {k: (_per_key("units", units, k, keys, _check_units),
                       _per_key("shape", shape, k, keys, _check_shape),
                       _per_key("dtype", dtype, k, keys, _check_dtype)) for k in keys or [""]}
        for k, (_, s, t) in per_key.items():
            if (s is None) != (t is None):
                given, missing = ("shape", "dtype") if t is None else ("dtype", "shape")
                which = f" for output {k!r}" if k else ""
                raise TypeError(f"{given}= is declared{which} but {missing}= is not: declare "
                                "both (or neither) so the driver can skip probing it")

        def register(f: Callable[..., Any]) -> Callable[..., Any]:
            fname = name or f.__name__
            signature = _signature(f)
            if outputs is None:
                u, s, t = per_key[""]
                entries = [FrameFunction(fname, f, _folds.resolve(fold, **fold_options), batched,
                                         *signature, units=u, shape=s, dtype=t)]
            else:
                entries = [FrameFunction(f"{fname}_{k}", f, _folds.resolve(outputs[k]), batched,
                                         *signature, units=u, function=fname, key=k, shape=s,
                                         dtype=t)
                           for k, (u, s, t) in per_key.items()]
            for entry in entries:
                self._check_name(entry)
                if entry.fold.is_ragged and (outputs is not None or entry.shape is not None):
                    raise ValueError(
                        f"{_named(entry)}: fold 'ragged' takes neither outputs= nor shape=/dtype= "
                        "(its row shape comes from the probe); register it as a function of "
                        "its own")
            for entry in entries:
                self.functions[entry.name] = entry
            return f

        return register(func) if func is not None else register

    def _check_name(self, entry: FrameFunction) -> None:
        """Refuse a result name that the layout or another result already has."""
        name = entry.name
        if name in self.functions:
            raise ValueError(f"workflow {self.name!r}: {_named(entry)} takes the name of its "
                             f"{_named(self.functions[name])}; rename one of them")
        if name in RESERVED:
            raise ValueError(f"{_named(entry)}: {name!r} is reserved for the output layout; "
                             "rename it")
        if name.endswith(NXDATA_SUFFIX) or AXIS_NAMES.fullmatch(name):
            raise ValueError(f"{_named(entry)}: {name!r} is reserved for the output's NXdata "
                             f"groups (names ending in {NXDATA_SUFFIX!r}, and scan_0, frame_y, "
                             "frame_x, bin_centres, bin_edges ...); rename it")

    def _calls(self) -> list[tuple[str, list[FrameFunction]]]:
        """The functions to call, each with its results (several with ``outputs=``)."""
        calls: dict[str, list[FrameFunction]] = {}
        for f in self.functions.values():
            calls.setdefault(f.function, []).append(f)
        return list(calls.items())

    def declared(self, frame_shape: tuple[int, ...]) -> Kinds:
        """The kinds of every result whose shape and dtype are declared (``shape=``,
        ``dtype=``), with :data:`DECLARED` for the flat index."""
        out: Kinds = {}
        for name, f in self.functions.items():
            kind = f.declared(frame_shape)
            if kind is not None:
                out[name] = kind
        return out

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
                _tell_scheduler(s.name, "start")
                try:
                    value = s.func(**kw)
                except Exception as exc:  # noqa: BLE001 - any error of user code, in one line
                    cause = " ".join(f"{type(exc).__name__}: {exc}".split())
                    raise SetupError(f"setup function {s.name!r} failed on {_this_process()}: "
                                     f"{cause}{_user_line(exc)}") from exc
                _tell_scheduler(s.name, "done")
                _SETUP_CACHE[slot] = (key, files, value)
                while len(_SETUP_CACHE) > _SETUP_CACHE_SIZE:
                    _SETUP_CACHE.popitem(last=False)
            out[s.name] = value
        return out

    def killed_in_setup(self, client: Any, exc: BaseException | None) -> str | None:
        """Why a task failed with ``exc``, in words, when it is a ``KilledWorker`` whose last
        worker process died while running a setup of this workflow; else None.

        Each worker records on the scheduler when a setup starts and returns
        (:func:`_tell_scheduler`): a setup that started on the dead worker and never
        returned ended that process (``os._exit``, a signal, memory), and it would do so
        on every worker the task is retried on, so the run stops at once. A
        ``KilledWorker`` says only that workers died, hence this.
        """
        from distributed.scheduler import KilledWorker

        if not self.setups or not isinstance(exc, KilledWorker):
            return None
        try:
            dead = exc.last_worker.address
            events = [msg for _, msg in client.get_events(SETUP_EVENTS)]
            alive = set(client.scheduler_info(n_workers=-1).get("workers", {}))
        except Exception:  # noqa: BLE001 - the plain KilledWorker is reported instead
            return None
        last: dict[tuple[str, str], str] = {}
        for msg in events:
            last[msg["worker"], msg["setup"]] = msg["phase"]
        names = [name for (worker, name), phase in last.items()
                 if worker == dead and phase == "start" and name in self.setups]
        if not names:
            return None
        name = names[-1]
        # a worker still alive and in the setup (a slow one) has not died of it
        died = sum(1 for (w, n), phase in last.items()
                   if n == name and phase == "start" and w not in alive)
        return (f"workers died (KilledWorker), and the workflow's setup function {name!r} is "
                f"the likely cause: worker process {dead} ended while running it, before it "
                f"returned ({died} worker process{'es' if died > 1 else ''} in all; a setup "
                "that calls os._exit, is killed by a signal or runs out of memory ends its "
                "worker)")

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
              expect: Kinds | None = None, setups: Mapping[str, Any] | None = None,
              flat: np.ndarray | None = None) -> Partial:
        """Run every function over ``frames`` (the run ``start .. start+len``) and fold.

        ``flat``: the flat index of each frame, when several runs of a read are compacted
        into ``frames`` (one call for them all); the partial is then what :meth:`merge`
        makes of one call per run, over ``start .. flat[-1] + 1`` (see :func:`_partial`).

        Each frame is computed by all functions before it is folded, so a frame
        that fails in any function (with ``on_error="skip"``) is left out of all.
        A function with ``outputs=`` is called once per frame (or stack); its dict
        must have exactly those keys, and each value is checked and folded as a
        result of its own.

        Every value must be numeric and of one dtype per result (and one shape,
        for a stack): the first value of each result is checked against its
        declared shape and dtype, or else ``expect`` (the kinds an earlier partial
        showed, see :attr:`Partial.kinds`), every later one against the first, by
        its type and dtype only -- a value is converted only when its type
        differs. A value that breaks this, or a dict with other keys, raises
        :class:`ValueKindError`, whatever ``on_error`` says.

        ``setups`` are the setup values (:meth:`setup_values`, looked up once per task
        by the caller); without them, they are looked up here.
        """
        r = _Read(frames, start, scan_shape, on_error).compacted(flat)
        calls = self._calls()
        if setups is None and self.setups:
            setups = self.setup_values(params)
        r.kwargs = {fname: rs[0].bind(params, setups) for fname, rs in calls}
        r.declared = self.declared(frames.shape[1:])
        r.expect = {**expect, **r.declared} if expect and r.declared else \
            (expect or r.declared)
        if any(rs[0].wants_index for _, rs in calls):  # made only when a function asks
            r.index = np.stack(np.unravel_index(r.flat, scan_shape), axis=1)
        batched = [(fname, rs) for fname, rs in calls if rs[0].batched]
        values = self._call_batched(r, batched)
        per_frame = [(fname, rs) for fname, rs in calls if not rs[0].batched]
        accs: dict[str, Any] = {f.name: f.fold.initial() for f in self.functions.values()
                                if not f.fold.is_stack}
        stacks = self._call_per_frame(r, per_frame, accs) if per_frame else {}
        for _, rs in batched:
            for f in rs:
                if values[f.name] is not None:
                    _fold_batched(f, values[f.name], r, stacks, accs)
        ragged = {f.name: _folds.pack_ragged(accs.pop(f.name), r.done)
                  for f in self.functions.values() if f.fold.is_ragged}
        return _partial(r, stacks, accs, ragged)

    def merge(self, parts: list[Partial], start: int, stop: int) -> Partial:
        """One partial for ``start .. stop`` from the partials of runs within it, in order.

        A task of a live scan may hold many short runs of one read (frames that
        completed out of order); the driver then gets one partial per read, not one
        per run. Frames between the runs are not done, and their stacked values and
        row counts are zeros (the driver writes only the frames done, see
        :meth:`Partial.done_runs`); every fold's accumulators are combined in the
        runs' order, and the rows of ragged results are concatenated in frame order.
        """
        if len(parts) == 1 and (parts[0].start, parts[0].stop) == (start, stop):
            return parts[0]
        n = stop - start
        out = Partial(start, stop, np.zeros(n, dtype=bool))
        for p in parts:
            a, b = p.start - start, p.stop - start
            out.done[a:b] = p.done
            out.errors.extend(p.errors)
            for name, kind in p.kinds.items():
                out.kinds.setdefault(name, kind)
            for name, values in p.stacks.items():
                if name not in out.stacks:
                    out.stacks[name] = np.zeros((n, *values.shape[1:]), dtype=values.dtype)
                out.stacks[name][a:b] = values
            for name, acc in p.accs.items():
                try:
                    out.accs[name] = self.functions[name].fold.combine(out.accs[name], acc) \
                        if name in out.accs else acc
                except _folds.SumOverflow as exc:
                    raise _overflow(f"function {name!r}", exc, f"the frames at flat indices "
                                    f"{p.start} to {p.stop - 1}") from exc
        for name in parts[0].ragged:
            counts = np.zeros(n, dtype=np.int64)
            rows: list[np.ndarray] = []
            for p in parts:
                count, got = p.ragged[name]
                counts[p.start - start:p.stop - start] = count
                if got is not None:
                    rows.append(got)
            out.ragged[name] = (counts, np.concatenate(rows) if rows else None)
        return out

    def _call_batched(self, r: _Read, batched: list[tuple[str, list[FrameFunction]]],
                      ) -> dict[str, Any]:
        """Each batched function's values for the whole read, by result (None: none)."""
        values: dict[str, Any] = {}
        for fname, rs in batched:
            f = rs[0]
            kw = dict(r.kwargs[fname])
            if f.wants_index:
                kw[_INDEX] = r.index
            if f.fold.is_ragged:  # (never with outputs=: see _register)
                values[f.name] = self._ragged_batched(f, r.frames, kw, r.flat, r.scan_shape,
                                                      r.on_error, r.errors, r.done, r.index,
                                                      r.kinds, r.expect)
                continue
            got: dict[str, Any]
            try:
                got = _batched_values(rs, f.func(r.frames, **kw), r.n, r.start, r.scan_shape)
            except ValueKindError:
                raise
            except Exception as exc:  # noqa: BLE001 - reported with the frame, below
                if r.on_error != "skip" and r.n > 1:  # which frame of the stack is not known
                    raise FrameError(
                        f"batched function {fname!r} failed on a stack of {r.n} frames, "
                        f"{scan_index(int(r.flat[0]), r.scan_shape)} to "
                        f"{scan_index(int(r.flat[-1]), r.scan_shape)}: "
                        f"{type(exc).__name__}: {exc}{_user_line(exc)}") from exc
                if r.n == 1:  # (with more frames, only under on_error="skip")
                    self._fail(fname, r.start, r.scan_shape, exc, r.on_error, r.errors,
                               r.done, 0)
                    got = dict.fromkeys(x.name for x in rs)
                else:
                    got = self._batched_one_by_one(rs, r.frames, kw, r.flat, r.scan_shape,
                                                   r.errors, r.done, r.index)
            for x in rs:
                v = got[x.name]
                if v is not None:
                    r.kinds[x.name] = _batched_kind(x.name, v, r.start, r.scan_shape,
                                                    x.fold.is_stack, r.expect.get(x.name),
                                                    _who(x), r.flat)
                    v = _in_native_order(v)
                values[x.name] = v
        return values

    def _call_per_frame(self, r: _Read, per_frame: list[tuple[str, list[FrameFunction]]],
                        accs: dict[str, Any]) -> dict[str, np.ndarray]:
        """Call the per-frame functions frame by frame, folding into ``accs``; returns the
        stacks. A frame that fails in one function is left out of all of them."""
        # one entry per call; ``keys``: the dict keys of outputs=, split into the row
        calls = [(fname, rs[0].func, r.kwargs[fname], rs[0].wants_index,
                  None if rs[0].key is None else
                  (tuple(str(x.key) for x in rs), frozenset(str(x.key) for x in rs)),
                  rs[0].fold.is_ragged) for fname, rs in per_frame]
        # one entry per result, in the order of the values in a row
        slots = [(x.name, x.fold, _who(x)) for _, rs in per_frame for x in rs]
        outs: dict[str, Any] = {name: None for name, fold, _ in slots if fold.is_stack}
        # per result, of its first value here: (type, dtype, shape, whether the type is
        # an array, whose dtype and shape vary by instance); the hot path's check
        first: dict[str, tuple[type, np.dtype, tuple[int, ...], bool | None]] = {}
        by_run = _ByRun(r, [s for s in slots if not s[1].is_stack and not s[1].is_ragged],
                        accs, first) if len(r.runs) > 1 else None
        for i in np.flatnonzero(r.done).tolist():  # frames a batched function failed on: no
            if by_run is not None and i >= by_run.end:
                by_run.next(i)
            row = self._row(r, i, calls)
            if row is None:
                continue
            for (rname, fold, who), v in zip(slots, row):
                k = first.get(rname)
                t = type(v)
                if k is None or t is not k[0] or (k[3] is None and not (
                        t is int and k[1] is _INT64 and -_INT_MAX <= v < _INT_MAX)) or (k[3] and (
                        (v.dtype is not k[1] and v.dtype != k[1])
                        or (fold.is_stack and v.shape != k[2]))):
                    k = first[rname] = _value_kind(
                        rname, v, int(r.flat[i]), r.scan_shape, fold.is_stack,
                        r.declared.get(rname) or r.kinds.get(rname) or r.expect.get(rname),
                        r.kinds, who, ragged=fold.is_ragged)
                    if k[3]:
                        v = _in_native_order(v)
                if fold.is_stack:
                    out = outs[rname]
                    if out is None:
                        out = outs[rname] = np.zeros((r.n, *k[2]), dtype=k[1])
                    out[i] = v
                else:
                    try:
                        accs[rname] = fold.binop(accs[rname], v)
                    except Exception as exc:  # noqa: BLE001 - e.g. a changed shape
                        _fold_error(rname, fold, accs[rname], v, int(r.flat[i]), r.scan_shape,
                                    exc, who)
        if by_run is not None:
            by_run.finish()
        return {rname: out for rname, out in outs.items() if out is not None}

    def _row(self, r: _Read, i: int, calls: list[Any]) -> list[Any] | None:
        """Frame ``i``'s values of every per-frame function (outputs= split into theirs),
        or None if one failed (recorded, under ``on_error="skip"``)."""
        frame = r.frames[i]
        row: list[Any] = []
        for fname, func, kw, wants_index, keys, rows_of in calls:
            try:
                v = func(frame, index=tuple(r.index[i]), **kw) if wants_index \
                    else func(frame, **kw)
                if rows_of:
                    v = _ragged_value(v, r.scan_shape, r.kinds.get(fname) or r.expect.get(fname))
            except Exception as exc:  # noqa: BLE001
                self._fail(fname, int(r.flat[i]), r.scan_shape, exc, r.on_error, r.errors,
                           r.done, i)
                return None
            if keys is None:
                row.append(v)
            elif isinstance(v, Mapping) and v.keys() == keys[1]:
                row.extend([v[k] for k in keys[0]])
            else:
                _keys_error(fname, keys[0], v, int(r.flat[i]), r.scan_shape)
        return row

    def _ragged_batched(self, f: FrameFunction, frames: np.ndarray, kw: dict[str, Any],
                        flat: np.ndarray, scan_shape: tuple[int, ...], on_error: str, errors: list,
                        done: np.ndarray, index: Any, kinds: Kinds, expect: Kinds,
                        ) -> list[Any] | None:
        """A batched ragged function's arrays, one per frame (None where it failed).

        It returns a list of ``n`` arrays. A frame whose array breaks the row shape or
        dtype is a failure of that frame, skipped under ``on_error="skip"``; when the
        whole call fails, each frame is tried on its own, as for other batched functions.
        ``flat`` holds each frame's flat index.
        """
        n, start = len(frames), int(flat[0])
        try:
            out = _ragged_list(f.name, f.func(frames, **kw), n, start, scan_shape)
        except ValueKindError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported with the frame
            if on_error != "skip" or n == 1:
                self._fail(f.name, start, scan_shape, exc, on_error, errors, done, 0)
                return None
            out = []
            for i in range(n):
                if f.wants_index:
                    kw[_INDEX] = index[i : i + 1]
                try:
                    out.append(list(f.func(frames[i : i + 1], **kw))[0])
                except Exception as one:  # noqa: BLE001
                    self._fail(f.name, int(flat[i]), scan_shape, one, "skip", errors, done,
                               i)
                    out.append(None)
        for i, v in enumerate(out):
            if not done[i]:  # failed on its own above, or in a function before this one
                continue
            try:
                out[i] = v = _ragged_value(v, scan_shape,
                                           kinds.get(f.name) or expect.get(f.name))
            except ValueError as exc:
                self._fail(f.name, int(flat[i]), scan_shape, exc, on_error, errors, done, i)
                out[i] = None
                continue
            _value_kind(f.name, v, int(flat[i]), scan_shape, False,
                        kinds.get(f.name) or expect.get(f.name), kinds,
                        f"batched function {f.name!r}", ragged=True)
        return out

    def _batched_one_by_one(self, rs: list[FrameFunction], frames: np.ndarray,
                            kw: dict[str, Any], flat: np.ndarray, scan_shape: tuple[int, ...],
                            errors: list, done: np.ndarray, index: Any) -> dict[str, Any]:
        """After a batched call failed under on_error='skip', find the failing frames
        (``flat``: each frame's flat index).

        Returns each result's values (frames that failed hold zeros), or None for a
        result no frame gave.
        """
        f = rs[0]
        rows: dict[str, list[Any]] = {r.name: [] for r in rs}
        for i in range(len(frames)):
            if f.wants_index:
                kw[_INDEX] = index[i : i + 1]
            got: dict[str, Any] | None
            try:
                got = _batched_values(rs, f.func(frames[i : i + 1], **kw), 1, int(flat[i]),
                                      scan_shape)
            except ValueKindError:
                raise
            except Exception as exc:  # noqa: BLE001
                self._fail(f.function, int(flat[i]), scan_shape, exc, "skip", errors, done,
                           i)
                got = None
            for r in rs:
                rows[r.name].append(None if got is None else got[r.name][0])
        out: dict[str, Any] = {}
        for name, col in rows.items():
            good = next((r for r in col if r is not None), None)
            out[name] = None if good is None else np.stack(
                [np.zeros_like(good) if r is None else r for r in col])
        return out

    @staticmethod
    def _fail(fname: str, flat: int, scan_shape: tuple[int, ...], exc: Exception,
              on_error: str, errors: list, done: np.ndarray, i: int) -> None:
        message = f"{type(exc).__name__}: {exc}"
        if type(exc).__name__ == "BdbQuit":  # pdb with no terminal to read from
            message = ("BdbQuit (a breakpoint() or pdb with no terminal to read from; "
                       "to debug, run with --profile inline from a terminal)")
        if on_error != "skip":
            raise FrameError(
                f"function {fname!r} failed on frame {scan_index(flat, scan_shape)}: {message}"
                f"{_user_line(exc)}"
            ) from exc
        done[i] = False
        errors.append((flat, fname, message))

    # running -----------------------------------------------------------------

    def run(self, input: str | Path, output: str | Path | None = None, *,  # noqa: A002
            client: Any = None, options: RunOptions | None = None, **given: Any) -> Results:
        """Run the workflow over ``input`` and return the results keyed by function name.

        With ``client`` (a ``distributed.Client``) no cluster is started; otherwise the
        ``profile`` (default ``local``) is started and shut down. ``options`` is a
        :class:`~framebag.options.RunOptions`; keywords ``given`` are its fields
        (``profile``, ``params``, ``data``, ``keys``, ``follow``, ``timeout``,
        ``overwrite``, ``resume``, ``on_error`` ...) and replace single options.
        """
        from .engine import run

        return run(self, input, output, client=client, options=options, **given)

    def run_many(self, inputs: Iterable[str | Path], out_dir: str | Path | None = None, *,
                 client: Any = None, options: RunOptions | None = None,
                 **given: Any) -> ManyResults:
        """Run the workflow over each of ``inputs`` on one cluster; one output per input.

        Outputs get the default names, next to each input or in ``out_dir`` (an
        existing directory). A scan that fails does not stop the others: the result
        maps each input path to its results (as :meth:`run` returns them) or to the
        exception that stopped it; ``.failed`` and ``.succeeded`` split it. The
        options are :meth:`run`'s and apply to each output on its own (``resume``,
        ``overwrite``).
        """
        from .engine import run_many

        return run_many(self, list(inputs), out_dir, client=client, options=options, **given)

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


_KEY = re.compile(r"[A-Za-z0-9_]+")


def _output_keys(outputs: Mapping[str, Any] | None, fold: Any,
                 fold_options: Mapping[str, Any]) -> list[str] | None:
    """The keys of ``outputs=`` (checked), or None for a function of one result."""
    if outputs is None:
        return None
    if fold is not None or fold_options:
        raise TypeError("outputs= gives each key its fold: drop fold= and its options "
                        "(a histogram output takes framebag.histogram(bins, range))")
    if not isinstance(outputs, Mapping) or not outputs:
        raise TypeError("outputs= must be a non-empty dict of key -> fold, such as "
                        "{'x': 'stack', 'total': 'sum'}")
    for k in outputs:
        if not isinstance(k, str) or not _KEY.fullmatch(k):
            raise ValueError(f"output key {k!r} must be letters, digits or '_' (it names a "
                             "dataset)")
    return list(outputs)


def _per_key(option: str, value: Any, key: str, keys: list[str] | None,
             check: Callable[[Any], Any]) -> Any:
    """One output's ``units``/``shape``/``dtype``: the value given, or its entry in a dict
    of them per output key (only with ``outputs=``; every key named must be an output)."""
    if isinstance(value, Mapping):
        if keys is None:
            raise TypeError(f"{option}= is a dict, which needs outputs= (one entry per output "
                            "key)")
        extra = sorted(set(value) - set(keys))
        if extra:
            raise ValueError(f"{option}= names {extra}, which are not keys of outputs= "
                             f"({keys})")
        value = value.get(key)
    return check(value)


def _check_units(units: Any) -> str:
    if units is None:
        return ""
    if not isinstance(units, str):
        raise TypeError(f"units must be a string such as 'mm' or 'counts', not {units!r}")
    return units


def _check_shape(shape: Any) -> tuple[int, ...] | str | None:
    if shape is None or shape == "frame":
        return shape
    dims = (shape,) if isinstance(shape, (int, np.integer)) else shape
    try:
        out = tuple(int(d) for d in dims)
    except (TypeError, ValueError):
        out = None
    if out is None or isinstance(shape, str) or any(d < 0 for d in out) or any(
            isinstance(d, bool) or not isinstance(d, (int, np.integer)) for d in dims):
        raise TypeError(f"shape must be a tuple of lengths (() for a scalar) or 'frame', "
                        f"not {shape!r}")
    return out


def _check_dtype(dtype: Any) -> np.dtype | None:
    if dtype is None:
        return None
    try:
        out = np.dtype(dtype)
    except TypeError:
        out = None
    if out is None or out.kind not in NUMERIC:
        raise TypeError(f"dtype must be a numeric numpy dtype such as 'float32', not {dtype!r}")
    return _native(out)


def _native(dtype: np.dtype) -> np.dtype:
    """``dtype`` in this machine's byte order: ``>f8`` and ``<f8`` hold the same numbers,
    and a result's dtype is one of them (the output stores it in native order)."""
    return dtype if dtype.isnative else dtype.newbyteorder("=")


def _in_native_order(a: np.ndarray) -> np.ndarray:
    """``a`` itself, or a copy in native byte order (the same numbers) if it has another."""
    return a if a.dtype.isnative else a.astype(_native(a.dtype))


@dataclass
class _Read:
    """What :meth:`Workflow.apply` knows of one read while it calls the functions."""

    frames: np.ndarray
    start: int
    scan_shape: tuple[int, ...]
    on_error: str
    kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    declared: Kinds = field(default_factory=dict)
    expect: Kinds = field(default_factory=dict)
    kinds: Kinds = field(default_factory=dict)
    index: Any = None
    errors: list[tuple[int, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.n = len(self.frames)
        self.done = np.ones(self.n, dtype=bool)
        #: the flat index of each frame, the end of the span, and each run's frames
        #: ``(i, j)``: one run unless :meth:`compacted`
        self.flat = np.arange(self.start, self.start + self.n)
        self.stop = self.start + self.n
        self.runs = [(0, self.n)]
        #: each frame's place in the span ``start .. stop`` (None: the frames are the span)
        self.at: np.ndarray | None = None

    def compacted(self, flat: Any) -> _Read:
        """This read, whose frames are those at the flat indices ``flat`` (increasing, from
        ``start``; None: the run from ``start``)."""
        if flat is None:
            return self
        flat = np.asarray(flat, dtype=np.int64)
        if flat.shape != (self.n,) or self.n == 0 or flat[0] < self.start or np.any(
                np.diff(flat) <= 0):
            raise ValueError(f"flat must be {self.n} increasing flat indices from "
                             f"{self.start}, one per frame")
        self.flat, self.stop, self.at = flat, int(flat[-1]) + 1, flat - self.start
        edges = [0, *(np.flatnonzero(np.diff(flat) != 1) + 1).tolist(), self.n]
        self.runs = list(zip(edges[:-1], edges[1:]))
        return self


class _ByRun:
    """The per-frame folds of a compacted read, folded run by run (:meth:`Workflow.apply`).

    The caller folds each frame into ``accs`` and calls :meth:`next` at the first frame
    past :attr:`end`: each run that ended is then combined, in order, into the runs'
    total and its accumulator started afresh, as one apply per run and
    :meth:`Workflow.merge` would; :meth:`finish` leaves the totals in ``accs``. A
    result whose values are of a kind its fold folds exactly (:attr:`Fold.exact`) is
    folded on across runs instead: no bit depends on where they end.
    """

    def __init__(self, r: _Read, slots: list[tuple[str, _folds.Fold, str]],
                 accs: dict[str, Any], first: dict[str, Any]) -> None:
        self.r, self.slots, self.accs, self.first = r, slots, accs, first
        self.run = 0
        self.end = r.runs[0][1]  # the first frame past the current run
        self.totals: dict[str, Any] = {}
        self.carried: set[str] = set()  # folded on in accs since their last flush

    def next(self, i: int) -> None:
        """Close every run that ends at or before frame ``i``."""
        while i >= self.end:
            self._close()

    def finish(self) -> None:
        """Close the remaining runs; leave each result's total in ``accs``."""
        while self.run < len(self.r.runs):
            self._close()
        last = len(self.r.runs) - 1
        for rname, fold, who in self.slots:
            if rname in self.totals:
                self.accs[rname] = self.totals[rname] if rname not in self.carried else \
                    _combine_run(fold, self.totals[rname], self.accs[rname], who, self.r, last)

    def _close(self) -> None:
        run, last = self.run, len(self.r.runs) - 1
        for rname, fold, who in self.slots:
            if rname in self.first and self.first[rname][1].kind in fold.exact:
                self.carried.add(rname)
                continue
            self.carried.discard(rname)
            self.totals[rname] = self.accs[rname] if run == 0 else _combine_run(
                fold, self.totals[rname], self.accs[rname], who, self.r, run)
            if run < last:
                self.accs[rname] = fold.initial()
        self.run += 1
        self.end = self.r.runs[self.run][1] if self.run <= last else self.r.n + 1


def _combine_run(fold: _folds.Fold, total: Any, acc: Any, who: str, r: _Read, run: int) -> Any:
    """``fold.combine(total, acc)``: the accumulator of the ``run``-th run of ``r`` added to
    those of the runs before it; a failure names the run's frames."""
    try:
        return fold.combine(total, acc)
    except Exception as exc:  # noqa: BLE001 - e.g. a changed shape, an integer overflow
        i, j = r.runs[run]
        where = (f"frames {scan_index(int(r.flat[i]), r.scan_shape)} to "
                 f"{scan_index(int(r.flat[j - 1]), r.scan_shape)}")
        if isinstance(exc, _folds.SumOverflow):
            raise _overflow(who, exc, where) from exc
        raise FrameError(f"{who}: fold {fold.name!r} failed to combine the {where} with the "
                         f"frames before them ({type(exc).__name__}: {exc})") from exc


def _partial(r: _Read, stacks: dict[str, np.ndarray], accs: dict[str, Any],
             ragged: dict[str, tuple[np.ndarray, np.ndarray | None]]) -> Partial:
    """The partial of read ``r``; of a compacted one, what :meth:`Workflow.merge` makes
    of one apply per run: the frames between the runs are not done (zeros in stacks and
    row counts), the folds hold each run's accumulator combined in order (the same bits:
    see :class:`_ByRun`), and the errors come run by run."""
    if r.at is None:
        return Partial(r.start, r.stop, r.done, stacks, accs, r.errors, kinds=r.kinds,
                       ragged=ragged)
    if len(r.runs) > 1 and r.errors:
        firsts = [int(r.flat[i]) for i, _ in r.runs]
        r.errors.sort(key=lambda e: bisect.bisect_right(firsts, e[0]))
    n, at = r.stop - r.start, r.at
    return Partial(r.start, r.stop, _spread(r.done, at, n),
                   {name: _spread(v, at, n) for name, v in stacks.items()}, accs, r.errors,
                   kinds=r.kinds,
                   ragged={name: (_spread(c, at, n), rows) for name, (c, rows) in ragged.items()})


def _spread(values: np.ndarray, at: np.ndarray, n: int) -> np.ndarray:
    """``values`` (one per frame, frames at ``at``) spread over a span of ``n`` frames:
    zeros (False) where no frame lies."""
    out = np.zeros((n, *values.shape[1:]), dtype=values.dtype)
    out[at] = values
    return out


def _fold_batched(f: FrameFunction, vals: Any, r: _Read,
                  stacks: dict[str, np.ndarray], accs: dict[str, Any]) -> None:
    """Fold one batched result's values of read ``r`` (frames not done left out), each run
    of ``r`` on its own, their accumulators combined in order (see :meth:`Workflow.apply`)."""
    try:
        _fold_values(f, vals, r, stacks, accs)
    except _folds.SumOverflow as exc:
        raise _overflow(_who(f), exc, f"frames {scan_index(r.start, r.scan_shape)} to "
                        f"{scan_index(r.stop - 1, r.scan_shape)}") from exc


def _fold_values(f: FrameFunction, vals: Any, r: _Read,
                 stacks: dict[str, np.ndarray], accs: dict[str, Any]) -> None:
    """:func:`_fold_batched`, but for the sentence of an integer sum that overflows."""
    done = r.done
    if f.fold.is_ragged:
        accs[f.name] = [vals[i] for i in np.flatnonzero(done)]
    elif f.fold.is_stack:
        if not done.all():
            vals = np.array(vals, copy=True)
            vals[~done] = 0
        stacks[f.name] = vals
    elif vals.dtype.kind in f.fold.exact or len(r.runs) == 1:
        accs[f.name] = f.fold.add_many(accs[f.name], vals if done.all() else vals[done])
    else:
        acc = accs[f.name]
        for k, (i, j) in enumerate(r.runs):
            v, d = vals[i:j], done[i:j]
            part = f.fold.add_many(acc if k == 0 else f.fold.initial(),
                                   v if d.all() else v[d])
            acc = part if k == 0 else _combine_run(f.fold, acc, part, _who(f), r, k)
        accs[f.name] = acc


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


def _named(f: FrameFunction) -> str:
    """A result named for a registration message."""
    return f"function {f.name!r}" if f.key is None else \
        f"result {f.name!r} (output {f.key!r} of function {f.function!r})"


def _who(f: FrameFunction) -> str:
    """A result named for a message: its function, and its output key with ``outputs=``."""
    return f"function {f.function!r}" if f.key is None else \
        f"function {f.function!r} (output {f.key!r})"


def _earlier(ref: tuple[np.dtype, tuple[int, ...], int], scan_shape: tuple[int, ...],
             is_stack: bool) -> str:
    """What a value was held against: a declaration, or an earlier frame's value."""
    if ref[2] == DECLARED:
        return (f"it declares shape {ref[1]} dtype {ref[0]} (shape= and dtype= of its "
                "decorator)")
    earlier = f"shape {ref[1]} dtype {ref[0]}" if is_stack else f"dtype {ref[0]}"
    return f"{earlier} on frame {scan_index(ref[2], scan_shape)}"


def _unlike(dtype: np.dtype, shape: tuple[int, ...], ref: tuple[np.dtype, tuple[int, ...], int],
            is_stack: bool) -> bool:
    """Whether a value of ``dtype`` and ``shape`` breaks ``ref`` (a declaration fixes the shape
    of a folded result too: the output is laid out from it)."""
    return _native(dtype) != ref[0] or ((is_stack or ref[2] == DECLARED) and shape != ref[1])


def _fix(ref: tuple[np.dtype, tuple[int, ...], int], is_stack: bool) -> str:
    if ref[2] == DECLARED:
        return "a declared result must match what the function returns"
    return ("a stacked result needs one shape and dtype" if is_stack
            else "every value of a function needs one dtype")


def _mismatch(message: str, ref: tuple[np.dtype, tuple[int, ...], int],
              dtype_only: bool = False) -> ValueKindError:
    err = ValueKindError(message)
    if ref[2] == DECLARED:
        err.fix = ("correct shape= and dtype= on the function's decorator (or drop them, to "
                   "probe it), then rerun with --overwrite")
    elif dtype_only:  # not the shape advice: padding would not change the dtype
        err.fix = ("make the function return one dtype for every frame (np.float64(v), or "
                   "v.astype(...); a Python int past int64 is uint64 to numpy), then rerun "
                   "with --overwrite; --on-error skip does not help here")
    return err


def _kind_error(message: str) -> ValueKindError:
    """A value that is not numeric: its fix is not the shape advice of tasks._stopped."""
    err = ValueKindError(message)
    err.fix = ("make the function return that for every frame, then rerun with --overwrite; "
               "--on-error skip does not help here")
    return err


#: a Python int in int64's range has numpy's dtype int64: checked without np.asarray
_INT64 = np.dtype(np.int64)
_INT_MAX = 2**63


def _value_kind(fname: str, v: Any, flat: int, scan_shape: tuple[int, ...], is_stack: bool,
                ref: tuple[np.dtype, tuple[int, ...], int] | None,
                kinds: Kinds, who: str = "", *, ragged: bool = False,
                ) -> tuple[type, np.dtype, tuple[int, ...], bool | None]:
    """Check a value whose type differs from the result's first value here (or the first).

    Returns its ``(type, dtype, shape, is_array)`` for the hot path's check (``is_array``
    None: a list, tuple or Python int, checked on every frame) and, for
    a result's first value, records ``(dtype, shape, flat)`` in ``kinds``. Raises
    :class:`ValueKindError` for a value that is not numeric, or whose dtype (or shape,
    for a stack or a declared result) differs from ``ref``. ``who`` names the result in
    messages (default: function ``fname``); ``ragged``: the value of a ragged result, whose
    message says what a ragged function returns.
    """
    who = who or f"function {fname!r}"
    try:
        a = np.asarray(v)
    except Exception:  # noqa: BLE001 - e.g. a ragged list numpy refuses
        a = np.asarray(None)
    if a.dtype.kind not in NUMERIC:
        if type(v) is int:  # numpy holds it in no integer dtype
            err = ValueKindError(f"{who} returned the int {v} on frame "
                                 f"{scan_index(flat, scan_shape)}, which neither int64 nor "
                                 "uint64 holds")
            err.fix = _folds.OVERFLOW_FIX
            raise err
        must = (_RAGGED_MUST if ragged else "a function must return a number or a numeric "
                "array")
        raise _kind_error(
            f"{who} returned {_what(v)} on frame {scan_index(flat, scan_shape)}; {must}")
    if ref is not None and _unlike(a.dtype, a.shape, ref, is_stack):
        where = scan_index(flat, scan_shape)
        raise _mismatch(f"{who} returned {_what(v)} on frame {where}, but "
                        f"{_earlier(ref, scan_shape, is_stack)}; {_fix(ref, is_stack)}", ref,
                        _native(a.dtype) != ref[0] and a.shape == ref[1])
    dtype = _native(a.dtype)
    kinds.setdefault(fname, (dtype, a.shape, flat))
    # a list, tuple or Python int has no dtype of its own: [1, 2.5] after [1, 2], or an
    # int past int64, would be cast (or overflow) in the stack, so each is checked again
    fixed = isinstance(v, (float, complex, np.generic)) or isinstance(v, np.ndarray)
    return type(v), dtype, a.shape, isinstance(v, np.ndarray) if fixed else None


#: what a ragged function must return, for the message that refuses another value
_RAGGED_MUST = ("a ragged function (fold='ragged') must return a numeric array of rows "
                "(k, ...) for every frame, such as np.empty((0, 3), 'float32') for no rows")


def _ragged_list(fname: str, got: Any, n: int, start: int,
                 scan_shape: tuple[int, ...]) -> list[Any]:
    """A batched ragged function's value ``got`` as its list of ``n`` per-frame values.

    Raises :class:`ValueKindError` (a bug in the function, never skipped) for a value
    that is not a sequence of them (None, a number, a str, a dict), and ValueError (a
    failure of these frames) for a sequence of another length.
    """
    if got is None or isinstance(got, (str, bytes, Mapping, np.generic)) or not isinstance(
            got, Iterable) or (isinstance(got, np.ndarray) and got.ndim == 0):
        err = ValueKindError(
            f"batched function {fname!r} returned {_what(got)} for a stack of {n} "
            f"frame{'s' if n != 1 else ''} from {scan_index(start, scan_shape)}; a batched "
            "ragged function (fold='ragged') must return a list of numeric arrays of rows "
            "(k, ...), one per frame of the stack, such as np.empty((0, 3), 'float32') for a "
            "frame with no rows")
        err.fix = "make it return that list, then rerun with --overwrite"
        raise err
    out = list(got)
    if len(out) != n:
        raise ValueError(f"returned {len(out)} arrays for a stack of {n} frames")
    return out


def _ragged_value(v: Any, scan_shape: tuple[int, ...],
                  ref: tuple[np.dtype, tuple[int, ...], int] | None) -> Any:
    """A ragged function's value as an array of rows, checked against ``ref`` (the first
    frame's dtype, shape and flat index; the caller's message names this frame).

    Raises ValueError (a failure of this frame, which ``on_error="skip"`` skips) for
    a scalar, or rows of another shape or dtype than the first frame's. A value
    that is not numeric is returned as it is, for :func:`_value_kind` to refuse.
    """
    a = np.asarray(v)
    if a.dtype.kind not in NUMERIC:
        return v
    a = _in_native_order(a)
    if a.ndim == 0:
        raise ValueError(f"returned {_what(v)}; a ragged result is an array of rows "
                         "(k, ...), where k may vary and be 0")
    if ref is not None and (a.dtype != ref[0] or a.shape[1:] != ref[1][1:]):
        rows = ", ".join(["k", *map(str, ref[1][1:])])
        hint = ""
        if a.shape == (0,) and len(ref[1]) > 1:  # `return []` or np.array([]): no row shape
            hint = f" (for no rows return {_no_rows(ref[1][1:], ref[0])}, not [])"
        elif ref[1] == (0,) and a.ndim > 1:  # the first frame's [] fixed rows of shape ()
            hint = (f" (that frame returned no rows as shape (0,), which makes rows of shape "
                    f"(); for no rows return {_no_rows(a.shape[1:], a.dtype)}, not [])")
        raise ValueError(
            f"returned {_what(v)}, but rows of shape ({rows}) dtype {ref[0]} on frame "
            f"{scan_index(ref[2], scan_shape)}; only the first dim of a ragged result may vary"
            + hint)
    return a


def _no_rows(row_shape: tuple[int, ...], dtype: np.dtype) -> str:
    """The expression of an empty ragged value with rows of ``row_shape``, for a message."""
    return f"np.empty({(0, *row_shape)}, {dtype.name!r})"


def _batched_kind(fname: str, values: np.ndarray, start: int, scan_shape: tuple[int, ...],
                  is_stack: bool, ref: tuple[np.dtype, tuple[int, ...], int] | None,
                  who: str, flat: np.ndarray) -> tuple[np.dtype, tuple[int, ...], int]:
    """Check a batched function's values (one per frame) as :func:`_value_kind` does;
    ``flat``: each frame's flat index."""
    who = f"batched {who or f'function {fname!r}'}"
    if values.dtype.kind not in NUMERIC:
        bad = next((i for i, v in enumerate(values)
                    if np.asarray(v).dtype.kind not in NUMERIC), 0) if values.ndim else 0
        v = values[bad] if values.ndim else values
        raise _kind_error(
            f"{who} returned {_what(v)} for frame "
            f"{scan_index(int(flat[bad]), scan_shape)} (in an array of dtype {values.dtype}); "
            "a function must return numbers or numeric arrays"
        )
    shape = values.shape[1:]
    if ref is not None and _unlike(values.dtype, shape, ref, is_stack):
        raise _mismatch(
            f"{who} returned values of shape {shape} dtype {values.dtype} for frames from "
            f"{scan_index(start, scan_shape)}, but {_earlier(ref, scan_shape, is_stack)}; "
            f"{_fix(ref, is_stack)}", ref, _native(values.dtype) != ref[0] and shape == ref[1])
    return _native(values.dtype), shape, start


def _batched_values(rs: list[FrameFunction], out: Any, n: int, start: int,
                    scan_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """A batched call's ``out`` as one array of ``n`` values per result.

    A dict with other keys than ``outputs=`` raises :class:`ValueKindError`; a wrong
    number of values raises ValueError (the function failed on these frames).
    """
    f = rs[0]
    if f.key is None:
        arrays = {f.name: np.asarray(out)}
    else:
        keys = tuple(r.key for r in rs if r.key is not None)
        if not isinstance(out, Mapping) or out.keys() != set(keys):
            _keys_error(f.function, keys, out, start, scan_shape, batched=True)
        arrays = {r.name: np.asarray(out[r.key]) for r in rs}
    for r in rs:
        got = len(arrays[r.name])
        if got != n:
            of = f" for output {r.key!r}" if r.key is not None else ""
            raise ValueError(f"returned {got} values{of} for a stack of {n} frames")
    return arrays


def _keys_error(fname: str, keys: tuple[str, ...], v: Any, flat: int,
                scan_shape: tuple[int, ...], batched: bool = False) -> NoReturn:
    """Raise the one sentence for a function whose returned value is not a dict with
    exactly the keys of its ``outputs=``."""
    who = f"batched function {fname!r}" if batched else f"function {fname!r}"
    where = f"for frames from {scan_index(flat, scan_shape)}" if batched else \
        f"on frame {scan_index(flat, scan_shape)}"
    want = list(keys)
    if not isinstance(v, Mapping):
        message = (f"{who} returned {_what(v)} {where}, but it has outputs= {want}: it "
                   "must return a dict with exactly those keys")
    else:
        got = list(v.keys())
        missing = [k for k in want if k not in v]
        extra = [k for k in got if k not in keys]
        parts = ([f"missing {missing}"] if missing else []) + \
            ([f"extra {extra}"] if extra else [])
        message = (f"{who} returned a dict with keys {got} {where}, but its outputs= are "
                   f"{want} ({', '.join(parts)})")
    err = ValueKindError(message)
    err.fix = ("return a dict with exactly the keys of outputs= for every frame, then rerun "
               "with --overwrite")
    raise err


def _overflow(who: str, exc: _folds.SumOverflow, where: str) -> ValueKindError:
    """The sentence for an integer ``sum`` that left its dtype's range (see SumOverflow)."""
    err = ValueKindError(f"{who}: its sum leaves the range of {exc.dtype} at {where} "
                         "(numpy would wrap it around, a wrong result)")
    err.fix = _folds.OVERFLOW_FIX
    return err


def _fold_error(fname: str, fold: _folds.Fold, acc: Any, v: Any, flat: int,
                scan_shape: tuple[int, ...], exc: Exception, who: str = "") -> None:
    if isinstance(exc, _folds.SumOverflow):
        raise _overflow(who or f"function {fname!r}", exc,
                        f"frame {scan_index(flat, scan_shape)}") from exc
    try:
        earlier = f"shape {np.shape(fold.finalize(acc))} before"
    except Exception:  # noqa: BLE001 - a custom fold's accumulator may not finalize
        earlier = "the earlier frames"
    raise FrameError(
        f"{who or f'function {fname!r}'}: fold {fold.name!r} failed on frame "
        f"{scan_index(flat, scan_shape)}, which gave shape {np.shape(v)} against {earlier} "
        f"({type(exc).__name__}: {exc})"
    ) from exc


def _did_you_mean(spec: str) -> str:
    """A hint for a workflow named without its ``.py`` or as a path with dots."""
    if Path(spec + ".py").is_file():
        return f"; did you mean {spec}.py?"
    dotted = spec.removesuffix(".py").replace("/", ".").replace(os.sep, ".").strip(".")
    try:
        found = dotted != spec and importlib.util.find_spec(dotted) is not None
    except (ImportError, ValueError):
        found = False
    return f"; did you mean the module {dotted}?" if found else ""


def _import_file(path: Path) -> tuple[types.ModuleType, bytes]:
    """Import a workflow file under a private module name; its module and its source.

    The module is registered with cloudpickle by value, so workers that cannot import
    it still get its functions.
    """
    if not path.is_file():
        raise FramebagError(f"workflow file {str(path)!r} does not exist")
    source = path.read_bytes()
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    modname = f"framebag_user_{path.stem}_{digest}"
    mspec = importlib.util.spec_from_file_location(modname, path)
    if mspec is None or mspec.loader is None:
        raise FramebagError(f"cannot import workflow file {str(path)!r}")
    module = importlib.util.module_from_spec(mspec)
    sys.modules[modname] = module
    try:
        mspec.loader.exec_module(module)
    except FramebagError:
        raise
    except Exception as exc:
        del sys.modules[modname]
        raise FramebagError(
            f"workflow file {str(path)!r} failed to import: {type(exc).__name__}: {exc}"
        ) from exc
    import cloudpickle

    cloudpickle.register_pickle_by_value(module)
    return module, source


def load_workflow(spec: str | Path) -> Workflow:
    """Load the :class:`Workflow` in a Python file or an importable (dotted) module.

    A file is imported under a private module name and registered with cloudpickle
    by value, so workers that cannot import it still get its functions.
    """
    path = Path(spec)
    if path.suffix == ".py" or path.exists():
        module, source = _import_file(path)
        where = str(path)
    else:
        try:
            module = importlib.import_module(str(spec))
        except ImportError as exc:
            raise FramebagError(
                f"workflow {str(spec)!r} is neither a file nor an importable module ({exc})"
                + _did_you_mean(str(spec))) from exc
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
