"""The run: one dask task per partition, partials streamed back and combined, the live loop.

One loop serves finished and live files alike::

    poll keys -> Dispatcher.due() -> runs -> one task per block of runs (client.submit)
      -> process_task on the workers -> futures
      -> as they complete: ScanOrder (scan order) -> combine -> OutputFile.commit()

A finished file is polled once and every run is flushed at once; a live file
is polled every ``poll_interval`` until the finished flag, a full scan or the
inactivity ``timeout``. Futures are gathered as they complete (never one
blocking ``compute``), so results reach the output while the rest runs, and a
partition's partial is combined exactly once (distributed may recompute a lost
partition, but its future resolves once). Partials are combined in scan order
(:mod:`framebag.scan_order`), so float folds do not depend on arrival order.

One module of about 1,050 lines because the driver's loop is one state machine
(:class:`_Job`: dispatcher, tasks out, partials held for scan order, commits)
whose steps share that state; the worker side is :mod:`framebag.tasks`, what a
run returns is :mod:`framebag.results`, its options :mod:`framebag.options`.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

import numpy as np

from . import fingerprint, hdf5
from . import roi as regions
from ._version import __version__
from .dispatch import DEFAULT_PARTITION_BYTES, Dispatcher, task_size
from .errors import FramebagError, FrameError, ValueKindError
from .folds import OVERFLOW_FIX, SumOverflow, check_state
from .keys import EndOfScan, KeyFollower
from .lock import OutputLock
from .options import RunOptions
from .output import (
    OutputFile,
    OutputWriteError,
    ScanAxis,
    Schema,
    check_resumable,
    default_output_path,
    open_existing,
    same_file,
    write_error,
)
from .partials import Kinds, Partial
from .partitions import by_block, chunk_run, scan_index
from .reading import read_run
from .results import ManyResults, Ragged, Results, _read_results
from .scan_order import ScanOrder, first_frame, order_matters
from .tasks import RunSpec, process_task, setup_files
from .tuning import tune_workers

if TYPE_CHECKING:  # a type only: the workflow module imports this one (Workflow.run)
    from .workflow import Workflow

__all__ = ["run", "run_many", "Results", "Ragged", "ManyResults"]

log = logging.getLogger("framebag")
#: the logger framebag.progress configures and --quiet silences (a name, not an import of it)
progress_log = logging.getLogger("framebag.progress")


def _address(client: Any) -> str:
    """The address of ``client``'s scheduler, or "" where it has none."""
    return str(getattr(getattr(client, "scheduler", None), "address", "") or "")


def _check_scheduler(client: Any) -> None:
    """Raise if ``client`` lost its scheduler: distributed then cancels every future and
    tries to reconnect, and a query of the scheduler waits out its connect timeout."""
    if getattr(client, "status", "running") not in ("connecting", "closing", "closed"):
        return
    raise FramebagError(
        f"the connection to the dask scheduler {_address(client)} was lost (it stopped, or "
        "the network failed) before the run ended; the frames done so far are kept: rerun "
        "with --resume")


def run(workflow: Workflow, input: str | os.PathLike, output: str | os.PathLike | None = None,  # noqa: A002
        *, client: Any = None, options: RunOptions | None = None, **given: Any) -> Results:
    """Run ``workflow`` over ``input``; see :meth:`framebag.Workflow.run`.

    ``options`` (a :class:`~framebag.options.RunOptions`) holds the run's options;
    keywords ``given`` (its field names) replace single ones. ``keys=None`` takes
    the workflow's keys; ``keys=[]`` runs without keys (every frame the data hold is
    complete; see :mod:`framebag.keys`). With ``client`` no cluster is started.

    Validates everything it can (parameters, datasets, output path) before any
    cluster starts, so bad input fails in well under a second. ``roi`` is the part
    of the scan to process (see :mod:`framebag.roi`); on ``resume`` it may only
    grow, and left out there it is the one recorded.
    """
    opts = RunOptions.of(options, **given)
    _check_client(client)
    resolved = workflow.resolve_params(opts.params)
    input_path = Path(input).resolve()
    finished_required = bool(opts.finished)
    opts = opts.replace(
        data=opts.data or workflow.data or "",  # none given: KeyFollower says so
        keys=tuple(workflow.keys if opts.keys is None else opts.keys),
        axes=tuple(opts.axes or workflow.axes),
        finished=(opts.finished or workflow.finished) if opts.follow else None)
    out_path = Path(output) if output else default_output_path(input_path, workflow.name)
    lock = OutputLock(out_path)  # one run per output, held to the end (see framebag.lock)
    OutputFile.check_target(out_path, opts.overwrite, opts.resume, Path(input), lock)
    try:
        # another run on this input in this process (a thread sharing the client) that
        # ends meanwhile closes the input only once this one has ended too
        with hdf5.holding(str(input_path)):
            return _run_locked(workflow, input_path, out_path, resolved, opts, client,
                               finished_required)
    finally:
        hdf5.close(str(input_path))
        lock.release()


def _check_client(client: Any) -> None:
    """A client that is closed (its ``framebag.cluster`` block has ended) is refused at once."""
    if client is not None and getattr(client, "status", None) in ("closing", "closed"):
        raise FramebagError(
            "the client given is closed (a framebag.cluster(...) client lasts to the end of "
            "its with-block): run inside the block, or leave client out to start the "
            "profile's cluster for the run")


def _run_locked(workflow: Workflow, input_path: Path, out_path: Path, resolved: dict[str, Any],
                opts: RunOptions, client: Any, finished_required: bool) -> Results:
    """:func:`run` once the output is checked and locked."""
    follower = _follower(input_path, opts, finished_required)
    region = regions.given(opts.roi, input_path, follower.scan_shape, follower.growing)
    read = [n for n in (follower.data.name, *follower.key_names) if n]
    for other, name in hdf5.files_behind(str(input_path), read).items():
        if same_file(out_path, other):  # an external link or a virtual source of the input
            raise FramebagError(
                f"output file {str(out_path)!r} is the file {other!r} that dataset {name!r} of "
                f"input file {str(input_path)!r} reads; the input is never written to: choose "
                "another -o")
    scan_axes = read_axes(str(input_path), list(opts.axes or ()), follower.data.scan_shape,
                          follower.growing, workflow, refresh=False)
    first = follower.poll().ravel()
    if region is not None:
        first &= region.mask(follower.scan_shape).ravel()
    if not opts.follow and not first.any():
        raise FramebagError(_none_complete(input_path, follower, region))
    provenance = _provenance(workflow, input_path, resolved, opts, follower)
    if opts.resume and not out_path.exists():
        log.info("--resume: %s does not exist yet, starting from the beginning", out_path)
        opts = opts.replace(resume=False)
    if opts.resume:
        check_resumable(out_path, workflow.name, provenance, follower.data.scan_shape,
                        data=follower.data)
        with open_existing(out_path) as f:
            region = regions.resumed(region, f[f"entry/{workflow.name}"], str(out_path),
                                     follower.scan_shape, follower.growing)
    if region is not None:
        provenance["roi"] = region.text
    follower.roi = region
    if any(f.declared(follower.data.frame_shape) is None
           for f in workflow.functions.values()):
        # the probe needs them on the driver anyway: a setup that fails does so before a
        # cluster starts (with every result declared, setups run on the workers only)
        workflow.setup_values(resolved, setup_files(provenance))
    job = _Job(workflow, follower, out_path, resolved, provenance, opts, scan_axes)
    if client is not None:
        with _performance_report(opts.report):
            return job.run(client)
    from .clusters import start_client

    with start_client(opts.profile, announce=opts.announce) as own_client, \
            _performance_report(opts.report):
        return job.run(own_client)


