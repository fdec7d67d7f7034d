"""A strided ROI on a worker: ``:,::2`` against whole rows (``::2,:``) and the whole scan.

``python -m benchmarks.strided_roi [FILE] [--mode sum|folds|batched] [--repeat N]``
times :func:`framebag.tasks.process_partition` (a worker's task, no driver) over the
first 40 rows of a 200x200 scan of 64x64 uint16 frames (FILE, written if missing,
328 MB), read 2 rows at a time, and counts the calls of :meth:`Workflow.apply`:
``:,::2`` gives one-frame runs, which a read now applies in one call over its frames
compacted, where it once took a call per run. To compare two versions, run it from
each (``PYTHONPATH=old/`` first), interleaved, on one machine.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import h5py
import numpy as np

from framebag import Workflow
from framebag.keys import KeyFollower
from framebag.tasks import RunSpec, process_partition

DATA, KEY = "entry/data/data", "entry/keys/key_1"
SCAN, FRAME, ROWS = (200, 200), (64, 64), 40


def _write(path: Path) -> None:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        d = f.create_dataset(DATA, SCAN + FRAME, "u2", chunks=(1, 1) + FRAME)
        for y in range(SCAN[0]):
            d[y] = rng.integers(0, 1000, (SCAN[1],) + FRAME, dtype="u2")
        f[KEY] = np.ones(SCAN, "i4")


def _workflow(mode: str) -> Workflow:
    wf = Workflow("strided", data=DATA, keys=[KEY])
    wf.frame(lambda frame: frame.sum(), name="total")
    if mode == "folds":
        wf.frame(lambda frame: frame, fold="sum", name="image")
        wf.frame(lambda frame: frame, fold="mean", name="avg")
    if mode == "batched":
        wf.frames(lambda frames: frames.sum(axis=(1, 2)), name="totals")
        wf.frames(lambda frames: frames, fold="sum", name="images")
    return wf


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    flat = np.flatnonzero(mask.ravel())
    return [(int(r[0]), int(r[-1]) + 1)
            for r in np.split(flat, np.flatnonzero(np.diff(flat) != 1) + 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", nargs="?", default="strided_roi.h5")
    ap.add_argument("--mode", choices=("sum", "folds", "batched"), default="sum")
    ap.add_argument("--repeat", type=int, default=7)
    a = ap.parse_args()
    if not Path(a.file).exists():
        _write(Path(a.file))
    wf = _workflow(a.mode)
    spec = RunSpec(KeyFollower(a.file, DATA, [KEY]).data, wf, {}, "raise", False, 2 * SCAN[1])
    calls = [0]
    apply = Workflow.apply

    def counted(self, *args, **kw):  # type: ignore[no-untyped-def]
        calls[0] += 1
        return apply(self, *args, **kw)

    Workflow.apply = counted  # type: ignore[method-assign]
    cases = {"whole": np.s_[:ROWS, :], "rows ::2,:": np.s_[:ROWS:2, :],
             "cols :,::2": np.s_[:ROWS, ::2]}
    for name, sel in cases.items():
        mask = np.zeros(SCAN, dtype=bool)
        mask[sel] = True
        runs, took = _runs(mask), []
        for _ in range(a.repeat):
            calls[0] = 0
            t = time.perf_counter()
            process_partition(runs, spec)
            took.append(time.perf_counter() - t)
        print(f"{name:11s} {len(runs):5d} runs {int(mask.sum()):5d} frames {calls[0]:5d} "
              f"apply calls  min {min(took) * 1e3:6.1f} ms  median "
              f"{np.median(took) * 1e3:6.1f} ms")
    print(f"mode {a.mode}, load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
