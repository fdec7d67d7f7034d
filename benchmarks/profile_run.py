"""Where the wall time of one short run goes: ``python -m benchmarks.profile_run``.

On a warm LocalCluster of 2 single-threaded workers it runs the cheap case
(``--frames`` 128x128 uint16 frames, one per chunk, ``frame.sum()`` per frame)
``--repeat`` times after one warm-up, and prints the median wall time of each
step of the run, exclusive of the steps nested in it:

- in the driver, the engine's steps (the functions and methods of
  :mod:`framebag.engine` and :mod:`framebag.output` named in ``DRIVER``) and the
  dask calls it makes (``gather``, ``client.run``, ``scheduler_info``, the wait
  for a task to complete), wrapped with ``time.perf_counter``;
- on the workers, the read (``read_run``) and the functions (``Workflow.apply``)
  timed the same way in each worker process (summed over both workers, so up to
  twice the wall time), and from distributed's task stream each task's time on
  a worker and the time from the run's start to its last task's end.

``--cprofile FILE`` also writes a cProfile of the driver's main thread over the
timed runs. It is a diagnostic, not a benchmark: it prints and asserts nothing.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from . import jobs, scans
from .run import settle, start_cluster
from .scans import ScanSpec

#: (module, object name or "", attribute, step): driver-side callables timed by wall
DRIVER = [
    ("framebag.engine", "", "_follower", "open input + keys"),
    ("framebag.engine", "", "read_axes", "open input + keys"),
    ("framebag.engine", "OutputLock", "__init__", "output lock + target check"),
    ("framebag.engine", "OutputFile", "check_target", "output lock + target check"),
    ("framebag.engine", "OutputLock", "release", "output lock + target check"),
    ("framebag.engine", "hdf5", "files_behind", "open input + keys"),
    ("framebag.fingerprint", "", "describe", "input fingerprint"),
    ("framebag.engine", "", "tune_workers", "tune_workers"),
    ("framebag.engine", "_Job", "_probe_schema", "probe"),
    ("framebag.engine", "OutputFile", "create", "output creation"),
    ("framebag.engine", "_Job", "_open_output", "output creation"),
    ("framebag.engine", "_Job", "_task_size", "task sizing"),
    ("framebag.engine", "_Job", "_max_inflight", "scheduler_info"),
    ("framebag.engine", "_Job", "_submit", "graph + submission"),
    ("framebag.engine", "_Job", "_combine", "combine"),
    ("framebag.engine", "_Job", "_commit", "commits + checkpoints"),
    ("framebag.engine", "_Job", "_cleanup", "cleanup (close)"),
    ("framebag.engine", "_Job", "_results", "final read-back"),
    ("distributed", "Client", "gather", "gather partials"),
    ("distributed", "Client", "run", "client.run (close input on workers)"),
    ("distributed", "Client", "scheduler_info", "scheduler_info"),
    ("distributed", "Client", "compute", "graph + submission"),
    ("distributed", "", "wait", "waiting for tasks"),
]


MAIN_CPU = "driver main thread CPU, whole run"


class Steps:
    """Wall seconds per step, exclusive of nested steps, accumulated while patched."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}  # the calling thread's CPU (time.thread_time)
        self._stack: list[float] = []
        self._cpu_stack: list[float] = []
        self._saved: list[tuple[Any, str, Any]] = []

    def wrap(self, step: str, fn: Any) -> Any:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t, c = time.perf_counter(), time.thread_time()
            self._stack.append(0.0)
            self._cpu_stack.append(0.0)
            try:
                return fn(*args, **kwargs)
            finally:
                inner, inner_cpu = self._stack.pop(), self._cpu_stack.pop()
                dt, dc = time.perf_counter() - t, time.thread_time() - c
                self.wall[step] = self.wall.get(step, 0.0) + dt - inner
                self.cpu[step] = self.cpu.get(step, 0.0) + dc - inner_cpu
                if self._stack:
                    self._stack[-1] += dt
                    self._cpu_stack[-1] += dc
        return timed

    def patch(self, targets: list[tuple[str, str, str, str]]) -> None:
        import importlib

        for module, obj, attr, step in targets:
            owner = importlib.import_module(module)
            if obj:
                owner = getattr(owner, obj, None)
            fn = getattr(owner, attr, None) if owner is not None else None
            if fn is None:
                continue
            raw = owner.__dict__.get(attr, fn) if hasattr(owner, "__dict__") else fn
            if isinstance(raw, (staticmethod, classmethod)):
                wrapped = type(raw)(self.wrap(step, raw.__func__))
            else:
                wrapped = self.wrap(step, fn)
            self._saved.append((owner, attr, raw))
            setattr(owner, attr, wrapped)

    def unpatch(self) -> None:
        for owner, attr, raw in reversed(self._saved):
            setattr(owner, attr, raw)
        self._saved.clear()

    def take(self) -> dict[str, float]:
        out, self.wall = self.wall, {}
        return out

    def take_cpu(self) -> dict[str, float]:
        out, self.cpu = self.cpu, {}
        return out


