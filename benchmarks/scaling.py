"""The cases that need clusters of their own: worker tuning (fft), and scaling with workers.

``fft``      a per-frame ``abs(rfft2(frame)).max()`` on 256x256 frames, on a user's
             default ``LocalCluster(n_workers=2, threads_per_worker=1)`` passed as
             ``client=`` and on framebag's own local profile (2 workers): the user's
             cluster must come within 10% (framebag tunes every worker at run time,
             :mod:`framebag.tuning`). Also shown: the same plain cluster with tuning
             turned off (``FRAMEBAG_WORKER_TUNING=0``), which is how every cluster that
             framebag did not start itself ran before.
``scaling``  per-frame and batched ``frame.sum()`` on files of ``--sizes`` GB (128x128
             uint16, one frame per chunk) at each of ``--workers``: framebag on a
             LocalCluster of n single-threaded workers against the plain h5py + numpy
             pool of n processes, interleaved; and the driver's cost.

The driver's cost is its process CPU time (``time.process_time``, every thread of
the driver: the client's event loop too) over whole runs, split by the engine's steps
(:class:`DriverCost`). Its inverse is the rate at which the driver, one core, would
be saturated: the projected ceiling of frames/s, whatever the number of workers.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import reference, scans
from .scans import DATA, KEY, ScanSpec

#: engine._Job methods timed by DriverCost, and the step each one is
STEPS = {"_probe_schema": "probe", "_open_output": "output creation",
         "_submit": "scheduling (submit)", "_combine": "combine (gather)",
         "_flush": "output writes + checkpoints", "_commit": "output writes + checkpoints",
         "_cleanup": "close", "_results": "final read-back"}


#: the steps paid once per run, whatever its size
FIXED = ("open input + keys", "probe", "output creation", "close", "final read-back")
#: engine functions timed by DriverCost
FUNCTIONS = {"_follower": "open input + keys"}
#: frames in the largest task the engine cuts of 32 KiB frames (16 reads of 32 MiB)
LARGEST_TASK = 16 * 1024


class DriverCost:
    """While entered, the driver's CPU seconds per engine step, exclusive of nested steps.

    It wraps the methods of ``framebag.engine._Job`` named in :data:`STEPS` and the
    functions in :data:`FUNCTIONS` that exist (the engine's internals change; a
    missing one is skipped), and counts the tasks submitted. ``total`` is the
    process CPU of every run made while entered.
    """

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self.tasks = 0
        self.frames = 0
        self.runs = 0
        self.total = 0.0
        self.wall = 0.0
        self.idle = 0.0  # the driver's CPU per second with the cluster idle
        self._stack: list[float] = []
        self._saved: dict[str, Callable] = {}
        self._saved_fn: dict[str, Callable] = {}

    def _wrap(self, name: str, fn: Callable) -> Callable:
        step = STEPS.get(name) or FUNCTIONS[name]

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if name == "_submit":
                groups = kwargs.get("groups", args[2] if len(args) > 2 else None)
                self.tasks += len(groups) if isinstance(groups, list) else 0
            t = time.process_time()
            self._stack.append(0.0)
            try:
                return fn(*args, **kwargs)
            finally:
                inner = self._stack.pop()
                dt = time.process_time() - t
                self.cpu[step] = self.cpu.get(step, 0.0) + dt - inner
                if self._stack:
                    self._stack[-1] += dt
        return timed

    def __enter__(self) -> DriverCost:
        from framebag import engine

        for name in STEPS:
            fn = getattr(engine._Job, name, None)
            if fn is not None:
                self._saved[name] = fn
                setattr(engine._Job, name, self._wrap(name, fn))
        for name in FUNCTIONS:
            fn = getattr(engine, name, None)
            if fn is not None:
                self._saved_fn[name] = fn
                setattr(engine, name, self._wrap(name, fn))
        return self

    def __exit__(self, *exc: object) -> None:
        from framebag import engine

        for name, fn in self._saved.items():
            setattr(engine._Job, name, fn)
        for name, fn in self._saved_fn.items():
            setattr(engine, name, fn)

    def measure_idle(self, seconds: float = 1.0) -> None:
        """The driver's CPU per second while nothing runs: dask's own background.

        A LocalCluster's scheduler and nannies live in the driver's process, and so
        does the scheduler of a dask-jobqueue cluster; their periodic monitors cost
        CPU in proportion to time, not to frames or tasks.
        """
        t, w = time.process_time(), time.perf_counter()
        time.sleep(seconds)
        self.idle = (time.process_time() - t) / (time.perf_counter() - w)

    def run(self, go: Callable[[], Any], nframes: int) -> Any:
        """Call ``go`` (one framebag run of ``nframes``) and add its driver CPU."""
        t, w = time.process_time(), time.perf_counter()
        try:
            return go()
        finally:
            self.total += time.process_time() - t
            self.wall += time.perf_counter() - w
            self.frames += nframes
            self.runs += 1

    def lines(self) -> list[str]:
        """The cost per 100k frames, per task and per run, by step, and the projected ceiling."""
        per = 1e5 / max(1, self.frames)
        tasks, runs = max(1, self.tasks), max(1, self.runs)
        background = self.idle * self.wall
        rest = self.total - sum(self.cpu.values()) - background
        steps = sorted(self.cpu.items(), key=lambda kv: -kv[1]) + [
            ("other (driver loop, client thread)", rest),
            (f"dask idle background ({self.idle * 1e3:.0f} ms/s)", background)]
        out = [f"driver CPU over {self.runs} runs, {self.frames} frames, {self.tasks} tasks "
               f"({self.frames / tasks:.0f} frames/task): {self.total * per:.3f} s per 100k "
               f"frames, {self.total / tasks * 1e3:.2f} ms per task, "
               f"{self.total / runs * 1e3:.1f} ms per run"]
        for step, s in steps:
            kind = "per run" if step in FIXED else "per second" if "idle" in step \
                else "per task"
            out.append(f"  {step:<34} {s * per:8.4f} s/100k frames {s / tasks * 1e3:8.3f} "
                       f"ms/task {s / runs * 1e3:8.2f} ms/run ({kind})")
        out.append(f"  projected driver saturation: {self.ceiling():,.0f} frames/s at "
                   f"{self.frames / tasks:.0f} frames/task, {self.ceiling(LARGEST_TASK):,.0f} "
                   f"at the engine's largest tasks ({LARGEST_TASK} frames of 32 KiB); target "
                   ">= 2,000,000 for a scalar per-frame result")
        return out

    def ceiling(self, frames_per_task: float | None = None) -> float:
        """Frames/s at which the driver's one core would be busy all the time.

        Costs per run (probe, output creation, close, read-back) are left out: on a
        long run they vanish. Costs per task are spread over ``frames_per_task``
        (default: this run's). dask's idle background takes its share of the core
        first.
        """
        fixed = sum(s for step, s in self.cpu.items() if step in FIXED)
        per_task = (self.total - fixed - self.idle * self.wall) / max(1, self.tasks)
        if per_task <= 0 or self.idle >= 1:
            return float("inf")
        if frames_per_task is None:
            frames_per_task = self.frames / max(1, self.tasks)
        return (1 - self.idle) * frames_per_task / per_task


def _local_cluster(n: int, **options: Any):
    """A user's default LocalCluster of ``n`` single-threaded worker processes, warm."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                           dashboard_address=":0", **options)
    client = Client(cluster)
    client.wait_for_workers(n)
    return cluster, client


def fft_workflow():
    """``abs(rfft2(frame)).max()`` per frame: numpy's temporaries are what malloc tuning is for."""
    from framebag import Workflow

    wf = Workflow("fft_peak", data=DATA, keys=[KEY])

    @wf.frame
    def peak(frame):
        return np.abs(np.fft.rfft2(frame)).max()

    return wf


def _ref_fft_peak(frames: np.ndarray) -> np.ndarray:
    """The reference's job for the fft case: one rfft2 per frame (what a careful loop does)."""
    return np.array([np.abs(np.fft.rfft2(f)).max() for f in frames])


def case_fft(ctx) -> list:
    from framebag.clusters import start_client

    from .run import Row, _fb_runner, _ref_runner, _throughput_row, alternate, settle

    spec = ScanSpec(600 if ctx.quick else 2000, frame_shape=(256, 256))
    path = ctx.scan(spec)
    wf = fft_workflow()
    prof = Path(tempfile.mkdtemp()) / "local2.yaml"
    prof.write_text("cluster: local\noptions:\n  n_workers: 2\n  threads_per_worker: 1\n"
                    "  processes: true\n  dashboard_address: ':0'\n")
    user_cluster, user = _local_cluster(2)
    rows: list[Row] = []
    try:
        with start_client(prof, announce=False) as local:
            want = _fb_runner(wf, path, ctx.out, local)()["peak"]
            got = _fb_runner(wf, path, ctx.out, user)()["peak"]
            if not np.array_equal(want, got):
                raise RuntimeError("fft case: the two clusters disagree")
            t = alternate(ctx.repeat, {
                "framebag": _fb_runner(wf, path, ctx.out, user),
                "reference": _fb_runner(wf, path, ctx.out, local),
                "pool": _ref_runner(ctx.pool, path, spec, _ref_fft_peak),
            }, lambda: (settle(user), settle(local)))
        rows.append(_throughput_row("7 fft", f"rfft2 peak 256x256, {spec.nframes} frames: a "
                                    "user's LocalCluster(2 workers) as client= vs the local "
                                    "profile", spec.nframes, t, 0.9))
        rows.append(_throughput_row("7 fft", "the local profile vs plain h5py+numpy on 2 "
                                    "processes", spec.nframes,
                                    {"framebag": t["reference"], "reference": t["pool"]}, None))
    finally:
        user.close()
        user_cluster.close()
    if not ctx.quick:
        os.environ["FRAMEBAG_WORKER_TUNING"] = "0"
        cluster, client = _local_cluster(2)
        try:
            t = alternate(ctx.repeat, {
                "framebag": _fb_runner(wf, path, ctx.out, client),
                "reference": _ref_runner(ctx.pool, path, spec, _ref_fft_peak),
            }, lambda: settle(client))
        finally:
            os.environ.pop("FRAMEBAG_WORKER_TUNING")
            client.close()
            cluster.close()
        rows.append(_throughput_row("7 fft", "the user's cluster untuned "
                                    "(FRAMEBAG_WORKER_TUNING=0, dask's MALLOC_TRIM_THRESHOLD_) "
                                    "vs plain h5py+numpy", spec.nframes, t, None))
    return rows


def case_scaling(ctx) -> list:
    from . import jobs
    from .run import _fb_runner, _ref_runner, _throughput_row, alternate, settle

    frame = (128, 128)
    specs = [ScanSpec(int(gb * 1e9) // (frame[0] * frame[1] * 2), frame_shape=frame)
             for gb in ctx.sizes]
    paths = [ctx.scan(s) for s in specs]
    rows = []
    for n in ctx.workers:
        cost = DriverCost()
        cluster, client = _local_cluster(n)
        pool = reference.Pool(n)
        try:
            cost.measure_idle()
            with cost:
                for spec, path in zip(specs, paths):
                    pool.warm(str(path), DATA)
                    gb = spec.nbytes / 1e9
                    for label, wf, target in (("per-frame", jobs.per_frame_sum(), 0.8),
                                              ("batched", jobs.batched_sum(), 0.95)):
                        go = _fb_runner(wf, path, ctx.out, client)
                        t = alternate(ctx.repeat, {
                            "framebag": functools.partial(cost.run, go, spec.nframes),
                            "reference": _ref_runner(pool, path, spec, reference.job_sum),
                        }, lambda client=client: settle(client))
                        rows.append(_throughput_row(
                            "8 scaling", f"{label} frame.sum(), {gb:.3g} GB "
                            f"({spec.nframes} frames), {n} workers vs {n} processes",
                            spec.nframes, t, target))
                        print(f"[scaling: {rows[-1].what}: {rows[-1].ratio:.2f}x]",
                              file=sys.stderr, flush=True)
        finally:
            pool.close()
            client.close()
            cluster.close()
        ctx.notes.append(f"scaling, {n} workers, per-frame and batched together:")
        ctx.notes.extend(cost.lines())
    return rows


def case_driver(ctx) -> list:
    """The driver's cost on the 2-core machine: the cheap case's runs, profiled by step."""
    from . import jobs
    from .run import Row, _fb_runner, settle

    spec = ScanSpec(ctx.n_cheap)
    path = ctx.scan(spec)
    rows = []
    for label, wf in (("per-frame", jobs.per_frame_sum()), ("batched", jobs.batched_sum())):
        go = _fb_runner(wf, path, ctx.out, ctx.client)
        go()
        cost = DriverCost()
        settle(ctx.client)
        cost.measure_idle()
        with cost:
            for _ in range(ctx.repeat):
                settle(ctx.client)
                cost.run(go, spec.nframes)
        ctx.notes.append(f"{label} frame.sum(), {spec.nframes} frames, 2 workers:")
        ctx.notes.extend(cost.lines())
        top = cost.ceiling(LARGEST_TASK)
        rows.append(Row("9 driver", f"{label}: projected driver saturation, 1 core, per-task "
                        f"costs at {LARGEST_TASK} frames/task (measured at "
                        f"{cost.frames // max(1, cost.tasks)})", top, 2e6, "frames/s",
                        top / 2e6, "", ">= 2,000,000", top >= 2e6))
    return rows


def make_files(directory: Path, sizes: list[float]) -> list[Path]:
    """The scaling case's files, written and read once (used by benchmarks/device.sh)."""
    frame = (128, 128)
    out = []
    for gb in sizes:
        spec = ScanSpec(int(gb * 1e9) // (frame[0] * frame[1] * 2), frame_shape=frame)
        path = scans.make(directory, spec)
        scans.warm(path)
        out.append(path)
    return out
