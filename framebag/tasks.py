"""The worker side of a run: a task reads its runs of frames and applies the workflow.

:func:`process_task` is what the driver submits, one task per group of runs
(:mod:`framebag.engine`); it unpickles the run's :class:`RunSpec` once per worker
process and calls :func:`process_partition`, which reads each run in slabs of the
read budget, applies every function (:meth:`framebag.Workflow.apply`) and returns
one :class:`~framebag.partials.Partial` per read. Nothing here imports the output
writer: workers never load it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from . import fingerprint
from .errors import FramebagError, FrameError, SetupError, ValueKindError
from .keys import DataInfo
from .partials import Kinds, Partial
from .partitions import by_block
from .reading import ReadError, read_run

if TYPE_CHECKING:  # a type only: the workflow is pickled into the spec
    from .workflow import Workflow

__all__ = ["RunSpec", "process_partition", "process_task", "setup_files"]


@dataclass(frozen=True)
class RunSpec:
    """Everything a worker needs to process a partition; shipped once per dispatch."""

    data: DataInfo
    workflow: Workflow
    params: dict[str, Any]
    on_error: str
    live: bool
    read_frames: int
    #: every function's dtype and value shape, from the probe: each task's values must match
    kinds: Kinds | None = None
    #: the setups' parameters and the sha256 of their files, taken at the start of the run
    setup_files: str = ""


def process_partition(runs: list[tuple[int, int]], spec: RunSpec) -> list[Partial]:
    """Runs on a worker: read ``runs`` in slabs of ``spec.read_frames``, apply, fold.

    Each read of the fixed grid of multiples of ``read_frames`` gives one Partial:
    the pieces of the runs within it (many short ones when a live scan's frames
    completed out of order, or for a strided ROI) are read together where the frames
    between them are few (:data:`GAP_BYTES`); the pieces' frames of one such read are
    compacted into one stack and applied in one call (:meth:`Workflow.apply` with
    their flat indices: its per-call cost paid once, not once per piece), and the
    reads' partials merged (:meth:`Workflow.merge`). A function's error or a read
    that fails stops the task: it is returned as a failed Partial (after the
    partials done before it), not raised, since a retry would fail the same way.
    Each piece's values are
    checked against the probe's kinds (or, without them, the first piece's), so a
    function's dtype cannot change between tasks. The setup values are looked up
    once per task (each setup runs once per worker process; see
    :meth:`Workflow.setup`).
    """
    d, wf = spec.data, spec.workflow
    try:
        setups = wf.setup_values(spec.params, spec.setup_files)
    except SetupError as exc:
        a, b = runs[0] if runs else (0, 0)
        return [Partial(a, b, np.zeros(b - a, dtype=bool),
                        failure=f"{exc}; the frames done so far are kept")]
    out: list[Partial] = []
    refresh = spec.live
    expect = spec.kinds
    gap = max(0, GAP_BYTES // max(1, d.frame_nbytes))
    for pieces in _by_read(runs, spec.read_frames):
        # one Partial per read (not merged further here): the driver folds them in scan
        # order, so the sum is the same whatever the tasks were
        parts: list[Partial] = []
        for group in _near(pieces, gap):
            lo, hi = group[0][0], group[-1][1]
            try:
                for frames, flat in _read_group(spec, group, refresh):
                    refresh = False
                    parts.append(wf.apply(frames, lo, d.scan_shape, spec.params,
                                          spec.on_error, expect, setups, flat=flat))
                    expect = expect or parts[-1].kinds
            except (FrameError, ReadError) as exc:
                if parts:
                    out.append(wf.merge(parts, parts[0].start, parts[-1].stop))
                out.append(Partial(lo, hi, np.zeros(hi - lo, dtype=bool), failure=_stopped(exc)))
                return out
            del frames  # frees the slab buffer for the next read
        out.append(wf.merge(parts, pieces[0][0], pieces[-1][1]))
    return out


#: frames between two runs of one read are read with them (and not used) when they are
#: at most this many bytes: about what one more read call costs in time
GAP_BYTES = 256 * 1024


def _read_group(spec: RunSpec, group: list[tuple[int, int]], refresh: bool,
                ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """The frames of the pieces ``(a, b)`` of ``group``, compacted into one stack, and
    their flat indices (None for one piece: its frames are its run).

    Read in one call from the first piece to the last, the pieces' frames then moved to
    the front of that buffer, over the frames between them (a copy of the pieces'
    frames, far cheaper than one apply per piece, and no second buffer); or,
    if that fails, piece by piece: a frame between them is not this task's (outside
    the ROI, say), so only a piece's own frames that cannot be read may stop the task,
    after the pieces read before it are yielded.
    """
    d = spec.data
    lo, hi = group[0][0], group[-1][1]
    flat = np.concatenate([np.arange(a, b) for a, b in group]) if len(group) > 1 else None
    try:
        frames = read_run(d.path, d.name, lo, hi, d.scan_shape, d.frame_shape, d.dtype,
                          refresh=refresh)
    except ReadError:
        if len(group) == 1:
            raise
        got: list[np.ndarray] = []
        try:
            for a, b in group:
                got.append(read_run(d.path, d.name, a, b, d.scan_shape, d.frame_shape,
                                    d.dtype))
        except ReadError:
            if got:
                yield np.concatenate(got), np.concatenate([np.arange(a, b) for a, b in
                                                           group[:len(got)]])
            raise
        yield np.concatenate(got), flat
        return
    if flat is None:
        yield frames, None
        return
    n = 0
    for a, b in group:  # each piece moves down (n <= a - lo): a frame is read before overwritten
        frames[n:n + b - a] = frames[a - lo:b - lo]
        n += b - a
    yield frames[:n], flat


def _by_read(runs: list[tuple[int, int]], r: int) -> list[list[tuple[int, int]]]:
    """``runs`` (in scan order, as a task's are) cut at multiples of ``r`` and grouped by
    the read of the grid each piece lies in (:func:`~framebag.partitions.by_block`)."""
    pieces: list[tuple[int, int]] = []
    for start, stop in runs:
        edges = [start, *range((start // r + 1) * r, stop, r), stop]
        pieces += zip(edges[:-1], edges[1:])
    return by_block(pieces, r)


def _near(pieces: list[tuple[int, int]], gap: int) -> list[list[tuple[int, int]]]:
    """``pieces`` grouped into reads: a new read where more than ``gap`` frames lie
    between one piece and the next."""
    groups = [[pieces[0]]]
    for a, b in pieces[1:]:
        if a - groups[-1][-1][1] <= gap:
            groups[-1].append((a, b))
        else:
            groups.append([(a, b)])
    return groups


def setup_files(provenance: dict[str, Any]) -> str:
    """The setups' parameters and file hashes of a run's provenance, as the workers' cache
    key (:meth:`Workflow.setup_values`): a file changed since the last run loads again."""
    return json.dumps(provenance.get(fingerprint.SETUP_ATTR, {}), sort_keys=True)


def _stopped(exc: FramebagError) -> str:
    """The sentence a task's deterministic failure stops the run with, and what helps."""
    if isinstance(exc, ReadError):
        return f"{exc}; the frames done so far are kept"
    text = str(exc)
    if isinstance(exc, ValueKindError) and exc.fix:
        fix = exc.fix
    elif isinstance(exc, ValueKindError) or "needs one shape" in text or "which gave shape" in text:
        fix = ("make the function return one fixed shape for every frame (pad or cut its "
               "value to one length), then rerun with --overwrite; --on-error skip does "
               "not help here")
    else:
        fix = ("fix the function and rerun with --overwrite (a changed workflow cannot "
               "--resume an output it did not make), or leave the function as it is and "
               "rerun with --resume --on-error skip to skip such frames")
    return f"{text}; the frames done so far are kept: {fix}"


#: the run specs a worker process has unpickled, by token: each is unpickled once, not
#: once per task (a workflow loaded from a file is pickled by value: 1-2 ms each way)
_SPECS: dict[str, RunSpec] = {}


def process_task(group: np.ndarray | list[tuple[int, int]], token: str,
                 spec: bytes) -> list[Partial]:
    """Runs on a worker: one task, :func:`process_partition` over the runs of ``group``
    (``(start, stop)`` rows: the driver sends an int64 array, which dask does not walk).

    ``spec`` is the run's :class:`RunSpec`, pickled once by the driver for all its
    tasks; ``token`` names it, so each worker process unpickles it once.
    """
    if isinstance(group, np.ndarray):
        group = [(a, b) for a, b in group.tolist()]
    run_spec = _SPECS.get(token)
    if run_spec is None:
        import cloudpickle

        run_spec = cloudpickle.loads(spec)
        if len(_SPECS) >= 4:  # older runs': one evicted too soon is unpickled again
            _SPECS.pop(next(iter(_SPECS)))
        _SPECS[token] = run_spec
    return process_partition(group, run_spec)
