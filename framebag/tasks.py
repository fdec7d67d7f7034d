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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from . import fingerprint
from .errors import FramebagError, FrameError, SetupError, ValueKindError
from .keys import DataInfo
from .partials import Kinds, Partial
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
    """Runs on a worker: read each run in slabs of ``spec.read_frames``, apply, fold.

    Each slab is folded into one Partial; slabs lie on the grid of multiples of
    ``read_frames``. A function's error or a read that fails stops the task: it is
    returned as a failed Partial (after the partials done before it), not raised,
    since a retry would fail the same way. Each slab's values are checked against
    the probe's kinds (or, without them, the first slab's), so a function's dtype
    cannot change between tasks. The setup values are looked up once per task
    (each setup runs once per worker process; see :meth:`Workflow.setup`).
    """
    d, wf = spec.data, spec.workflow
    try:
        setups = wf.setup_values(spec.params, spec.setup_files)
    except SetupError as exc:
        a, b = runs[0] if runs else (0, 0)
        return [Partial(a, b, np.zeros(b - a, dtype=bool),
                        failure=f"{exc}; the frames done so far are kept")]
    out = []
    refresh = spec.live
    expect = spec.kinds
    r = spec.read_frames
    for start, stop in runs:
        # slabs on the fixed grid of reads, one Partial each (not merged here): the driver
        # folds them in scan order, so the sum is the same whatever the tasks were
        edges = [start, *range((start // r + 1) * r, stop, r), stop]
        for a, b in zip(edges[:-1], edges[1:]):
            try:
                frames = read_run(d.path, d.name, a, b, d.scan_shape, d.frame_shape, d.dtype,
                                  refresh=refresh)
                refresh = False
                part = wf.apply(frames, a, d.scan_shape, spec.params, spec.on_error, expect,
                                setups)
            except (FrameError, ReadError) as exc:
                out.append(Partial(a, b, np.zeros(b - a, dtype=bool), failure=_stopped(exc)))
                return out
            out.append(part)
            expect = expect or part.kinds
            del frames  # frees the slab buffer for the next read
    return out


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


def process_task(group: list[tuple[int, int]], token: str, spec: bytes) -> list[Partial]:
    """Runs on a worker: one task, :func:`process_partition` over the runs of ``group``.

    ``spec`` is the run's :class:`RunSpec`, pickled once by the driver for all its
    tasks; ``token`` names it, so each worker process unpickles it once.
    """
    run_spec = _SPECS.get(token)
    if run_spec is None:
        import cloudpickle

        run_spec = cloudpickle.loads(spec)
        if len(_SPECS) >= 4:  # older runs': one evicted too soon is unpickled again
            _SPECS.pop(next(iter(_SPECS)))
        _SPECS[token] = run_spec
    return process_partition(group, run_spec)