def _provenance(workflow: Workflow, input_path: Path, resolved: dict[str, Any],
                opts: RunOptions, follower: KeyFollower) -> dict[str, Any]:
    """What the output records of how it was made (``--resume`` checks it)."""
    return {
        "framebag_version": __version__,
        "workflow": workflow.name,
        "workflow_hash": workflow.source,
        "parameters": {k: os.fspath(v) if isinstance(v, PurePath) else v
                       for k, v in resolved.items()},
        "input_file": str(input_path),
        "data": opts.data,
        "keys": list(opts.keys or ()),
        "finished": opts.finished or "",
        fingerprint.ATTR: fingerprint.describe(follower.data, follower.growing),
        fingerprint.SETUP_ATTR: fingerprint.describe_setups(workflow.setup_params(resolved)),
        # each function's fold, for readers of the output (framebag plot); not checked on resume
        "folds": {n: {"fold": f.fold.name, **f.fold.attrs, **({"units": f.units} if f.units
                                                               else {})}
                  for n, f in workflow.functions.items()},
        "scan_axes": list(opts.axes or ()),
    }


def _none_complete(path: Path, follower: KeyFollower, region: regions.Roi | None = None) -> str:
    """Why no frame of a finished input is complete, naming only the keys at fault."""
    where = f"no frame of {str(path)!r} is complete"
    if region is not None and follower.poll().any():
        return (f"{where} inside --roi {region.summary(follower.scan_shape)}, though frames "
                "outside it are; choose a --roi over complete frames")
    if not follower.key_names:
        return (f"{where}: data dataset {follower.data.name!r} holds no frame (scan shape "
                f"{follower.scan_shape})")
    if follower.unset:
        which = ("key dataset " if len(follower.unset) == 1 else "key datasets ") + \
            ", ".join(follower.unset)
        verb = "is" if len(follower.unset) == 1 else "are"
        return f"{where}: {which} {verb} zero everywhere (use --follow to wait for a live scan)"
    return (f"{where}: no frame has all of its keys set ({', '.join(follower.key_names)} are "
            "each set somewhere, never all at one frame; use --follow to wait for a live scan)")


def read_axes(path: str, names: list[str], scan_shape: tuple[int, ...], growing: bool,
              workflow: Workflow, refresh: bool) -> list[ScanAxis]:
    """The input's motor positions ``names`` (``--axes``), one per scan dim, checked.

    Each is numeric and 1-d of its scan dim's length, or scan-shaped (trailing
    length-1 dims are dropped, as for keys). In a growing scan the first scan
    dim may differ in length: positions are copied as far as they go. A
    mismatch is one sentence naming the dataset, its shape and the scan's.
    """
    if not names:
        return []
    rank = len(scan_shape)
    if len(names) != rank:
        raise FramebagError(
            f"--axes: {len(names)} dataset(s) given ({', '.join(names)}) for a scan of rank "
            f"{rank} (scan shape {tuple(scan_shape)}); give one per scan dim, slowest first")
    out: list[ScanAxis] = []
    taken = {*workflow.functions, "done", "errors"}
    if any(f.fold.is_ragged for f in workflow.functions.values()):
        taken.add("count")  # a ragged result's NXdata signal, beside the scan axes
    for k, name in enumerate(names):
        try:
            ds = hdf5.dataset(path, name)
        except FramebagError as exc:
            raise FramebagError(f"--axes {name}: {exc}") from None
        if refresh:
            ds.refresh()
        shape = tuple(ds.shape)
        while len(shape) > 1 and shape[-1] == 1 and len(shape) > rank:
            shape = shape[:-1]
        skip = 1 if growing else 0
        one_d = len(shape) == 1 and (shape[0] == scan_shape[k] or (growing and k == 0))
        full = len(shape) == rank and shape[skip:] == tuple(scan_shape[skip:])
        if ds.dtype.kind not in "biuf":
            raise FramebagError(f"--axes {name}: dataset of dtype {ds.dtype} in input file "
                                f"{path!r} is not numeric; positions must be numbers")
        if not (one_d or full) or (rank == 1 and len(shape) != 1):
            raise FramebagError(
                f"--axes {name}: dataset of shape {tuple(ds.shape)} in input file {path!r} does "
                f"not fit scan dim {k} of scan shape {tuple(scan_shape)}: give a 1-d dataset "
                f"of length {scan_shape[k]} or a scan-shaped one")
        values = np.asarray(ds[()]).reshape(shape)
        base = name.rstrip("/").rsplit("/", 1)[-1]
        label = base if base not in taken and not base.startswith(("scan_", "frame_", "bin_")) \
            else name.strip("/").replace("/", "_")
        taken.add(label)
        out.append(ScanAxis(label, name, values, hdf5.attr_text(ds.attrs.get("units"))))
    return out


def _follower(path: Path, opts: RunOptions, finished_required: bool) -> KeyFollower:
    """The run's key follower; a followed run first waits up to ``timeout`` for the input.

    A detector often creates its file only when the scan starts, and holds it
    (unreadable) until it enters SWMR mode, so ``--follow`` may be started first.
    """
    deadline = None
    while True:
        try:
            return KeyFollower(path, opts.data, list(opts.keys or ()), opts.finished,
                               live=opts.follow, finished_required=finished_required,
                               scan_rank=opts.scan_rank)
        except hdf5.InputNotReady as exc:
            if not opts.follow:
                raise
            now = time.monotonic()
            if deadline is None:
                deadline = now + opts.timeout
                progress_log.info(
                    "--follow: waiting up to %g s for the input (%s)", opts.timeout, exc)
            elif now >= deadline:
                raise FramebagError(f"{exc}, after waiting {opts.timeout:g} s for it "
                                    "(--timeout)") from None
            time.sleep(max(opts.poll_interval, 0.05))


