"""Peers: framebag beside LiberTEM on the same files, in the same run.

``python -m benchmarks --peers`` (or ``--cases peers``) times each pair below
on the benchmark's 128x128 uint16 scan (20,000 frames, one frame per chunk,
page cache warm; 5,000 with ``--quick``), alternately, ``--repeat`` times after
one untimed warm-up of each side, and prints the medians and their ratio:

==========================  ===============================================
LiberTEM 0.16               framebag
==========================  ===============================================
``SumUDF``                  a ``sum`` fold of the frames, per frame and batched
``SumSigUDF``               a stacked ``frame.sum()``, per frame and batched
``StdDevUDF``               ``workflows/mean_image.py`` (mean and std folds)
``CoMUDF``                  ``workflows/centre_of_mass.py``
==========================  ===============================================

Both run on 2 single-threaded worker processes started before timing:
framebag on the suite's ``distributed.LocalCluster``, LiberTEM on its own dask
executor (``Context.make_with("dask", cpus=2)``, which adds one service
worker that computes nothing). LiberTEM's workers are started with the same
environment as framebag's (glibc malloc thresholds, one BLAS thread), so that
neither side gets a faster numpy. LiberTEM reads the file through its own
``hdf5`` dataset with its default partitioning; since its ``CoMUDF`` needs a
2-d scan, the 1-d scan is loaded with a 2-d ``nav_shape`` of the same frames.

Before timing, the results of each pair are compared: exactly where both are
exact, and with a float32 tolerance where LiberTEM computes in float32
(``SumUDF``, ``SumSigUDF`` and ``CoMUDF`` work in ``result_type(uint16,
float32)``) or where the framebag example does (``centre_of_mass``). A pair
that disagrees voids the benchmark (RuntimeError).

LiberTEM is the optional extra ``[peers]``; without it the case prints why and
returns no row.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from framebag import Workflow, load_workflow

from .scans import DATA, KEY, ScanSpec

if TYPE_CHECKING:
    from .run import Context, Row

REPO = Path(__file__).resolve().parent.parent
TARGET = 1.0


def sum_fold(batched: bool) -> Workflow:
    """The sum of all frames as a ``sum`` fold (framebag keeps it exact, in uint64)."""
    wf = Workflow("sum_fold_batched" if batched else "sum_fold", data=DATA, keys=[KEY])
    if batched:
        @wf.frames(fold="sum")
        def intensity(frames):
            return frames
    else:
        @wf.frame(fold="sum")  # noqa: F811 - one of the two is registered
        def intensity(frame):
            return frame
    return wf


def frame_sums(batched: bool) -> Workflow:
    """The sum of every frame, stacked: one value per frame."""
    wf = Workflow("frame_sums_batched" if batched else "frame_sums", data=DATA, keys=[KEY])
    if batched:
        @wf.frames
        def total(frames):
            return frames.sum(axis=(1, 2))
    else:
        @wf.frame  # noqa: F811 - one of the two is registered
        def total(frame):
            return frame.sum()
    return wf


def _nav_shape(n: int) -> tuple[int, int]:
    """A 2-d scan of ``n`` frames, as square as ``n`` allows (``CoMUDF`` needs 2 dims)."""
    ny = max(d for d in range(1, int(n**0.5) + 1) if n % d == 0)
    return ny, n // ny


def _check(label: str, got: np.ndarray, want: np.ndarray, **tol: float) -> None:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        raise RuntimeError(f"peers, {label}: framebag gives shape {got.shape}, LiberTEM "
                           f"{want.shape}")
    if not np.allclose(got, want, equal_nan=True, **tol):
        worst = np.nanmax(np.abs(got - want))
        raise RuntimeError(f"peers, {label}: framebag and LiberTEM disagree (largest "
                           f"difference {worst:g}, tolerance {tol})")


class _Pair:
    """One row: a LiberTEM UDF and the framebag workflow that computes the same."""

    def __init__(self, label: str, udf: Callable[[], Any], wf: Workflow,
                 compare: Callable[[dict, dict], None]) -> None:
        self.label, self.udf, self.wf, self.compare = label, udf, wf, compare


def _pairs() -> list[_Pair]:
    from libertem.udf.com import CoMUDF
    from libertem.udf.stddev import StdDevUDF
    from libertem.udf.sum import SumUDF
    from libertem.udf.sumsigudf import SumSigUDF

    # float32 tolerances: SumUDF adds n frames in float32, so each pixel's total
    # (about 20 n) carries a relative error of a few float32 ulps per merge;
    # SumSigUDF's frame totals stay below 2**24 and are exact.
    def sums(fb: dict, lt: dict) -> None:
        _check("SumUDF", fb["intensity"], lt["intensity"].data, rtol=1e-5, atol=0)

    def sumsig(fb: dict, lt: dict) -> None:
        _check("SumSigUDF", fb["total"], lt["intensity"].data.reshape(-1), rtol=0, atol=0)

    def std(fb: dict, lt: dict) -> None:
        _check("StdDevUDF mean", fb["mean"], lt["mean"].data, rtol=1e-9, atol=0)
        _check("StdDevUDF std", fb["std"], lt["std"].data, rtol=1e-9, atol=0)

    # both compute the moments in float32: their centres agree to far below a pixel
    def com(fb: dict, lt: dict) -> None:
        _check("CoMUDF", np.stack([fb["com_y"], fb["com_x"]], axis=-1),
               lt["raw_com"].data.reshape(-1, 2), rtol=0, atol=1e-3)

    examples = REPO / "workflows"
    return [
        _Pair("SumUDF vs sum fold, per frame", SumUDF, sum_fold(False), sums),
        _Pair("SumUDF vs sum fold, batched", SumUDF, sum_fold(True), sums),
        _Pair("SumSigUDF vs stacked frame.sum(), per frame", SumSigUDF, frame_sums(False),
              sumsig),
        _Pair("SumSigUDF vs stacked frames.sum(axis=(1,2)), batched", SumSigUDF,
              frame_sums(True), sumsig),
        _Pair("StdDevUDF vs workflows/mean_image.py (mean, std)", StdDevUDF,
              load_workflow(examples / "mean_image.py"), std),
        _Pair("CoMUDF vs workflows/centre_of_mass.py", CoMUDF.with_params,
              load_workflow(examples / "centre_of_mass.py"), com),
    ]


def _cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by the processes ``pids``."""
    import psutil

    total = 0.0
    for pid in pids:
        t = psutil.Process(pid).cpu_times()
        total += t.user + t.system
    return total


