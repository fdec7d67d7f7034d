"""A detector-like SWMR writer: ``framebag simulate OUTPUT``, for trying out live runs.

It writes a scan the way a detector does: every dataset is created first, the
file enters SWMR mode, and then, frame by frame at ``rate`` frames per second,
the frame's data are written and flushed, then its key, flushed again. At the
end it sets the finished flag. The file appears at ``OUTPUT`` only once it is
in SWMR mode (it is written under a temporary name and renamed), so a reader
that finds the path can open it at once with ``swmr=True``. With ``arm_for``
it is created at ``OUTPUT`` itself and held there, not yet in SWMR mode and
so unreadable, for that many seconds first, like a detector being armed.

With ``gate`` (a path) the writer waits until that file exists: while armed
(with ``arm_for``), else before frame ``gate_after`` of its emission order, else
before it sets the finished flag. ``gate_after`` may be several frame counts: the
writer stops at each, and removes the file as it passes every stop but the last,
so the next stop waits for a new release. A test creates the file when it has
seen what it waits for, so it is sequenced by events rather than by sleeps.

Frame content is a pure function of ``(seed, flat index)`` (:func:`frame_at`,
:func:`expected_frames`), so a test can compute the exact answer with numpy.
Options make the hard cases: interleaved writers (keys complete out of
order), a snake scan, a stall, a growing (unlimited first dim) layout, a
scalar or 1-element finished flag (or none).

Alongside the keys it records ``entry/instrument/key_time``: the wall-clock
time (``time.time()``) at which each frame's key was flushed, for latency
measurements (benchmarks/bench_latency.py).

h5py does the writing; what is written by hand here is only the schedule
(which frame is due when, in which order), which no library provides.

One module of about 480 lines because the writer, its schedule, the frames' content
(which tests use to compute the exact answer) and its command are one tool.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .errors import FramebagError
from .output import LIBVER, create_swmr, detach, os_reason
from .partitions import cut

__all__ = ["DATA", "KEY", "FINISHED", "KEY_TIME", "simulate", "SimOptions", "frame_at", "frames_at",
           "expected_frames", "emission_order", "add_parser"]

DATA = "entry/data/data"
KEY = "entry/keys/key_1"
FINISHED = "entry/finished"
KEY_TIME = "entry/instrument/key_time"


@functools.lru_cache(maxsize=8)
def _bases(seed: int, frame_shape: tuple[int, ...], high: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, high, size=frame_shape, dtype=np.uint32),
            rng.integers(0, high, size=frame_shape, dtype=np.uint32))


#: frames the simulated disk takes to go once round its circle (the default scan's 600)
DISK_PERIOD = 600.0


def frames_at(seed: int, flat: np.ndarray, frame_shape: tuple[int, ...],
              dtype: str | np.dtype = "uint16") -> np.ndarray:
    """The frames the simulator writes at flat scan indices ``flat``, as one stack.

    A pure function of its inputs: a bright disk (value ``high // 2``, radius a
    tenth of the smaller frame side) whose centre goes round a circle about the
    frame's centre once every :data:`DISK_PERIOD` frames, on top of noise
    ``(A + B * (i % 251) + i) % (high // 5)`` for two random images ``A``, ``B``
    drawn from ``seed``. So sums, regions of interest, maxima and centres of mass
    show a picture, and every frame still differs in its pixels and its sum
    (the noise repeats only after 251 * (high // 5) frames). It is cheap enough
    (well under 100 us per 128x128 frame) for a simulator at 1000 frames/s on a
    busy machine; ``high`` is 1000, or less for a narrow integer dtype.
    """
    dtype = np.dtype(dtype)
    high = min(1000, int(np.iinfo(dtype).max) + 1) if dtype.kind in "iu" else 1000
    shape = tuple(int(x) for x in frame_shape)
    noise_high = max(2, high // 5)
    a, b = _bases(int(seed), shape, noise_high)
    flat = np.asarray(flat, dtype=np.uint32).reshape(-1)
    i = flat.reshape((-1,) + (1,) * len(shape))
    out = (a + b * (i % np.uint32(251)) + i) % np.uint32(noise_high)
    if shape:
        radius = max(1.0, min(shape) / 10.0)
        angle = 2 * np.pi * flat / DISK_PERIOD
        d2 = np.zeros((flat.size,) + (1,) * len(shape), dtype=np.float32)
        for k, n in enumerate(shape):  # the last two dims: cos and sin of the angle
            turn = np.sin(angle) if (len(shape) - k) % 2 == 0 else np.cos(angle)
            centre = ((n - 1) * (0.5 + 0.38 * turn)).astype(np.float32)
            axis = np.arange(n, dtype=np.float32).reshape(
                (1,) + tuple(n if j == k else 1 for j in range(len(shape))))
            d2 = d2 + (axis - centre.reshape((-1,) + (1,) * len(shape))) ** 2
        out = out + np.uint32(high // 2) * (d2 <= radius * radius)
    return out.astype(dtype, copy=False)


def frame_at(seed: int, flat: int, frame_shape: tuple[int, ...],
             dtype: str | np.dtype = "uint16") -> np.ndarray:
    """The frame the simulator writes at flat scan index ``flat`` (see :func:`frames_at`)."""
    return frames_at(seed, np.array([flat]), frame_shape, dtype)[0]


def expected_frames(scan_shape: tuple[int, ...], frame_shape: tuple[int, ...],
                    dtype: str | np.dtype = "uint16", seed: int = 0) -> np.ndarray:
    """The whole dataset the simulator writes, ``scan_shape + frame_shape``, for checking."""
    n = int(np.prod(scan_shape, dtype=np.int64))
    out = frames_at(seed, np.arange(n), frame_shape, dtype)
    return out.reshape(tuple(scan_shape) + tuple(frame_shape))


def emission_order(scan_shape: tuple[int, ...], writers: int = 1, snake: bool = False,
                   writer_lag: int = 5) -> np.ndarray:
    """Flat indices in the order their keys are written.

    The scan order is row-major (with ``snake``, every other row of the last scan
    dim reversed). Frames are dealt round-robin to ``writers``; writer ``k``
    runs ``k * writer_lag`` frames behind writer 0, so keys complete out of order.
    """
    if writers < 1:
        raise FramebagError(f"--writers must be at least 1, got {writers}")
    n = int(np.prod(scan_shape, dtype=np.int64))
    order = np.arange(n, dtype=np.int64)
    if snake and len(scan_shape) >= 2:
        rows = order.reshape(-1, scan_shape[-1])
        rows[1::2] = rows[1::2, ::-1].copy()
        order = rows.ravel()
    slot = np.arange(n, dtype=np.float64)
    writer = slot.astype(np.int64) % writers
    when = slot + writer * writer_lag * writers
    return order[np.argsort(when, kind="stable")]


def _chunks(scan_shape: tuple[int, ...], frame_shape: tuple[int, ...],
            chunk_frames: int) -> tuple[int, ...]:
    """Chunks of ``chunk_frames`` consecutive frames, filled from the last scan dim inward."""
    c = [1] * len(scan_shape)
    left = max(1, chunk_frames)
    for d in range(len(scan_shape) - 1, -1, -1):
        take = min(left, scan_shape[d]) if scan_shape[d] else left
        c[d] = max(1, take)
        left = max(1, left // max(1, scan_shape[d]))
        if take < scan_shape[d] or left == 1:
            break
    return tuple(c) + tuple(frame_shape)


def _create(f: h5py.File, scan_shape: tuple[int, ...], frame_shape: tuple[int, ...],
            dtype: np.dtype, growing: bool, finished_shape: str, chunk_frames: int,
            compression: str | None) -> None:
    key_shape = tuple(scan_shape) + (1,) * len(frame_shape)
    start = (0, *scan_shape[1:]) if growing else tuple(scan_shape)
    grow = (None, *scan_shape[1:]) if growing else tuple(scan_shape)
    ones = (1,) * len(frame_shape)
    f.create_dataset(DATA, shape=start + tuple(frame_shape), maxshape=grow + tuple(frame_shape),
                     dtype=dtype, chunks=_chunks(scan_shape, frame_shape, chunk_frames),
                     compression=compression, fillvalue=0)
    key_chunks = (1, *key_shape[1:]) if growing else None
    f.create_dataset(KEY, shape=start + ones, maxshape=grow + ones, dtype="i4",
                     chunks=key_chunks, fillvalue=0)
    f.create_dataset(KEY_TIME, shape=start, maxshape=grow, dtype="f8",
                     chunks=(1, *scan_shape[1:]) if growing else None, fillvalue=0)
    if finished_shape == "scalar":
        f.create_dataset(FINISHED, shape=(), dtype="i4", data=0)
    elif finished_shape == "1":
        f.create_dataset(FINISHED, shape=(1,), dtype="i4", data=[0])
    elif finished_shape != "none":
        raise FramebagError(f"--finished-shape must be scalar, 1 or none, not {finished_shape!r}")
    det = f["entry/data"]
    det.attrs["simulated"] = True


def _simulated(path: Path) -> bool:
    """Whether ``path`` is a scan this module wrote (marked ``simulated`` on entry/data)."""
    try:
        with h5py.File(path, "r", swmr=True) as f:
            return bool(f["entry/data"].attrs.get("simulated", False))
    except (OSError, KeyError):
        return False


@dataclass(frozen=True)
class SimOptions:
    """How :func:`simulate` writes a scan; each field is a ``framebag simulate`` option.

    ``scan``/``frame``: the shapes; ``rate``: frames per second; ``writers``
    interleaved writers, each ``writer_lag`` frames behind the one before;
    ``snake``: every other row backwards; ``stall_after`` frames, stop writing for
    ``stall_for`` seconds (default: until killed); ``growing``: an unlimited first
    dim grown row by row; ``finished_shape``: ``scalar``, ``1`` or ``none``;
    ``chunk_frames``/``compression``: the data's chunking and filter; ``seed``: the
    frames' content; ``start_delay``: seconds before the first frame; ``drop``: flat
    indices whose keys are never set; ``arm_for``, ``gate``, ``gate_after``: see
    the module docstring.
    """

    scan: tuple[int, ...] = (20, 30)
    frame: tuple[int, ...] = (128, 128)
    rate: float = 500.0
    writers: int = 1
    writer_lag: int = 5
    snake: bool = False
    stall_after: int | None = None
    stall_for: float = math.inf
    growing: bool = False
    dtype: str = "uint16"
    finished_shape: str = "scalar"
    chunk_frames: int = 1
    compression: str | None = None
    seed: int = 0
    start_delay: float = 0.0
    drop: tuple[int, ...] = ()
    arm_for: float | None = None
    gate: str | os.PathLike | None = None
    gate_after: int | tuple[int, ...] | None = None


def simulate(path: str | os.PathLike, scan: tuple[int, ...] = (20, 30),
             frame: tuple[int, ...] = (128, 128), rate: float = 500.0, *,
             overwrite: bool = False, **options: Any) -> int:
    """Write a simulated live scan to ``path`` and return the number of frames written.

    ``options`` are the fields of :class:`SimOptions`. Blocks until the scan is
    written (or, with ``stall_after`` and the default ``stall_for``, until the
    process is killed). The finished flag is set only when every frame was
    written. The frames at the flat indices ``drop`` are written but their keys
    never set, like triggers a detector missed. Safe as a ``multiprocessing``
    target. An existing ``path`` is replaced only when it is an earlier simulated
    scan, or with ``overwrite``: one mistyped name must not destroy a real measurement.
    """
    opts = SimOptions(scan=tuple(int(s) for s in scan), frame=tuple(int(s) for s in frame),
                      rate=rate, **options)
    path = Path(path)
    writer = _Writer(opts, _checked_dtype(opts, path, overwrite))
    if opts.arm_for is None:
        f = create_swmr(path, writer.layout)
    else:
        f = h5py.File(path, "w", libver=LIBVER)
    try:
        if opts.arm_for is not None:  # in place, unreadable until it goes SWMR
            writer.layout(f)
            f.flush()
            time.sleep(opts.arm_for)
            writer.held.wait()
            f.swmr_mode = True
        written = writer.write(f)
        writer.held.wait()
        if opts.finished_shape != "none":
            flag = f[FINISHED]
            flag[()] = 1
            flag.flush()
        return written
    except (OSError, RuntimeError) as exc:  # a full disk, an I/O error: one line, no h5py noise
        reason = os_reason(exc)
        if reason is None:
            raise
        detach(f)
        raise FramebagError(f"cannot write simulated scan {str(path)!r}: {reason}") from None
    finally:
        if f.id.valid:
            f.close()


def _checked_dtype(opts: SimOptions, path: Path, overwrite: bool) -> np.dtype:
    """The frames' dtype, once the options and the output path are checked."""
    if not opts.scan or min(opts.scan) < 1 or not opts.frame or min(opts.frame) < 1:
        raise FramebagError(f"--scan {opts.scan} and --frame {opts.frame} need positive sizes")
    if opts.rate <= 0:
        raise FramebagError(f"--rate must be positive frames per second, got {opts.rate}")
    try:
        dt = np.dtype(opts.dtype)
    except TypeError:
        raise FramebagError(f"--dtype {opts.dtype!r} is not a numpy dtype") from None
    if path.exists() and not overwrite and not _simulated(path):
        raise FramebagError(
            f"simulate output {str(path)!r} exists and is not a scan framebag simulated; "
            "simulate replaces only its own scans: choose another name, or pass --overwrite")
    if not path.resolve().parent.is_dir():
        raise FramebagError(f"simulate output directory {str(path.resolve().parent)!r} "
                            "does not exist")
    return dt


class _Writer:
    """The schedule of one simulated scan: which frames are due when, and their writes."""

    def __init__(self, opts: SimOptions, dt: np.dtype) -> None:
        self.o, self.dt = opts, dt
        self.order = emission_order(opts.scan, opts.writers, opts.snake, opts.writer_lag)
        self.dropped = np.asarray(opts.drop, dtype=np.int64)
        if self.dropped.size and (self.dropped.min() < 0 or
                                  self.dropped.max() >= self.order.size):
            raise FramebagError(f"--drop {list(opts.drop)}: frames are numbered 0 to "
                                f"{self.order.size - 1}")
        self.held = _Gate(opts.gate, opts.gate_after, self.order.size)
        self.inner = int(np.prod(opts.scan[1:], dtype=np.int64))
        self.stall_after = opts.stall_after
        self.rows = 0
        # the writer's own copy of the keys: a batch's keys go out as one write of the
        # rows it touched, which only ever turns zeros into ones
        self.keys = np.zeros(opts.scan + (1,) * len(opts.frame), dtype=np.int32)
        self.times = np.zeros(opts.scan, dtype=np.float64)

    def layout(self, f: h5py.File) -> None:
        o = self.o
        _create(f, o.scan, o.frame, self.dt, o.growing, o.finished_shape, o.chunk_frames,
                o.compression)

    def write(self, f: h5py.File) -> int:
        """Write every frame at the scan's rate (held by the stall and the gate)."""
        rate, n = self.o.rate, self.order.size
        if self.o.start_delay:
            time.sleep(self.o.start_delay)
        dsets = (f[DATA], f[KEY], f[KEY_TIME])
        t0 = time.monotonic()
        written = 0
        while written < n:
            if self.held.wait(written):
                t0 = time.monotonic() - written / rate
            if self.stall_after is not None and written >= self.stall_after:
                _stall(self.o.stall_for)
                self.stall_after = None
                t0 = time.monotonic() - written / rate
            due = min(n, int((time.monotonic() - t0) * rate) + 1)
            if self.stall_after is not None:
                due = min(due, self.stall_after)
            due = self.held.cap(due)
            batch = self.order[written:due]
            if batch.size == 0:  # woke up a hair early: nothing is due yet
                time.sleep(0.5 / rate)
                continue
            self._write_batch(f, dsets, batch)
            written = due
            if written < n:
                delay = t0 + written / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        return written

    def _write_batch(self, f: h5py.File, dsets: tuple[h5py.Dataset, ...],
                     batch: np.ndarray) -> None:
        """The frames at flat indices ``batch``, flushed, then their keys, flushed."""
        o, scan = self.o, self.o.scan
        data, key, key_time = dsets
        r0, r1 = int(batch.min()) // self.inner, int(batch.max()) // self.inner + 1
        if o.growing and r1 > self.rows:
            self.rows = r1
            for ds in (data, key, key_time):
                ds.resize(self.rows, axis=0)
        for a, b in cut(batch, scan[-1]):  # ascending runs within one scan row
            start = np.unravel_index(a, scan)
            sel = (*start[:-1], slice(start[-1], start[-1] + b - a))
            data[sel] = frames_at(o.seed, np.arange(a, b), o.frame, self.dt)
        data.flush()
        self.keys.reshape(-1)[batch] = 1
        if self.dropped.size:
            self.keys.reshape(-1)[self.dropped] = 0
        self.times.reshape(-1)[batch] = time.time()
        key[r0:r1] = self.keys[r0:r1]
        key_time[r0:r1] = self.times[r0:r1]
        f.flush()


class _Gate:
    """The writer's waits for a file (``--gate``): before each frame count of ``after``
    (a stop), or when asked; one release (the file appearing) opens one stop."""

    def __init__(self, path: str | os.PathLike | None, after: int | tuple[int, ...] | None,
                 n: int) -> None:
        stops = [] if after is None else [after] if isinstance(after, int) else list(after)
        bad = [s for s in stops if path is None or not 0 <= s <= n]
        if bad:
            raise FramebagError(f"--gate-after {bad[0]} needs --gate and a number of frames "
                                f"from 0 to {n}")
        self.path, self.stops = path, sorted(stops) or [n]

    def cap(self, due: int) -> int:
        """How many frames may be written by now: none past the next stop while it is shut."""
        return due if self.path is None or not self.stops else min(due, self.stops[0])

    def wait(self, written: int | None = None) -> bool:
        """Hold the file open, writing nothing, until the gate file exists, if a stop is
        due (at ``written`` frames, or now); True if one was."""
        if self.path is None or not self.stops or (written is not None
                                                   and written < self.stops[0]):
            return False
        while not os.path.exists(self.path):
            time.sleep(0.005)
        self.stops.pop(0)
        if self.stops:  # the release is used up: the next stop waits for a new one
            os.unlink(self.path)
        return True


def _stall(seconds: float) -> None:
    """Hold the file open, writing nothing, like a detector that hangs."""
    if math.isinf(seconds):
        while True:
            time.sleep(3600)
    time.sleep(seconds)


# command line -------------------------------------------------------------------------


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape like 20x30") from None
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape of positive sizes")
    return shape


def add_parser(sub: Any) -> None:
    """Add ``framebag simulate`` to the CLI's subcommands."""
    p = sub.add_parser(
        "simulate", help="write a simulated live scan (a detector-like SWMR writer)",
        description="Write a scan to OUTPUT the way a detector does: SWMR mode, data then "
                    "keys flushed frame by frame at --rate, the finished flag at the end.")
    p.add_argument("output", help="HDF5 file to write (an earlier simulated scan there is "
                                  "replaced; any other file only with --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUTPUT even if it is not a scan framebag simulated")
    p.add_argument("--scan", type=_shape, default=(20, 30), help="scan shape (default 20x30)")
    p.add_argument("--frame", type=_shape, default=(128, 128),
                   help="frame shape (default 128x128)")
    p.add_argument("--rate", type=float, default=500.0, help="frames per second (default 500)")
    p.add_argument("--writers", type=int, default=1,
                   help="interleaved writers; more than 1 completes keys out of order")
    p.add_argument("--writer-lag", type=int, default=5,
                   help="frames each further writer runs behind the one before (default 5)")
    p.add_argument("--snake", action="store_true", help="reverse every other scan row")
    p.add_argument("--stall-after", type=int, metavar="N",
                   help="stop writing after N frames, keeping the file open")
    p.add_argument("--stall-for", type=float, default=math.inf, metavar="S",
                   help="with --stall-after: resume after S seconds (default: never)")
    p.add_argument("--growing", action="store_true",
                   help="unlimited first scan dim, extended as the scan goes")
    p.add_argument("--dtype", default="uint16", help="data dtype (default uint16)")
    p.add_argument("--finished-shape", choices=("scalar", "1", "none"), default="scalar",
                   help="finished flag of shape () (default), (1,), or no flag")
    p.add_argument("--chunk-frames", type=int, default=1,
                   help="frames per data chunk along the scan (default 1)")
    p.add_argument("--compression", help="data compression filter, e.g. gzip")
    p.add_argument("--seed", type=int, default=0, help="seed of the frame content")
    p.add_argument("--drop", type=int, action="append", default=[], metavar="I",
                   help="never set the key of flat frame I, a missed trigger (repeatable)")
    p.add_argument("--arm-for", type=float, metavar="S",
                   help="create OUTPUT in place and hold it unreadable (not yet SWMR) for "
                        "S seconds before the scan, like a detector being armed")
    p.add_argument("--gate", metavar="FILE",
                   help="wait until FILE exists: while armed (--arm-for), else before "
                        "frame --gate-after, else before setting the finished flag")
    p.add_argument("--gate-after", type=int, action="append", metavar="N",
                   help="with --gate: write N frames, then wait for the gate (repeatable: "
                        "each stop but the last removes FILE, to wait for a new release)")
    p.set_defaults(func=cmd_simulate)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def cmd_simulate(args: argparse.Namespace) -> int:
    # a plain kill ends the writer like Ctrl-C, so the file is closed on the way out
    signal.signal(signal.SIGTERM, _interrupt)
    t0 = time.monotonic()
    try:
        n = simulate(args.output, args.scan, args.frame, args.rate, writers=args.writers,
                     writer_lag=args.writer_lag, snake=args.snake, stall_after=args.stall_after,
                     stall_for=args.stall_for, growing=args.growing, dtype=args.dtype,
                     finished_shape=args.finished_shape, chunk_frames=args.chunk_frames,
                     compression=args.compression, seed=args.seed, drop=tuple(args.drop),
                     arm_for=args.arm_for, gate=args.gate,
                     gate_after=None if args.gate_after is None else tuple(args.gate_after),
                     overwrite=args.overwrite)
    except KeyboardInterrupt:
        print(f"framebag: simulate stopped; {args.output} is left unfinished", file=sys.stderr)
        return 130
    wall = time.monotonic() - t0
    if not getattr(args, "quiet", False):  # -q: no summary line
        print(f"framebag: simulated {n} frames in {wall:.2f} s ({n / wall:.0f} frames/s) "
              f"into {args.output}", flush=True)
    return 0
