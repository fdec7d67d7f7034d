"""The benchmark suite: framebag beside its plain h5py + numpy reference, in one run.

``python -m benchmarks`` (from the repository root) runs seven cases and prints
one table. Every framebag figure is timed alternately with its reference in
the same process, the same minute and on the same files, ``--repeat`` times
after one untimed warm-up; the table shows medians and the ratio of the
medians, because a shared 2-core VM is too noisy for absolute times.

1. cheap    20,000 frames of 128x128 uint16, one frame per chunk, page cache
            warm; ``frame.sum()`` per frame and batched, against a warm pool of
            2 processes doing slab reads and a vectorised sum. Targets 0.8x, 0.9x.
2. cpu      about 5 ms of numpy per frame (FFT magnitude of a 512x512 frame,
            summed into one image) against the plain serial loop. Target 1.8x.
3. layouts  multi-frame chunks, gzip and blosc/lz4 (hdf5plugin), per-frame sum.
4. memory   files of 4x and 8x a worker's memory limit (256 MiB), peak RSS of
            the driver plus every cluster process, sampled with psutil.
5. e2e      ``framebag run`` of the example workflow on a 100-frame file with
            the default local profile, cluster start included, against a plain
            h5py script in a fresh interpreter.
6. overhead a no-op function; microseconds per frame over the reference's read.
7. stack_memory  a frame-returning stack over 1 GiB and 4 GiB: peak RSS of the driver and
            of each worker beside one plain h5py process (see benchmarks/memory.py).
8. peers    only with ``--peers``: LiberTEM's UDFs beside the framebag workflows
            that compute the same (:mod:`benchmarks.peers`). Target 1.0x.

The clusters are ``distributed.LocalCluster`` of 2 single-threaded worker
processes, started before timing and passed as ``workflow.run(client=...)``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import jobs, reference, scans
from .commits import case_commits  # noqa: F401 - a case, found by name
from .memory import case_stack_memory  # noqa: F401 - a case, found by name
from .peers import case_peers  # noqa: F401 - run as a case by name (--peers)
from .scaling import case_driver, case_fft, case_scaling  # noqa: F401 - cases, by name
from .scans import DATA, ScanSpec

REPO = Path(__file__).resolve().parent.parent
CASES = ("cheap", "cpu", "layouts", "memory", "e2e", "overhead", "stack_memory", "fft",
         "driver", "scaling", "peers", "commits")
# run only when asked for: --peers, or by name in --cases (scaling is long)
OPTIONAL = ("scaling", "peers")


@dataclass
class Row:
    """One line of the table: framebag's median beside the reference's, and their ratio."""

    case: str
    what: str
    framebag: float
    reference: float
    unit: str
    ratio: float | None = None
    spread: str = ""  # the lowest and highest ratio of the runs paired in time
    target: str = ""
    ok: bool | None = None
    runs: dict[str, list[float]] = field(default_factory=dict)


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def settle(client=None) -> None:
    """Collect garbage and let the scheduler drop the last run's tasks before timing."""
    gc.collect()
    if client is None:
        return
    for _ in range(100):
        if not client.run_on_scheduler(_scheduler_tasks):
            return
        time.sleep(0.02)


def _scheduler_tasks(dask_scheduler=None) -> int:
    return len(dask_scheduler.tasks)


def start_cluster(dask_malloc: bool = False, **options):
    """A LocalCluster of 2 single-threaded worker processes and its client, warm.

    It is a user's plain LocalCluster: framebag tunes its workers' malloc when a
    run starts (:mod:`framebag.tuning`). With ``dask_malloc`` that tuning is off
    (``FRAMEBAG_WORKER_TUNING=0``) for the whole benchmark, and the workers keep
    dask's ``MALLOC_TRIM_THRESHOLD_=65536``, which makes every array over 128 KiB
    a fresh mmap and a page fault per 4 KiB.
    """
    from distributed import Client, LocalCluster

    if dask_malloc:
        os.environ["FRAMEBAG_WORKER_TUNING"] = "0"
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=":0", **options)
    client = Client(cluster)
    client.wait_for_workers(2)
    return cluster, client


