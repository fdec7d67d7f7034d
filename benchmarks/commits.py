"""The driver's cost per commit of the output: CPU and bytes written, beside the target.

Issue 12 item 5: a commit writes the stacked regions that arrived and the fold
state that changed; nothing is rewritten whole on every commit. Two cases, on a
real output file (:class:`framebag.output.OutputFile`, in SWMR mode):

``var``    a 2048x2048 float64 ``var`` fold (accumulator ``(n, mean, M2)``: 64 MiB)
           and a scalar stack, 20 commits of 8 frames each.
``stack``  a 1,000 x 1,000 scan (1,000,000 frames) of one float64 stack, 50 commits of
           one row (1,000 frames) each, in scan order.

Commits come ``--interval`` apart (0.1 s, the ``--follow`` default), as the engine
makes them. Each commit is timed with ``time.process_time`` (the driver's CPU:
finalizing the folds when the commit writes them, and the writes) and its bytes
are the process's ``wchar`` (``/proc/self/io``: bytes handed to ``write``) around
it. The fold's combining is the engine's arithmetic, the same whatever is
written, and is left out. ``python -m benchmarks.commits`` prints the table;
``python -m benchmarks --cases commits`` prints it as rows of the suite.
"""

from __future__ import annotations

import inspect
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from framebag.folds import resolve
from framebag.output import OutputFile, Schema


def _wchar() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return 0


def _timed_commits(out: OutputFile, steps: list[tuple[np.ndarray, Any, dict[str, Any]]],
                   interval: float) -> tuple[list[float], list[int]]:
    """CPU seconds and bytes of each commit of ``steps`` (newly done, results, accs)."""
    lazy = "checkpoint" in inspect.signature(OutputFile.commit).parameters  # else before #12.5
    cpu, written = [], []
    for newly, results, accs in steps:
        w, t = _wchar(), time.process_time()
        out.commit(newly, results if lazy else results(), accs, [])
        cpu.append(time.process_time() - t)
        written.append(_wchar() - w)
        time.sleep(interval)
    return cpu, written


def case_var(directory: Path, interval: float, commits: int = 20) -> dict[str, Any]:
    fold = resolve("var")
    shape = (2048, 2048)
    rng = np.random.default_rng(0)
    first = fold.add_many(None, rng.random((2, *shape)))
    schema = Schema(spread=(False, shape, np.dtype(np.float64)),
                    total=(True, (), np.dtype(np.float64)))
    schema.accs["spread"] = first
    out = OutputFile.create(directory / "var.h5", "bench", (commits * 8,), schema, {})
    acc = None
    steps = []
    for k in range(commits):
        part = (8, rng.random(shape), rng.random(shape))  # a task's partial of 8 frames
        acc = fold.combine(acc, part)
        newly = np.arange(8 * k, 8 * k + 8)
        out.write_stack("total", [(8 * k, 8 * k + 8, np.ones(8))])

        def results(acc: Any = acc) -> dict[str, np.ndarray]:
            return {"spread": fold.finalize(acc)}

        steps.append((newly, results, {"spread": acc}))
    try:
        cpu, written = _timed_commits(out, steps, interval)
        checkpoints = out.generation
    finally:
        out.close()
    return {"case": "var 2048x2048 float64 fold", "commits": commits, "cpu": cpu,
            "written": written, "checkpoints": checkpoints,
            "change": "8 frames + 64 MiB fold state"}


def case_stack(directory: Path, interval: float, commits: int = 50) -> dict[str, Any]:
    scan = (1000, 1000)
    schema = Schema(total=(True, (), np.dtype(np.float64)))
    out = OutputFile.create(directory / "stack.h5", "bench", scan, schema, {})
    row = scan[1]
    cpu, written = [], []
    try:
        for k in range(commits):
            lo = k * row
            w, t = _wchar(), time.process_time()
            out.write_stack("total", [(lo, lo + row, np.full(row, float(k)))])
            cpu.append(time.process_time() - t)
            written.append(_wchar() - w)
            c, b = _timed_commits(out, [(np.arange(lo, lo + row), dict, {})], interval)
            cpu[-1] += c[0]
            written[-1] += b[0]
        checkpoints = out.generation
    finally:
        out.close()
    return {"case": "1,000,000-frame scalar stack", "commits": commits, "cpu": cpu,
            "written": written, "checkpoints": checkpoints,
            "change": f"{row} frames (8 kB of values)"}


def measure(interval: float = 0.1) -> list[dict[str, Any]]:
    """Both cases, in a fresh temporary directory."""
    with tempfile.TemporaryDirectory(prefix="framebag-commits-") as d:
        return [case_var(Path(d), interval), case_stack(Path(d), interval)]


def lines(found: list[dict[str, Any]]) -> list[str]:
    out = [f"{'case':<30} {'commits':>7} {'checkpoints':>11} {'CPU ms/commit':>14} "
           f"{'max ms':>7} {'MB/commit':>10} {'max MB':>7}  change per commit; target"]
    for r in found:
        cpu, mb = np.array(r["cpu"]) * 1e3, np.array(r["written"]) / 1e6
        out.append(f"{r['case']:<30} {r['commits']:>7} {r['checkpoints']:>11} "
                   f"{cpu.mean():>14.2f} {cpu.max():>7.1f} {mb.mean():>10.3f} {mb.max():>7.1f}"
                   f"  {r['change']}; proportional to change")
    return out


def case_commits(ctx: Any) -> list[Any]:
    """The suite's case: one row per case, CPU ms per commit (no reference to compare)."""
    from .run import Row

    found = measure()
    ctx.notes.extend(lines(found))
    return [Row("commits", f"{r['case']}: driver CPU per commit ({r['checkpoints']} "
                f"checkpoints in {r['commits']} commits)", float(np.mean(r["cpu"]) * 1e3),
                float("nan"), "ms", None, "", "proportional to change") for r in found]


if __name__ == "__main__":
    interval = float(sys.argv[1]) if len(sys.argv) > 1 else 0.1
    print("\n".join(lines(measure(interval))))