_WORKER_STEPS: Steps | None = None


def _worker_patch() -> None:
    """In a worker: time the read and the functions (once per process)."""
    global _WORKER_STEPS
    if _WORKER_STEPS is None:
        _WORKER_STEPS = Steps()
        _WORKER_STEPS.patch([("framebag.engine", "", "read_run", "worker read"),
                             ("framebag.workflow", "Workflow", "apply",
                              "worker compute (functions + fold)"),
                             ("framebag.engine", "", "process_task",
                              "worker other (task body)")])


def _worker_take() -> dict[str, float]:
    return _WORKER_STEPS.take() if _WORKER_STEPS is not None else {}


def _by_name(fn: Any) -> Any:
    """``fn`` from this module imported by name, not from ``__main__``: so that the
    workers import it too (and keep its globals) instead of getting a pickled copy."""
    import importlib

    return getattr(importlib.import_module("benchmarks.profile_run"), fn.__name__)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.profile_run")
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--dir", default="/tmp/framebag-bench")
    ap.add_argument("--batched", action="store_true")
    ap.add_argument("--cprofile", default="")
    args = ap.parse_args(argv)

    spec = ScanSpec(args.frames)
    path = scans.make(Path(args.dir), spec)
    scans.warm(path)
    out = Path(args.dir) / "profile_out.h5"
    wf = jobs.batched_sum() if args.batched else jobs.per_frame_sum()
    from distributed import get_task_stream

    cluster, client = start_cluster()
    try:
        wf.run(path, out, client=client, overwrite=True)  # warm-up: imports, plugin, caches
        client.run(_by_name(_worker_patch))
        steps = Steps()
        steps.patch(DRIVER)
        prof = cProfile.Profile() if args.cprofile else None
        per_run: list[dict[str, float]] = []
        cpu_rows: list[dict[str, float]] = []
        for _ in range(args.repeat):
            settle(client)
            client.run(_by_name(_worker_take))
            steps.take()
            with get_task_stream(client) as ts:
                t, t_epoch, c0 = time.perf_counter(), time.time(), time.thread_time()
                if prof:
                    prof.enable()
                wf.run(path, out, client=client, overwrite=True)
                if prof:
                    prof.disable()
                wall = time.perf_counter() - t
                main_cpu = time.thread_time() - c0
            row = steps.take()
            cpu = steps.take_cpu()
            row["total wall"] = wall
            row[MAIN_CPU] = main_cpu
            cpu_rows.append(cpu)
            row["(driver steps not listed)"] = wall - sum(
                v for k, v in row.items() if k not in ("total wall", MAIN_CPU))
            for w in client.run(_by_name(_worker_take)).values():
                for k, v in w.items():
                    row[k] = row.get(k, 0.0) + v
            tasks = [d for d in ts.data if d.get("key", "") and "framebag" in str(d["key"])]
            comp = [s for d in tasks for s in d["startstops"] if s["action"] == "compute"]
            row["tasks"] = len(tasks)
            row["worker task time (task stream, both workers)"] = sum(
                s["stop"] - s["start"] for s in comp)
            xfer = [s for d in ts.data for s in d["startstops"] if s["action"] == "transfer"]
            row["transfers between workers"] = sum(s["stop"] - s["start"] for s in xfer)
            if comp:
                row["run start -> first task starts"] = min(s["start"] for s in comp) - t_epoch
                row["last task ends -> run end"] = t_epoch + wall - max(s["stop"] for s in comp)
            per_run.append(row)
        steps.unpatch()
        if prof:
            prof.dump_stats(args.cprofile)
    finally:
        client.close()
        cluster.close()

    cpu_keys = list(dict.fromkeys(k for r in cpu_rows for k in r))
    keys = list(dict.fromkeys(k for r in per_run for k in r))
    print(f"{args.frames} frames, {'batched' if args.batched else 'per-frame'} frame.sum(), "
          f"2 workers, median of {args.repeat} runs (ms, wall)")
    for k in keys:
        vals = [r.get(k, 0.0) for r in per_run]
        scale = 1 if k == "tasks" else 1e3
        print(f"  {k:<48} {statistics.median(vals) * scale:9.2f}   "
              f"({min(vals) * scale:.2f}-{max(vals) * scale:.2f})")
    print("the driver's main thread, CPU (ms, time.thread_time)")
    for k in cpu_keys:
        vals = [r.get(k, 0.0) * 1e3 for r in cpu_rows]
        print(f"  {k:<48} {statistics.median(vals):9.2f}   ({min(vals):.2f}-{max(vals):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