def alternate(repeat: int, timed: dict[str, Callable[[], object]],
              before: Callable[[], None] = lambda: None) -> dict[str, list[float]]:
    """Time each callable ``repeat`` times, interleaved, after one untimed warm-up each."""
    out: dict[str, list[float]] = {k: [] for k in timed}
    for i in range(repeat + 1):
        order = list(timed) if i % 2 else list(reversed(timed))
        for name in order:
            before()
            t = time.perf_counter()
            timed[name]()
            dt = time.perf_counter() - t
            if i:
                out[name].append(dt)
    return out


def _fb_runner(wf, path: Path, out: Path, client, **opts) -> Callable[[], object]:
    def go():
        res = wf.run(path, out, client=client, overwrite=True, progress=None, **opts)
        if not res.done.all():
            raise RuntimeError(f"benchmark run of {wf.name} left frames undone")
        return res
    return go


def _ref_runner(pool: reference.Pool, path: Path, spec: ScanSpec,
                job: Callable) -> Callable[[], object]:
    runs = reference.slabs(spec.nframes, spec.chunk, spec.frame_nbytes)
    return lambda: pool.run(str(path), DATA, runs, job)


def _check_equal(wf, path: Path, out: Path, client, pool, spec: ScanSpec) -> None:
    """The benchmark is void if framebag and the reference disagree: check once."""
    res = _fb_runner(wf, path, out, client)()
    ref = np.concatenate(_ref_runner(pool, path, spec, reference.job_sum)())
    got = next(iter(res.values()))
    if not np.array_equal(np.asarray(got).ravel(), ref):
        raise RuntimeError(f"{wf.name}: framebag and the reference disagree on {path}")


# the cases ---------------------------------------------------------------------


def case_cheap(ctx: Context) -> list[Row]:
    spec = ScanSpec(ctx.n_cheap)
    path = ctx.scan(spec)
    rows = []
    for label, wf, target in (("per-frame frame.sum()", jobs.per_frame_sum(), 0.8),
                              ("batched frames.sum(axis=(1,2))", jobs.batched_sum(), 0.95)):
        _check_equal(wf, path, ctx.out, ctx.client, ctx.pool, spec)
        t = alternate(ctx.repeat, {
            "framebag": _fb_runner(wf, path, ctx.out, ctx.client),
            "reference": _ref_runner(ctx.pool, path, spec, reference.job_sum),
        }, lambda: settle(ctx.client))
        rows.append(_throughput_row("1 cheap", f"{label}, {spec.nframes} frames", spec.nframes,
                                    t, target))
    return rows


def _throughput_row(case: str, what: str, n: int, t: dict[str, list[float]],
                    target: float | None) -> Row:
    fb, ref = n / _median(t["framebag"]), n / _median(t["reference"])
    ratio = fb / ref
    pairs = [r / f for f, r in zip(t["framebag"], t["reference"])]
    return Row(case, what, fb, ref, "frames/s", ratio, f"{min(pairs):.2f}-{max(pairs):.2f}",
               f">= {target}x" if target else "", ratio >= target if target else None, t)


def case_cpu(ctx: Context) -> list[Row]:
    spec = ScanSpec(ctx.n_cpu, frame_shape=(512, 512))
    path = ctx.scan(spec)
    wf = jobs.fft_power()
    runs = reference.slabs(spec.nframes, spec.chunk, spec.frame_nbytes)
    serial = ctx.serial  # a process of its own: one process must not open a file twice

    def loop() -> np.ndarray:
        return serial.ex.submit(reference.serial_fft, str(path), DATA, runs).result()

    got = _fb_runner(wf, path, ctx.out, ctx.client)()["power"]
    if not np.allclose(got, loop(), rtol=1e-9):
        raise RuntimeError("cpu case: framebag and the serial loop disagree")
    pool_fft = _ref_runner(ctx.pool, path, spec, reference.job_fft)
    t = alternate(ctx.repeat, {
        "framebag": _fb_runner(wf, path, ctx.out, ctx.client),
        "reference": loop,
        "pool": pool_fft,
    }, lambda: settle(ctx.client))
    per_frame = _median(t["reference"]) / spec.nframes * 1e3
    rows = [_throughput_row("2 cpu", f"FFT magnitude 512x512 (~{per_frame:.1f} ms/frame), "
                            f"{spec.nframes} frames, vs serial loop", spec.nframes, t, 1.8)]
    # what the machine itself gives: the same numpy on 2 plain processes, vs the serial loop
    rows.append(_throughput_row("2 cpu", "bound: plain h5py+numpy on 2 processes vs serial "
                                "loop", spec.nframes,
                                {"framebag": t["pool"], "reference": t["reference"]}, None))
    rows.append(_throughput_row("2 cpu", "framebag vs that 2-process bound", spec.nframes,
                                {"framebag": t["framebag"], "reference": t["pool"]}, None))
    if not ctx.quick and not ctx.dask_malloc:
        cluster, client = start_cluster(dask_malloc=True)
        try:
            t = alternate(ctx.repeat, {
                "framebag": _fb_runner(wf, path, ctx.out, client),
                "reference": loop,
            }, lambda: settle(client))
        finally:
            os.environ.pop("FRAMEBAG_WORKER_TUNING", None)
            client.close()
            cluster.close()
        rows.append(_throughput_row("2 cpu", "the same on workers with dask's default "
                                    "MALLOC_TRIM_THRESHOLD_", spec.nframes, t, None))
    return rows