def _counting(run: Callable[[], Any], pids: list[int], into: list[float]) -> Callable[[], Any]:
    """``run``, adding the CPU seconds that ``pids`` used during each call to ``into``."""
    def go() -> Any:
        before = _cpu(pids)
        out = run()
        into.append(_cpu(pids) - before)
        return out
    return go


def missing() -> str:
    """Why the peers cannot run here, or '' when they can."""
    try:
        import libertem  # noqa: F401
        from libertem.api import Context  # noqa: F401
    except ImportError as exc:
        return (f"LiberTEM is not installed ({exc}); install the extra: "
                "pip install -e '.[peers]'")
    return ""


def start_libertem(n_workers: int = 2) -> Any:
    """A LiberTEM Context on a local dask executor of ``n_workers`` CPU workers, warm."""
    import dask
    from libertem.api import Context

    from framebag.tuning import MALLOC

    # the thresholds framebag sets in its workers with mallopt, as glibc's environment
    environ = {f"MALLOC_{k[2:]}_": str(v) for k, v in MALLOC.items()}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        return Context.make_with("dask", cpus=n_workers)


def case_peers(ctx: Context) -> list[Row]:
    """The peers' rows; none (and a line on stderr) when LiberTEM is missing."""
    from . import run as suite

    why = missing()
    if why:
        print(f"[peers: skipped: {why}]", file=sys.stderr, flush=True)
        return []
    spec = ScanSpec(ctx.n_cheap)
    path = ctx.scan(spec)
    client = ctx.client  # framebag's cluster first: it sets this process's malloc environment
    lt = start_libertem(2)
    rows = []
    try:
        ds = lt.load("hdf5", path=str(path), ds_path=DATA, nav_shape=_nav_shape(spec.nframes))
        fb_pids = list(client.run(os.getpid).values())
        lt_pids = list(lt.executor.client.run(os.getpid).values())  # and its idle service worker
        for pair in _pairs():
            fb_run = suite._fb_runner(pair.wf, path, ctx.out, client)

            def lt_run(pair: _Pair = pair) -> dict:
                with warnings.catch_warnings():
                    # CoMUDF divides with where= but no out=, then overwrites those entries
                    warnings.filterwarnings("ignore", "'where' used without 'out'")
                    return lt.run_udf(dataset=ds, udf=pair.udf(), progress=False)

            pair.compare(fb_run(), lt_run())
            cpu: dict[str, list[float]] = {"framebag": [], "reference": []}
            t = suite.alternate(ctx.repeat, {
                "framebag": _counting(fb_run, fb_pids, cpu["framebag"]),
                "reference": _counting(lt_run, lt_pids, cpu["reference"]),
            }, lambda: suite.settle(client))
            row = suite._throughput_row("7 peers", f"{pair.label}, {spec.nframes} frames "
                                        "(ref: LiberTEM)", spec.nframes, t, TARGET)
            # the workers' CPU per frame: what a quiet machine would turn into frames/s
            us = {k: suite._median(v[1:]) / spec.nframes * 1e6 for k, v in cpu.items()}
            rows += [row, suite.Row("7 peers", "  the same: workers' CPU per frame, lower is "
                                    "better (ref: LiberTEM's)", us["framebag"], us["reference"],
                                    "us/frame", us["framebag"] / us["reference"], runs=cpu)]
            print(f"[peers: {pair.label}: {row.ratio:.2f}x; workers' CPU {us['framebag']:.0f} "
                  f"vs {us['reference']:.0f} us/frame]", file=sys.stderr, flush=True)
    finally:
        lt.close()
    return rows