def _performance_report(path: str | os.PathLike | None) -> Any:
    if path is None:
        return contextlib.nullcontext()
    from distributed import performance_report

    return performance_report(filename=os.fspath(path))


class _Job:
    def __init__(self, workflow: Workflow, follower: KeyFollower, out_path: Path,
                 params: dict[str, Any], provenance: dict[str, Any], opts: RunOptions,
                 scan_axes: list[ScanAxis]) -> None:
        self.wf = workflow
        self.follower = follower
        self.info = follower.data
        self.out_path = out_path
        self.params = params
        self.provenance = provenance
        self.o = opts
        self.scan_axes = scan_axes
        self.out: OutputFile | None = None
        self.accs: dict[str, Any] = {}
        self.errors: list[tuple[int, str, str]] = []
        self.ended_by = ""
        self._spec: Any = None
        self._attempts: dict[int, int] = {}
        self._pending: list[Partial] = []  # released in scan order, not yet committed
        self._pending_bytes = 0  # stacked results in _pending: flushed past the read budget
        self._order = ScanOrder()  # arrived, waiting for the partials before them
        self._ordered = True  # float fold state: combine in scan order (set by the probe)
        self._kinds: Kinds | None = None  # from the probe: every task's values must match
        self._backlog: list[list[tuple[int, int]]] = []  # groups of runs not yet submitted
        self.result_nbytes = 0  # stacked result bytes per frame, from the probe
        self._nworkers = 1
        self._planned = 0  # workers the cluster plans: see planned_workers
        self._read_frames = 0  # frames per read (task_size), recorded on the output
        self._early_at = -math.inf  # when frames last went early to an idle worker
        self._workers_at = -1e9  # when _nworkers was read from the scheduler
        self._task_bytes = 0  # stacked result bytes of one task (see _max_inflight)
        self.frame_seconds = 0.0  # one frame through every function, timed by the probe
        self._last_commit = 0.0
        self._closing: threading.Thread | None = None  # workers closing their input handles
        self._broken = False
        self._write_failed = False  # the output is abandoned: nothing more is written to it
        #: seconds between commits: a live reader sees results this often; fewer
        #: commits leave more CPU to the workers on a finished file
        self.commit_interval = opts.resolved_commit_interval

    # setting up ------------------------------------------------------------------

    def _probe(self, complete: np.ndarray) -> Partial:
        """Run every function on a complete frame, on the driver, to learn result shapes,
        except those whose results all declare their shape and dtype (``shape=``,
        ``dtype=``): their partial is made from the declaration, without calling them.

        The frame cost (which sizes the tasks) is timed on the functions probed; with none
        probed it is unknown, and tasks are sized by the read budget alone.
        """
        d = self.info
        declared = self.wf.declared(tuple(d.frame_shape))
        skipped = {f.function for f in self.wf.functions.values()} - \
            {f.function for name, f in self.wf.functions.items() if name not in declared}
        wf = self.wf
        if skipped:
            wf = copy.copy(self.wf)
            wf.functions = {n: f for n, f in self.wf.functions.items()
                            if f.function not in skipped}
        p = Partial(0, 1, np.ones(1, dtype=bool))
        if wf.functions:
            p = self._probe_frames(complete, wf)
        for name, f in self.wf.functions.items():
            if f.function in skipped:
                dtype, shape, _ = declared[name]
                value = np.zeros(shape, dtype=dtype)
                if f.fold.is_stack:
                    p.stacks[name] = value[np.newaxis]
                else:
                    p.accs[name] = f.fold.binop(f.fold.initial(), value)
        p.kinds.update(declared)
        self._kinds = p.kinds
        return p

    def _probe_frames(self, complete: np.ndarray, wf: Workflow) -> Partial:
        """``wf`` applied to the first complete frame it does not fail on, timed."""
        d = self.info
        last: Exception | None = None
        for i in np.flatnonzero(complete)[:20]:
            frames = read_run(d.path, d.name, int(i), int(i) + 1, d.scan_shape, d.frame_shape,
                              d.dtype, refresh=self.follower.live)
            try:
                t = time.perf_counter()
                p = wf.apply(frames, int(i), d.scan_shape, self.params, "raise")
                self.frame_seconds = time.perf_counter() - t
                # the first call pays for warming up, and on a busy machine any call may wait
                # for a core (a 20 us frame timed at 16 ms cut tasks to 15 frames): the least
                # of three calls, or of up to ten within 5 ms, for frames that are not
                # costly (the timing sizes the reads, so a steadier one moves them less)
                calls, spent = 1, self.frame_seconds
                while self.frame_seconds < 0.05 and (calls < 3 or (calls < 10 and spent < 0.005)):
                    t = time.perf_counter()
                    wf.apply(frames, int(i), d.scan_shape, self.params, "raise")
                    took = time.perf_counter() - t
                    self.frame_seconds = min(self.frame_seconds, took)
                    calls, spent = calls + 1, spent + took
            except FrameError as exc:
                if self.o.on_error != "skip" or isinstance(exc, ValueKindError):
                    raise
                last = exc
                continue
            return p
        raise FramebagError(f"every frame tried failed; the last: {last}")

    def _probe_schema(self, complete: np.ndarray) -> Schema:
        """The output's schema from :meth:`_probe`: each result's shape, dtype and fold."""
        d = self.info
        p = self._probe(complete)
        schema = Schema()
        schema.frame_shape = tuple(d.frame_shape)
        schema.scan_axes = self.scan_axes
        for name, fn in self.wf.functions.items():
            schema.meta[name] = {"fold": fn.fold.name, "units": fn.units, **fn.fold.attrs,
                                 "function": fn.function, "output": fn.key or ""}
            if fn.fold.is_ragged:  # its checkpointed state: the table's committed rows
                rows = p.ragged[name][1]
                assert rows is not None  # the probe's frame is done
                schema[name] = (False, rows.shape[1:], rows.dtype)
                schema.accs[name] = np.int64(0)
            elif fn.fold.is_stack:
                v = p.stacks[name]
                schema[name] = (True, v.shape[1:], v.dtype)
                self.result_nbytes += v[0].nbytes
            else:
                try:  # the checkpoint stores it as plain arrays: nothing is ever pickled
                    check_state(p.accs[name])
                except TypeError as exc:
                    raise FramebagError(
                        f"fold {fn.fold.name!r} of function {name!r} keeps an accumulator "
                        f"that is not fold state: {exc}; it must be numpy arrays or numeric "
                        "scalars, or tuples, lists and dicts (string keys) of them"
                    ) from None
                schema.accs[name] = p.accs[name]
                v = np.asarray(fn.fold.finalize(p.accs[name]))
                if v.dtype.kind not in "biufc":
                    raise FramebagError(
                        f"fold {fn.fold.name!r} of function {name!r} finalizes to "
                        f"{type(v).__name__} of dtype {v.dtype}; it must give a numeric array"
                    )
                schema[name] = (False, v.shape, v.dtype)
        self._ordered = order_matters(schema.accs.values())
        return schema

    def _open_output(self, complete: np.ndarray, schema: Schema | None = None) -> None:
        if schema is None:  # on resume too: a broken function fails early
            schema = self._probe_schema(complete)
        if self.o.resume:
            self.out, self.accs = OutputFile.resume(self.out_path, self.wf.name,
                                                    self.info.scan_shape, schema)
        else:  # with --overwrite, the old file is replaced atomically by the new one
            if self._read_frames:
                self.provenance[READ_ATTR] = int(self._read_frames)
            self.out = OutputFile.create(self.out_path, self.wf.name, self.info.scan_shape,
                                         schema, self.provenance, growing=self.follower.growing)
        self._recorder = fingerprint.Recorder(self.follower.key_names, self.out.group,
                                              self.follower.live)
        for name, fn in self.wf.functions.items():
            if fn.fold.is_ragged:  # rows past the checkpoint's are a crashed run's: cut
                self.accs[name] = np.int64(self.accs.get(name, 0))
                if self.o.resume:
                    self.out.reset_ragged(name, int(self.accs[name]))
            elif not fn.fold.is_stack:
                self.accs.setdefault(name, fn.fold.initial())
        if self.follower.roi is not None:
            self.out.set_roi(self.follower.roi)
        if self.o.resume:
            self._commit([])  # rewrite results and done from the checkpoint, which rules

    # the loop ----------------------------------------------------------------------

    def run(self, client: Any) -> Results:
        """The run's loop, to its end: poll, dispatch, gather, combine, commit, decide."""
        t0 = time.monotonic()
        self._start(client)
        status = "failed"
        try:
            self._first_tasks(client)
            while not self._step(client):
                pass
            if not self.o.follow:
                self.ended_by = "single_pass"
            elif self.follower.ahead:
                log.warning("%d frames have their keys set but no data in %s yet; they are left "
                            "not done (rerun with --resume once the data are written)",
                            self.follower.ahead, self.info.path)
            status = "complete"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        except (CancelledError, OSError) as exc:  # a lost scheduler: cancelled, or closed comms
            if isinstance(exc, FramebagError):
                raise
            _check_scheduler(client)
            raise
        finally:
            self._stop(client, status)
        try:
            if self.out is None:
                raise FramebagError(
                    f"no frame of {self.info.path!r} became complete before the run ended "
                    f"({self.ended_by}); no output was written"
                )
            return self._results(time.monotonic() - t0, self._processed - self._resumed,
                                 self._resumed)
        finally:
            if self._closing is not None:  # the workers' input handles (see _cleanup)
                # bounded: closing them is a courtesy, and a cluster that stopped answering
                # (a Ctrl-C, a lost job) must not keep the run from ending
                self._closing.join(timeout=CLOSE_INPUTS_WAIT)

    def _start(self, client: Any) -> None:
        """Tune the workers, poll the keys first, and (for a finished file) probe."""
        tune_workers(client)  # malloc thresholds on every worker, whoever started it
        self._nworkers = max(1, len(client.scheduler_info().get("workers", {})))
        self._workers_at = time.monotonic()  # read once here, not again by _max_inflight
        self._planned = planned_workers(client)
        self._end = EndOfScan(self.follower, self.o.follow, self.o.timeout, full=self._full)
        self._complete = self._end.poll()
        self.info = self.follower.data
        self._schema: Schema | None = None
        if not self.o.follow:  # the probe's timing of a frame sizes the tasks
            if self.o.resume:
                self._open_output(self._complete)
            else:
                self._schema = self._probe_schema(self._complete)
        self._dispatcher = Dispatcher(self._complete.size,
                                      self._task_size(self._complete),
                                      self.o.latency, self.follower.growing)
        self._record_grid()  # a resumed output's (a new one's once it is made)
        self._inflight: dict[Any, list[tuple[int, int]]] = {}
        self._processed = self._resumed = 0
        self._opened = False
        self._last_commit = time.monotonic()  # the first checkpoint a commit interval in

    def _first_tasks(self, client: Any) -> None:
        """A new output for a finished file: the first tasks go out before it is laid out,
        so the workers read while the driver writes it (10-15 ms of a run)."""
        if self._schema is None:
            return
        d = self._dispatcher
        self._backlog.extend(by_block(d.due(self._complete, time.monotonic(), flush=True),
                                      d.size))
        room = self._max_inflight(client, d.size)
        self._submit(client, self._backlog[:room], self._inflight)
        del self._backlog[:room]
        self._open_output(self._complete, self._schema)
        self._record_grid()

    def _step(self, client: Any) -> bool:
        """One pass of the loop; True once the run has ended and everything is committed."""
        _check_scheduler(client)
        now = time.monotonic()
        self._follow_growth()
        self._open_when_complete()
        if self.out is not None:
            self._dispatch(client, now)
        finished_now = [f for f in self._inflight if f.done()]
        if finished_now:
            self._processed += self._combine(client, finished_now, self._inflight)
        elif (self._pending or (self.out is not None and self.out.deferred)) \
                and now - self._last_commit >= self.commit_interval:
            # released partials and a deferred checkpoint wait at most one interval, also
            # when no other task completes (a detector paused): a live reader sees them then
            self._flush()
        self._report(self._complete)
        if self._end.final and not self._inflight and not self._backlog \
                and not (self._complete & ~self._dispatcher.dispatched).any():
            self._flush()
            return True
        if not self._end.final:
            self._complete = self._end.poll()
            if self._end.reason:
                self._ended(self._end.reason, self._complete)
        self._wait(client, bool(finished_now))
        return False

    def _follow_growth(self) -> None:
        """A growing scan grew: the dispatcher, the spec and the output grow with it."""
        if self._complete.size <= self._dispatcher.dispatched.size:
            return
        self._dispatcher.grow(self._complete.size)
        self.info = self.follower.data
        self._spec = None
        if self.out is not None:
            self.out.grow(self.info.scan_shape)
            self._copy_axes()

    def _open_when_complete(self) -> None:
        """Open the output once a frame is complete, and mark what it has done already."""
        if self.out is None and self._complete.any():
            # nothing went out yet: the probe's timing sizes the tasks, and a new output
            # is made with its read (a resumed output's read is reused: see _task_size)
            schema = None if self.o.resume else self._probe_schema(self._complete)
            if schema is not None:
                self._dispatcher.size = self._task_size(self._complete)
            self._open_output(self._complete, schema)
            if schema is None:
                self._dispatcher.size = self._task_size(self._complete)
            self._record_grid()
        if self.out is None or self._opened:
            return
        self._opened = True
        if self.follower.growing:
            self.out.grow(self.info.scan_shape)
            self._copy_axes()
        self._dispatcher.mark(np.flatnonzero(self.out.done))
        if self.follower.roi is not None:  # a block is full once its ROI frames are
            self._dispatcher.mark(np.flatnonzero(~self.follower.roi.mask(self.info.scan_shape)))
        self._processed = self._resumed = int(self.out.done.sum())

    def _dispatch(self, client: Any, now: float) -> None:
        """Send the runs that are due, as many tasks as may be out at a time: a partial
        block waits ``latency`` while every worker has a task; while one has none, the
        frames waiting go to it at once, at most once per commit interval (an idle worker
        gains nothing from the wait, but each task costs the driver a few ms of CPU, and
        a result is seen no sooner than the commit after it)."""
        d = self._dispatcher
        idle = len(self._inflight) < self._nworkers and \
            now - self._early_at >= self.commit_interval
        runs = d.due(self._complete, now, flush=self._end.final or idle)
        if idle and runs:
            self._early_at = now
        if runs:
            # one task per block: the runs of one block (frames that completed out of
            # order) share a task instead of costing one task each
            self._backlog.extend(by_block(runs, d.size))
        room = self._max_inflight(client, d.size) - len(self._inflight)
        if self._backlog and room > 0:
            self._submit(client, self._backlog[:room], self._inflight)
            del self._backlog[:room]

    def _report(self, complete: np.ndarray) -> None:
        if self.o.progress:
            self.o.progress({"processed": self._processed, "complete": int(complete.sum()),
                             "seen": self.follower.seen, "total": self._total(complete),
                             "inflight": len(self._inflight), "resumed": self._resumed})

    def _wait(self, client: Any, got_some: bool) -> None:
        """Wait for a task to complete, or until the next poll of a live file's keys."""
        # distributed.wait() waits on the *current* client's loop: as_current() makes that
        # this run's client, which need not be the default one
        from distributed import wait

        if self._inflight and not got_some:
            # a finished file has no keys to poll: wake only when a task completes
            # (each wake-up costs the driver about 0.5 ms of CPU)
            wake = self.o.poll_interval if self.o.follow else \
                max(self.o.poll_interval, self.commit_interval)
            try:
                with client.as_current():
                    wait(list(self._inflight), timeout=wake, return_when="FIRST_COMPLETED")
            except TimeoutError:
                pass
        elif not self._inflight and not self._end.final:
            time.sleep(self.o.poll_interval)

    def _stop(self, client: Any, status: str) -> None:
        """Cancel what is out, commit what arrived (also on Ctrl-C), and clean up."""
        for f in getattr(self, "_inflight", {}):
            f.cancel()
        try:
            self._flush(everything=True)  # keep what arrived, also on Ctrl-C
        except Exception:  # noqa: BLE001 - the error that got us here is the one to show
            log.debug("could not commit the last partials", exc_info=True)
        self._cleanup(client, status)

    def _max_inflight(self, client: Any, size: int) -> int:
        """How many tasks may be out at a time: their stacked results within one read
        budget per worker, or 32 MiB if that is more (and at least two tasks per worker:
        one running, one queued).

        Partials the driver has not gathered yet wait on the workers; with large stacked
        results this keeps them from piling up there. Small results do not limit it, so
        an adaptive cluster still sees the whole backlog. The worker count is read
        again every second: batch jobs join after the run has started.
        """
        now = time.monotonic()
        if now - self._workers_at > 1.0:
            self._workers_at = now
            _check_scheduler(client)
            self._nworkers = max(1, len(client.scheduler_info().get("workers", {})))
        per_task = self._task_bytes = size * self.result_nbytes
        if not per_task:
            return 1 << 30
        waiting = max(self.o.partition_bytes, DEFAULT_PARTITION_BYTES)
        return self._nworkers * max(2, waiting // per_task)

    def _task_size(self, complete: np.ndarray) -> int:
        """Frames per task, and (``_read_frames``) per read: see :func:`task_size`.

        Cut for the workers connected or, if more, those the cluster plans (the jobs
        of a batch cluster that have not started yet): a scan cut for the first
        worker alone would leave the later ones without a task.

        Sized by the probe (frame cost, stacked result bytes) once the output is open;
        a live scan is sized per read, not by the frames complete so far.
        """
        size, self._read_frames = task_size(
            self.info.frame_nbytes, self.o.partition_bytes,
            chunk_run(self.info.scan_shape, self.info.chunks),
            None if self.o.follow else int(complete.sum()), max(self._nworkers, self._planned),
            self.frame_seconds,
            self.result_nbytes,
            grid=self._recorded_grid(),
        )
        return size

    def _recorded_grid(self) -> int | None:
        """The read a resumed output recorded (``@read_frames``), or None: a new output,
        or one made before framebag recorded it."""
        if not self.o.resume or self.out is None:
            return None
        return _grid_of(self.out.group.attrs.get(READ_ATTR))

    def _record_grid(self) -> None:
        """Record this run's read on the output (``@read_frames``), for a later --resume."""
        if self.out is None:
            return
        attrs = self.out.group.attrs
        got = attrs.get(READ_ATTR)
        if _grid_of(got) == self._read_frames:
            return
        if got is not None and type(got) is not np.int64:
            del attrs[READ_ATTR]  # another type (an edited output): made afresh, not cast into
        # written in place where it exists (an attribute made on the SWMR handle
        # changes the group's header under the readers)
        attrs.modify(READ_ATTR, np.int64(self._read_frames))

    def _copy_axes(self) -> None:
        """Copy a growing scan's positions (``--axes``) that the input holds now."""
        names = list(self.o.axes or ())
        if names and self.out is not None:
            self.out.write_axes(read_axes(self.info.path, names, self.info.scan_shape, True,
                                          self.wf, refresh=True))

    def _submit(self, client: Any, groups: list[list[tuple[int, int]]],
                inflight: dict[Any, list[tuple[int, int]]], attempt: int = 0) -> None:
        """Send groups of runs out as one dask task each, first frames first.

        Retries are done here rather than with dask's ``retries=``, because those
        do not cover a worker that dies (KilledWorker); ``attempt`` gives a retry
        fresh task keys.
        """
        if self._spec is None:  # pickled once per run (and again when a live scan grows)
            import cloudpickle

            self._spec = (uuid.uuid4().hex, cloudpickle.dumps(RunSpec(
                self.info, self.wf, self.params, self.o.on_error, self.o.follow,
                self._read_frames, self._kinds, setup_files(self.provenance))))
        token, spec = self._spec
        # one plain task per group, ranked by its first frame so that partials combined in
        # scan order do not wait for the last; fresh keys, never a previous run's results.
        # (A bag graph per dispatch cost the driver 1.2-1.6 ms of CPU per task, this 0.5.)
        for group in groups:
            key = f"framebag-{self.wf.name}-{attempt}-{group[0][0]}-{uuid.uuid4().hex}"
            # an array, not the list of runs: dask walks a list's every tuple for keys
            # (60,000 calls for a strided ROI's commit of 20,000 one-frame runs)
            future = client.submit(process_task, np.asarray(group, dtype=np.int64), token,
                                   spec, key=key, priority=-group[0][0], pure=False)
            inflight[future] = group

    def _total(self, complete: np.ndarray) -> int:
        """The frames the run is to process: the scan's, or its ROI's."""
        roi = self.follower.roi
        return complete.size if roi is None else roi.count(self.info.scan_shape)

    def _full(self, complete: np.ndarray) -> bool:
        """Whether every frame the run is to process is complete (a growing scan never
        is, unless its ROI has an end)."""
        roi = self.follower.roi
        if roi is not None:
            return bool(roi.full(complete, self.info.scan_shape, self.follower.growing))
        return not self.follower.growing and bool(complete.all())

    def _ended(self, reason: str, complete: np.ndarray) -> None:
        """Record and log why a followed run ended (see :class:`EndOfScan`)."""
        self.ended_by = reason
        roi = self.follower.roi
        if reason == "keys_full" and roi is not None:
            log.info("every frame of --roi %s is complete", roi.summary(self.info.scan_shape))
        elif reason == "keys_full":
            log.info("every frame of the scan %s is complete", self.info.scan_shape)
        elif reason == "finished_flag":
            log.info("finished flag %r is set", self.follower.finished_name)
        else:
            log.warning("no new complete frame for %g s: stopping on the timeout with %d of %d "
                        "frames complete", self.o.timeout, int(complete.sum()),
                        self._total(complete))

    def _combine(self, client: Any, finished: list[Any],
                 inflight: dict[Any, list[tuple[int, int]]]) -> int:
        """Gather, combine and commit every successful partial; then handle a failed one.

        What arrived is committed first, so a failure never loses it (see :meth:`_retry`).
        Partials are gathered in one round trip for as many tasks as fit their stacked
        results in the read budget, and committed before they pass it, so the driver
        never holds more than that (plus those held back for scan order).
        """
        ok = [f for f in finished if f.status == "finished"]
        failed = [f for f in finished if f.status != "finished"]
        failure = None
        count = 0
        at_once = max(1, self.o.partition_bytes // max(1, self._task_bytes))
        gathered: list[list[Partial]] = []
        for k, f in enumerate(ok):
            if not gathered:
                gathered = client.gather(ok[k:k + at_once])[::-1]
            batch = gathered.pop()
            del inflight[f]
            good = []
            for p in batch:
                if p.failure:
                    failure = failure or p.failure
                    continue
                good.append(p)
                count += int(p.done.sum())
            del batch
            self._order.add(good)  # failed tasks stay in flight (retried) and hold back the rest
            self._queue(self._order.release(
                first_frame(inflight.values()) if self._ordered else math.inf))
        if failure or failed or time.monotonic() - self._last_commit >= self.commit_interval:
            self._flush()  # before a failure is reported, everything that arrived is kept
        if failure:
            raise FramebagError(failure)
        for f in failed:
            self._retry(client, f, inflight)
        return count

    def _retry(self, client: Any, f: Any, inflight: dict[Any, list[tuple[int, int]]]) -> None:
        """Send a failed task out again, or raise: bad input (a FramebagError) fails the
        same on every try, and any other failure has ``retries`` tries."""
        group = inflight.pop(f)
        exc = f.exception() if f.status == "error" else None
        start, stop = group[0][0], group[-1][1]
        if isinstance(exc, FramebagError):  # bad input, the same on every try
            raise FramebagError(f"{exc}; the frames done so far are kept") from exc
        why = self.wf.killed_in_setup(client, exc)  # it ends its worker on every try
        if why:
            raise FramebagError(f"{why}; fix it, then rerun with --resume (the frames done so "
                                "far are kept)") from exc
        attempts = self._attempts[start] = self._attempts.get(start, 0) + 1
        if attempts > self.o.retries:
            raise FramebagError(
                f"partition of frames {self._span(start, stop)} failed after "
                f"{self.o.retries} retries ({type(exc).__name__}: {exc}); the frames done so "
                "far are kept: rerun with --resume"
            ) from exc
        log.warning("partition of frames %d..%d failed (%s: %s); retrying", start, stop - 1,
                    type(exc).__name__, exc)
        self._submit(client, [group], inflight, attempt=attempts)

    def _queue(self, partials: list[Partial]) -> None:
        """Add released partials to the next commit, committing first whenever their
        stacked results would pass the read budget."""
        for p in partials:
            nbytes = sum(v.nbytes for v in p.stacks.values()) + sum(
                r.nbytes for _, r in p.ragged.values() if r is not None)
            if self._pending and self._pending_bytes + nbytes > self.o.partition_bytes:
                self._flush()
            self._pending.append(p)
            self._pending_bytes += nbytes

    def _flush(self, everything: bool = False) -> None:
        """Combine and commit the partials released since the last commit; with
        ``everything`` (the run ends, also by an error), the held-back ones too."""
        if everything:
            self._queue(self._order.release())
        if self.out is not None and not self._broken and (self._pending or self.out.deferred):
            pending, self._pending = self._pending, []
            self._pending_bytes = 0
            self._commit(pending, final=everything)
        self._last_commit = time.monotonic()

    def _commit(self, partials: list[Partial], final: bool = False) -> None:
        """Check, combine and write ``partials``, then make the step durable.

        Every partial is checked before any state changes; if combining fails
        anyway (a custom fold), nothing more is committed, so the checkpoint
        never holds a half-combined step.
        """
        for p in partials:
            self._check(p)
        out = self.out
        assert out is not None
        try:
            self._combine_into_output(partials, final)
            out.check_present()
        except BaseException as exc:
            self._broken = True
            failed = exc if isinstance(exc, OutputWriteError) else write_error(out.path, exc)
            if failed is not None:
                self._write_failed = True
                out.abandon()
                if failed is not exc:
                    raise failed from exc
            raise

    def _check(self, p: Partial) -> None:
        assert self.out is not None  # partials are combined only once the output is open
        for name, values in p.stacks.items():
            want = self.out.value_shape(name)
            if values.shape[1:] != want:
                self._mismatch(name, p, f"shape {values.shape[1:]}, not {want}")
        for name, (_, rows) in p.ragged.items():
            want_rows = self.out.row_kind(name)
            if rows is not None and (rows.shape[1:], rows.dtype) != want_rows:
                self._mismatch(name, p, f"rows of shape {rows.shape[1:]} dtype {rows.dtype}, "
                               f"not {want_rows[0]} {want_rows[1]}")
        for name, acc in p.accs.items():
            fold = self.wf.functions[name].fold
            want = self.out.value_shape(name)
            if acc is None:
                continue
            have = np.shape(fold.finalize(acc))
            if have != want:
                self._mismatch(name, p, f"shape {have}, not {want}")

    def _combine_into_output(self, partials: list[Partial], final: bool = False) -> None:
        assert self.out is not None
        newly = []
        runs: dict[str, list[tuple[int, int, np.ndarray]]] = {}
        ragged: dict[str, list[tuple[int, np.ndarray, np.ndarray, np.ndarray | None]]] = {}
        for p in partials:
            done = p.done_runs()  # only frames done are written: see Partial.done_runs
            for name, values in p.stacks.items():
                runs.setdefault(name, []).extend(
                    (a, b, values[a - p.start:b - p.start]) for a, b in done)
            for name, (counts, rows) in p.ragged.items():
                ragged.setdefault(name, []).append((p.start, p.done, counts, rows))
            for name, acc in p.accs.items():
                self._combine_one(name, acc, p)
            newly.append(np.arange(p.start, p.stop)[p.done])
            self.errors.extend(p.errors)
        for name, stacked in runs.items():
            self.out.write_stack(name, stacked)  # one write per result for the whole commit
        for name, parts in ragged.items():  # the rows, then their count and offset
            self.accs[name] = np.int64(self.out.write_ragged(name, parts, int(self.accs[name])))
        accs = dict(self.accs)

        def results() -> dict[str, Any]:  # finalized only when the commit checkpoints
            return {name: self.wf.functions[name].fold.finalize(acc)
                    for name, acc in accs.items()
                    if acc is not None and not self.wf.functions[name].fold.is_ragged}

        newly_done = np.concatenate(newly) if newly else np.zeros(0, dtype=np.int64)
        self._recorder.note(self.info, newly_done)  # flushed by the commit, before its checkpoint
        self.out.commit(newly_done, results, accs, [e for p in partials for e in p.errors],
                        checkpoint=True if final else None)

    def _combine_one(self, name: str, acc: Any, p: Partial) -> None:
        """Combine one fold's accumulator from partial ``p`` into the run's."""
        fold = self.wf.functions[name].fold
        had = self.accs[name]
        try:
            self.accs[name] = fold.combine(had, acc)
        except SumOverflow as exc:
            raise FramebagError(
                f"function {name!r}: its sum leaves the range of {exc.dtype} with frames "
                f"{self._span(p.start, p.stop)} (numpy would wrap it around, a wrong result); "
                f"the frames done so far are kept: {OVERFLOW_FIX}") from exc
        except Exception as exc:
            self._mismatch(name, p, f"{type(exc).__name__}: {exc}")
        # None means "no frame yet": a binop or combine returning it would drop frames
        if (acc is None and p.done.any()) or (
                self.accs[name] is None and (had is not None or acc is not None)):
            raise FramebagError(
                f"fold {fold.name!r} of function {name!r} returned None for frames "
                f"{self._span(p.start, p.stop)} ({'binop' if acc is None else 'combine'}"
                "); None means no frame yet, so their values would be lost")

    def _span(self, start: int, stop: int) -> str:
        """The flat run ``start .. stop`` named by its first and last scan index."""
        shape = self.info.scan_shape
        return f"{scan_index(start, shape)} to {scan_index(stop - 1, shape)}"

    def _mismatch(self, name: str, p: Partial, what: str) -> None:
        raise FramebagError(
            f"function {name!r} gave frames {self._span(p.start, p.stop)} a result that does not "
            f"fit the earlier frames' ({what}); a function must return one shape for every frame"
        )

    def _cleanup(self, client: Any, status: str) -> None:
        # the workers close their input handles while the driver closes the output and
        # reads it back (a round trip of 4-5 ms, off the end of every run); run() waits
        self._closing = threading.Thread(target=_close_inputs, args=(client, self.info.path),
                                         name="framebag-close-inputs", daemon=True)
        self._closing.start()
        if self.follower.growing and self.out is not None and not self._write_failed:
            try:
                self._copy_axes()  # the positions written last
            except Exception:  # noqa: BLE001 - the run's own outcome is the one to report
                log.debug("could not copy the last scan positions", exc_info=True)
        hdf5.close(self.info.path)
        if self.out is not None and not self._write_failed:
            try:
                self.out.close(status, ended_by=self.ended_by or status,
                               scan_shape=np.asarray(self.info.scan_shape, dtype=np.int64))
            except Exception as exc:
                failed = write_error(self.out.path, exc)
                if failed is None:
                    raise
                self._write_failed = True
                self.out.abandon()
                raise failed from exc

    def _results(self, wall: float, processed: int, resumed: int) -> Results:
        import h5py

        res = Results()
        try:
            f = h5py.File(self.out_path, "r")
        except OSError as exc:  # say, removed after the last commit
            raise FramebagError(f"cannot read back output file {str(self.out_path)!r} at the "
                                f"end of the run: {str(exc).splitlines()[0]}") from None
        with f:
            g = f[f"entry/{self.wf.name}"]
            _read_results(res, g, list(self.wf.functions), len(self.info.scan_shape))
            res.roi = g["roi_mask"][()].astype(bool) if "roi_mask" in g else None
            res._group = g.name
            errs = g["errors"][()]
        res.output = self.out_path
        st = os.stat(self.out_path)
        res._stamp = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
        res.errors = [
            (scan_index(e["flat"], self.info.scan_shape), e["function"].decode(),
             e["message"].decode("utf-8", "replace")) for e in errs
        ]
        res.stats = {"processed": processed, "resumed": resumed,
                     "failed": len(self.errors), "wall": wall,
                     "done": int(res.done.sum()), "ended_by": self.ended_by}
        return res



#: seconds the end of a run waits for the workers to close their input handles
CLOSE_INPUTS_WAIT = 10.0

#: the output attribute (on the workflow's group) that records a run's read, in frames: a
#: resumed run reads on the same grid (see dispatch.task_size's ``grid``)
READ_ATTR = "read_frames"


def _grid_of(got: object) -> int | None:
    """The read an output's ``@read_frames`` holds: an integer scalar, or None (absent, or
    any other value a file may hold there: a string, an array, a float)."""
    return int(got) if isinstance(got, (int, np.integer)) and not isinstance(
        got, (bool, np.bool_)) else None


#: the most workers an adaptive cluster's maximum counts for (``maximum=math.inf`` is
#: distributed's default): cut for more, a scan's tasks could each cost the driver 2-3 ms
#: of CPU for workers that never come; cut for this many, a run pays at most about a
#: second more (tasks are whole reads, never more tasks than reads either way)
MAX_ADAPTIVE_WORKERS = 256


def planned_workers(client: Any) -> int:
    """The workers ``client``'s cluster plans or may grow to: the scan is cut for them.

    These are the workers its plan holds, started or not (``SpecCluster.plan``: a
    dask-jobqueue cluster's queued jobs, a LocalCluster's workers) or, if more, the
    maximum of its active adaptive scaling (``cluster.adapt(maximum=...)``, in workers;
    ``adapt(maximum_jobs=N)`` is ``N`` times the processes per job), at most
    ``MAX_ADAPTIVE_WORKERS``. An adaptive cluster asks for no more workers than it has
    tasks to give them (the scheduler's ``adaptive_target``), so a scan cut for the
    workers it starts with would keep it at those; cut for its maximum, it grows as
    far as the scheduler finds the work worth it. 0 when the client has no cluster
    object here (a scheduler started elsewhere)."""
    try:
        cluster = client.cluster
        planned = len(cluster.plan)
    except Exception:  # noqa: BLE001 - no cluster, or one without a plan
        return 0
    adaptive: Any = getattr(cluster, "_adaptive", None)  # Cluster.adapt() keeps it there
    if getattr(adaptive, "periodic_callback", None) is None:  # none, or stopped
        return planned
    return max(planned, int(min(adaptive.maximum, MAX_ADAPTIVE_WORKERS)))


def _close_inputs(client: Any, path: str) -> None:
    """Close the handles on the input ``path`` held by every worker of ``client``."""
    try:
        client.run(hdf5.close, path)
    except Exception:  # noqa: BLE001 - workers may be gone already
        log.debug("could not close input handles on the workers", exc_info=True)


def many_outputs(workflow_name: str, inputs: list[Path],
                 out_dir: str | os.PathLike | None) -> dict[Path, Path]:
    """The output of each input: the default name, next to the input or in ``out_dir``.

    ``out_dir`` must be an existing directory. Two inputs that would share an output
    (the same file stem in two directories) are refused before anything runs.
    """
    if out_dir is not None and not Path(out_dir).is_dir():
        what = "is not a directory" if Path(out_dir).exists() else "does not exist"
        raise FramebagError(f"output directory {str(out_dir)!r} {what}; with several inputs "
                            "-o names a directory, which must exist (mkdir it first)")
    outputs: dict[Path, Path] = {}
    owner: dict[Path, Path] = {}
    for inp in inputs:
        out = default_output_path(inp, workflow_name)
        if out_dir is not None:
            out = Path(out_dir) / out.name
        key = out.resolve()
        if key in owner:
            raise FramebagError(f"inputs {str(owner[key])!r} and {str(inp)!r} would both write "
                                f"{str(out)!r}; give them separate runs or rename one")
        owner[key] = inp
        outputs[inp] = out
    return outputs


def own_outputs_left_out(workflow_name: str, inputs: Sequence[str | os.PathLike],
                         out_dir: str | os.PathLike | None) -> tuple[list[Path], list[Path]]:
    """``inputs`` without duplicates and without those that are another input's output.

    A glob over a directory that already holds this workflow's outputs (a second run,
    outputs next to the inputs) matches them too; they are not scans. Returns the
    inputs kept and those left out.
    """
    paths = list(dict.fromkeys(Path(p) for p in inputs))
    made = {(Path(out_dir) / default_output_path(p, workflow_name).name if out_dir is not None
             else default_output_path(p, workflow_name)).resolve() for p in paths}
    left = [p for p in paths if p.resolve() in made]
    return [p for p in paths if p not in left], left


def _all_scans(workflow: Workflow, paths: list[Path], outputs: dict[Path, Path],
               opts: RunOptions,
               progress_for: Callable[[Path], Callable[[dict[str, Any]], None] | None] | None,
               each: Callable[[int, int, Path, Path, Results | BaseException], None] | None,
               done: ManyResults, client: Any) -> None:
    """:func:`run_many`'s scans in turn on ``client``; one that fails does not stop the rest."""
    for i, inp in enumerate(paths):
        out = outputs[inp]
        result: Results | BaseException
        try:
            result = run(workflow, inp, out, client=client, options=opts.replace(
                progress=progress_for(inp) if progress_for else None))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - one failed scan must not stop the rest
            log.debug("scan %s failed", inp, exc_info=True)
            result = exc
        done[inp] = result
        if each is not None:
            each(i, len(paths), inp, out, result)


def run_many(workflow: Workflow, inputs: Sequence[str | os.PathLike],
             out_dir: str | os.PathLike | None = None, *, client: Any = None,
             options: RunOptions | None = None,
             progress_for: Callable[[Path], Callable[[dict[str, Any]], None] | None]
             | None = None,
             each: Callable[[int, int, Path, Path, Results | BaseException], None]
             | None = None,
             **given: Any) -> ManyResults:
    """Run ``workflow`` over each of ``inputs`` in turn, on one cluster, into one output each.

    Outputs get the default names (``<stem>_<workflow>.h5``), next to each input or
    in ``out_dir``. The cluster (``client``, or the ``profile`` started once) serves
    every scan. A scan that fails, for any reason but Ctrl-C, is recorded and the
    next one starts: the returned :class:`ManyResults` maps each input to its
    :class:`Results` or to the exception that stopped it. ``options`` are
    :func:`run`'s and apply per output (``resume``, ``overwrite``: each output on its own).
    An input that is another input's output is left out. ``progress_for(input)`` gives
    each run its ``progress`` callback; ``each`` is called after every scan with
    ``(position, number of scans, input, output, result or error)``. ``report`` covers
    all the scans. What every scan shares (parameters, ROI, output directory) is checked
    before the cluster starts: a bad one raises :class:`FramebagError` for the lot.
    """
    paths, outputs_given = own_outputs_left_out(workflow.name, inputs, out_dir)
    if outputs_given:
        progress_log.info(
            "left out %d input(s) that are the outputs of the others: %s", len(outputs_given),
            ", ".join(str(p) for p in outputs_given))
    if not paths:
        raise FramebagError("run_many needs at least one input")
    opts = RunOptions.of(options, **given)
    _check_client(client)
    workflow.resolve_params(opts.params)  # a bad --set fails once, not once per scan
    regions.parse(opts.roi)  # and a bad --roi: its files are read per scan
    each_scan = opts.replace(report=None)
    outputs = many_outputs(workflow.name, paths, out_dir)
    done, t0 = ManyResults(), time.monotonic()
    done.outputs = outputs
    scans = functools.partial(_all_scans, workflow, paths, outputs, each_scan, progress_for,
                              each, done)
    if client is not None:
        with _performance_report(opts.report):
            scans(client)
    else:
        from .clusters import start_client

        with start_client(opts.profile, announce=opts.announce) as own, \
                _performance_report(opts.report):
            scans(own)
    done.wall = time.monotonic() - t0
    return done