def case_layouts(ctx: Context) -> list[Row]:
    rows = []
    wf = jobs.per_frame_sum()
    # issue 15's targets: 0.8x, 0.9x (gzip's decompression is most of both sides' time), 0.8x
    layouts = [("16 frames/chunk", ScanSpec(ctx.n_cheap, chunk=16), 0.8),
               ("gzip level 1", ScanSpec(ctx.n_cheap, compression="gzip"), 0.9),
               ("blosc lz4", ScanSpec(ctx.n_cheap, compression="lz4"), 0.8)]
    for label, spec, target in layouts:
        if spec.compression == "lz4" and not _has_hdf5plugin():
            continue
        path = ctx.scan(spec)
        _check_equal(wf, path, ctx.out, ctx.client, ctx.pool, spec)
        t = alternate(ctx.repeat, {
            "framebag": _fb_runner(wf, path, ctx.out, ctx.client),
            "reference": _ref_runner(ctx.pool, path, spec, reference.job_sum),
        }, lambda: settle(ctx.client))
        rows.append(_throughput_row("3 layouts", f"per-frame sum, {label}", spec.nframes, t,
                                    target))
    return rows


def _has_hdf5plugin() -> bool:
    try:
        import hdf5plugin  # noqa: F401
    except ImportError:
        return False
    return True


