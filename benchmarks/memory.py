"""The stack-memory case: peak RSS when every frame comes back whole, 1 GiB vs 4 GiB.

``python -m benchmarks --cases stack_memory`` (``--quick``: 256 MiB vs 1 GiB).

A function that returns the frame itself (``stack`` fold) sends the whole input
through the driver into the output: the worst case for memory. framebag runs it
on a ``LocalCluster`` of 2 single-threaded worker processes with the default
read budget (32 MiB); the reference is one plain process that reads 32 MiB slabs
with ``read_direct`` into one reused buffer and writes each slab to the output
with h5py (chunk cache off, ``rdcc_nbytes=0``): the least memory this job can take.

Each side runs in a fresh interpreter (``python -m benchmarks.memory --child ...``)
and reports its own peak RSS (``VmHWM``), so nothing left by an earlier run
counts; framebag's workers report theirs the same way before the cluster closes.
The target: every process's peak grows by no more than 15% from the small file
to the big one (the read budget, not the scan, sizes memory).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np

from .scans import DATA, KEY, ScanSpec

FRAME = (256, 256)
BUDGET = 32 * 2**20
TARGET = 1.15


def _peak_mib() -> float:
    """This process's peak RSS in MiB: ``VmHWM``, which (unlike ``ru_maxrss``) starts
    afresh at ``exec`` and so does not include the parent's peak before it."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def stack_job():
    """The frame itself, stacked: the output is as big as the input."""
    from framebag import Workflow

    wf = Workflow("stack_frames", data=DATA, keys=[KEY])

    @wf.frame
    def image(frame):
        return frame

    return wf


def child_framebag(path: str, out: str) -> dict:
    from .run import start_cluster

    cluster, client = start_cluster()
    try:
        res = stack_job().run(path, out, client=client, overwrite=True)
        if not res.done.all():
            raise RuntimeError("the benchmark run left frames undone")
        del res  # the results as read back from the output: not part of the run
        workers = sorted(client.run(_peak_mib).values())
    finally:
        client.close()
        cluster.close()
    return {"driver": _peak_mib(), "workers": workers}


def child_reference(path: str, out: str) -> dict:
    import h5py

    with h5py.File(path, "r") as f, h5py.File(out, "w", rdcc_nbytes=0) as g:
        ds = f[DATA]
        n = ds.shape[0]
        step = max(1, BUDGET // (int(np.prod(ds.shape[1:])) * ds.dtype.itemsize))
        dst = g.create_dataset("image", shape=ds.shape, dtype=ds.dtype,
                               chunks=(max(1, 2**20 // (ds.size // n * ds.dtype.itemsize)),
                                       *ds.shape[1:]))
        buf = np.empty((step, *ds.shape[1:]), dtype=ds.dtype)
        for a in range(0, n, step):
            b = min(a + step, n)
            ds.read_direct(buf, source_sel=np.s_[a:b], dest_sel=np.s_[: b - a])
            dst.write_direct(buf, source_sel=np.s_[: b - a], dest_sel=np.s_[a:b])
    return {"driver": _peak_mib(), "workers": []}


def _child(kind: str, path: Path, out: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE",
                                                            "OPENBLAS_L2_SIZE")}
    done = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--child", kind,
                           str(path), str(out)], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parent.parent)
    if done.returncode:
        raise RuntimeError(f"the {kind} run of the memory case failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def case_stack_memory(ctx) -> list:
    from .run import Row

    sizes = [2**28, 2**30] if ctx.quick else [2**30, 2**32]
    frame_nbytes = FRAME[0] * FRAME[1] * 2
    specs = [ScanSpec(s // frame_nbytes, frame_shape=FRAME) for s in sizes]
    paths = [ctx.scan(s) for s in specs]
    out = ctx.dir / "stack_memory_out.h5"
    got: dict[str, list[dict]] = {"framebag": [], "reference": []}
    try:
        for path in paths:
            for kind in ("reference", "framebag"):
                got[kind].append(_child(kind, path, out))
                out.unlink(missing_ok=True)
    finally:
        out.unlink(missing_ok=True)
    fb, ref = got["framebag"], got["reference"]
    gib = [s / 2**30 for s in sizes]
    rows = []
    for i, g in enumerate(gib):
        rows.append(Row("7 stack memory", f"peak RSS of the driver, frame-returning stack, "
                        f"{g:g} GiB input (reference: one plain h5py process)",
                        fb[i]["driver"], ref[i]["driver"], "MiB",
                        fb[i]["driver"] / ref[i]["driver"]))
        rows.append(Row("7 stack memory", f"peak RSS of the larger worker, {g:g} GiB input",
                        max(fb[i]["workers"]), ref[i]["driver"], "MiB",
                        max(fb[i]["workers"]) / ref[i]["driver"]))
    label = f"{gib[1]:g} vs {gib[0]:g} GiB"
    growth = [("driver", fb[1]["driver"], fb[0]["driver"])]
    growth += [(f"worker {k + 1}", b, a) for k, (b, a) in enumerate(zip(fb[1]["workers"],
                                                                      fb[0]["workers"]))]
    for who, big, small in growth:
        rows.append(Row("7 stack memory", f"growth of the {who}'s peak RSS, {label}",
                        big, small, "MiB", big / small, "", f"<= {TARGET:g}x",
                        big / small <= TARGET))
    r_big, r_small = ref[1]["driver"], ref[0]["driver"]
    rows.append(Row("7 stack memory", f"growth of the reference's peak RSS, {label}",
                    r_big, r_small, "MiB", r_big / r_small))
    for row in rows:
        row.runs = {"framebag": fb, "reference": ref}
    return rows


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "--child":
        kind, path, out = argv[1:]
        func = child_framebag if kind == "framebag" else child_reference
        print(json.dumps(func(path, out)))
        return 0
    print("usage: python -m benchmarks --cases stack_memory [--quick]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