class PeakRSS:
    """Samples the summed RSS of this process and the cluster's processes in a thread."""

    def __init__(self, pids: list[int], interval: float = 0.01) -> None:
        import psutil

        self.procs = [psutil.Process(), *(psutil.Process(p) for p in pids)]
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def now(self) -> int:
        total = 0
        for p in self.procs:
            try:
                total += p.memory_info().rss
            except Exception:  # noqa: BLE001 - a process that just ended
                pass
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.peak = self.now()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def case_memory(ctx: Context) -> list[Row]:
    limit = 256 * 2**20
    frame = (512, 512)
    sizes = [4 * limit, 8 * limit] if not ctx.quick else [2 * limit, 4 * limit]
    specs = [ScanSpec(s // (frame[0] * frame[1] * 2), frame_shape=frame) for s in sizes]
    paths = [ctx.scan(s) for s in specs]
    cluster, client = start_cluster(ctx.dask_malloc, memory_limit=limit)
    try:
        import psutil

        workers = list(client.run(os.getpid).values())
        pids = workers + [psutil.Process(w).ppid() for w in workers]  # and their nannies
        wf = jobs.memory_job()
        peaks: dict[int, list[float]] = {}
        idle: list[float] = []
        for _ in range(max(1, ctx.repeat // 2)):
            for spec, path in zip(specs, paths):
                settle(client)
                with PeakRSS(pids) as rss:
                    base = rss.now()
                    _fb_runner(wf, path, ctx.out, client)()
                idle.append(base / 2**20)
                peaks.setdefault(spec.nbytes, []).append(rss.peak / 2**20)
    finally:
        client.close()
        cluster.close()
    small, big = (_median(peaks[s.nbytes]) for s in specs)
    gib = [s.nbytes / 2**30 for s in specs]
    rest = _median(idle)
    return [Row("4 memory", f"peak RSS of driver, 2 nannies, 2 workers (limit 256 MiB each): "
                f"{gib[1]:g} GiB file vs {gib[0]:g} GiB; idle {rest:.0f} MiB, so the runs "
                f"added {big - rest:.0f} vs {small - rest:.0f} MiB",
                big, small, "MiB", big / small, "", "<= 1.1x (flat)", big / small <= 1.1,
                {"peak_small": peaks[specs[0].nbytes], "peak_big": peaks[specs[1].nbytes],
                 "idle": idle})]


def case_e2e(ctx: Context) -> list[Row]:
    spec = ScanSpec(100)
    path = ctx.scan(spec)
    out = ctx.out.with_name("e2e_out.h5")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    exe = shutil.which("framebag")
    cli = [exe] if exe else [sys.executable, "-m", "framebag.cli"]
    fb = [*cli, "run", str(REPO / "workflows" / "frame_sum.py"), str(path), "-o", str(out),
          "--overwrite"]
    plain = [sys.executable, "-c",
             "import sys, h5py, numpy as np\n"
             "f = h5py.File(sys.argv[1], 'r'); d = f['entry/data/data']\n"
             "a = d[()]; s = a.sum(axis=(1, 2)); m = a.max(axis=0)\n"
             "with h5py.File(sys.argv[2], 'w') as o:\n"
             "    o['total'] = s; o['brightest'] = m\n",
             str(path), str(out.with_name("e2e_plain.h5"))]

    def call(cmd: list[str]) -> Callable[[], None]:
        def go() -> None:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"{cmd[:4]} failed: {proc.stderr[-2000:]}")
        return go

    reps = 1 if ctx.quick else max(2, ctx.repeat // 2)
    t = alternate(reps, {"framebag": call(fb), "reference": call(plain)})
    fbm, refm = _median(t["framebag"]), _median(t["reference"])
    return [Row("5 e2e", "`framebag run` 100 frames, local profile, cluster start included "
                "(ref: plain h5py script, fresh interpreter)", fbm, refm, "s wall",
                fbm / refm, "", "", None, t)]


def case_overhead(ctx: Context) -> list[Row]:
    """A no-op on N and N/4 frames: the slope is the cost per frame, the rest per run."""
    specs = [ScanSpec(ctx.n_cheap // 4), ScanSpec(ctx.n_cheap)]
    wf = jobs.no_op()
    extra, read = [], []
    for spec in specs:
        path = ctx.scan(spec)
        t = alternate(ctx.repeat, {
            "framebag": _fb_runner(wf, path, ctx.out, ctx.client),
            "reference": _ref_runner(ctx.pool, path, spec, reference.job_read),
        }, lambda: settle(ctx.client))
        extra.append(_median(t["framebag"]) - _median(t["reference"]))
        read.append(_median(t["reference"]))
    return overhead_rows([s.nframes for s in specs], extra, read)


#: issue 15: a run on a started cluster costs at most this much beyond the work (ms)
FIXED_COST_TARGET_MS = 15.0


def overhead_rows(nframes: list[int], extra: list[float], read: list[float]) -> list[Row]:
    """The overhead case's rows from framebag's extra seconds beyond the reference (``extra``)
    and the reference's seconds (``read``) at two scan sizes ``nframes``: the slope is the
    cost per frame, the intercept the fixed cost per run, checked against its target. A
    slope or intercept below zero is noise (a loaded machine), which neither meets nor
    misses the target."""
    (n0, n1), (e0, e1) = nframes, extra
    per_frame = (e1 - e0) / (n1 - n0) * 1e6
    fixed = (e0 - per_frame * 1e-6 * n0) * 1e3
    ref_per_frame = (read[1] - read[0]) / (n1 - n0) * 1e6
    target, noise = f"<= {FIXED_COST_TARGET_MS:g} ms", per_frame < 0 or fixed < 0
    return [Row("6 overhead", f"no-op per frame: framebag's extra us/frame beyond the "
                f"reference's read ({n0} and {n1} frames, 2 processes)", per_frame,
                ref_per_frame, "us/frame"),
            Row("6 overhead", "framebag's fixed cost per run (workflow.run on a started "
                "cluster: probe, output file, scheduling)", fixed, 0.0, "ms",
                target=f"{target} (a fit below 0 is noise: rerun)" if noise else target,
                ok=None if noise else fixed <= FIXED_COST_TARGET_MS)]


# running -----------------------------------------------------------------------


class Context:
    """What the cases share: the data directory, the warm cluster and the warm pool."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.quick = args.quick
        self.dask_malloc = args.dask_malloc
        self.repeat = args.repeat or (3 if args.quick else 7)
        self.n_cheap = 5000 if args.quick else 20000
        self.n_cpu = 200 if args.quick else 400
        self.dir = Path(args.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.out = self.dir / "out.h5"
        self._cluster = self._client = self._pool = self._serial = None
        self._warm: set[Path] = set()
        self.workers = [int(w) for w in args.workers.split(",")]
        self.sizes = [float(g) for g in args.sizes.split(",")]
        self.notes: list[str] = []  # printed under the table

    def scan(self, spec: ScanSpec) -> Path:
        path = scans.make(self.dir, spec)
        if path not in self._warm:
            scans.warm(path)
            self._warm.add(path)
        return path

    @property
    def client(self):
        if self._client is None:
            self._cluster, self._client = start_cluster(self.dask_malloc)
        return self._client

    @property
    def pool(self) -> reference.Pool:
        if self._pool is None:
            self._pool = reference.Pool(2)
        return self._pool

    @property
    def serial(self) -> reference.Pool:
        if self._serial is None:
            self._serial = reference.Pool(1)
        return self._serial

    def close(self) -> None:
        for pool in (self._pool, self._serial):
            if pool is not None:
                pool.close()
        if self._client is not None:
            self._client.close()
            self._cluster.close()


def _num(x: float) -> str:
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.3g}"


def table(rows: list[Row]) -> str:
    """The rows as a fixed-width text table."""
    head = ("case", "what", "framebag", "reference", "unit", "ratio", "runs", "target", "ok")
    body = []
    for r in rows:
        body.append((r.case, r.what, _num(r.framebag), _num(r.reference), r.unit,
                     "" if r.ratio is None else f"{r.ratio:.2f}x", r.spread, r.target,
                     "" if r.ok is None else ("yes" if r.ok else "NO")))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*b) for b in body]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller files and 3 repeats: about a minute")
    parser.add_argument("--repeat", type=int, default=0,
                        help="timed runs of each side (default 7, or 3 with --quick)")
    parser.add_argument("--cases", default=",".join(c for c in CASES if c not in OPTIONAL),
                        help=f"comma-separated subset of {','.join(CASES)} (default: all "
                        f"but {','.join(OPTIONAL)})")
    parser.add_argument("--workers", default="1,2,4,8,16",
                        help="scaling case: the worker counts (default 1,2,4,8,16)")
    parser.add_argument("--sizes", default="2,10",
                        help="scaling case: the file sizes in GB (default 2,10)")
    parser.add_argument("--dir",
                        default=os.environ.get("FRAMEBAG_BENCH_DIR", "/tmp/framebag-bench"),
                        help="where the input files are written and kept (default "
                        "/tmp/framebag-bench, or $FRAMEBAG_BENCH_DIR)")
    parser.add_argument("--peers", action="store_true",
                        help="also time LiberTEM beside framebag (case peers; needs the "
                        "[peers] extra)")
    parser.add_argument("--json", help="also write every timing to this JSON file")
    parser.add_argument("--dask-malloc", action="store_true",
                        help="keep dask's default MALLOC_TRIM_THRESHOLD_ on the workers "
                        "(slower numpy; see start_cluster)")
    args = parser.parse_args(argv)
    chosen = [c.strip() for c in args.cases.split(",") if c.strip()]
    if args.peers:
        chosen.append("peers")
    unknown = sorted(set(chosen) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; cases are "
                     f"{', '.join(CASES)}")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
    ctx = Context(args)
    rows: list[Row] = []
    t0 = time.monotonic()
    try:
        for name in CASES:
            if name in chosen:
                t = time.monotonic()
                new = globals()[f"case_{name}"](ctx)
                rows += new
                print(f"[{name}: {time.monotonic() - t:.0f} s]", file=sys.stderr, flush=True)
    finally:
        ctx.close()
    print(f"framebag benchmarks: {os.cpu_count()} cores, median of {ctx.repeat} runs "
          f"({'quick' if ctx.quick else 'full'}), {time.monotonic() - t0:.0f} s in all")
    print(table(rows))
    for line in ctx.notes:
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in rows], indent=1))
    return 0 if all(r.ok is not False for r in rows) else 1
