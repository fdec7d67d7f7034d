"""What a worker process needs set before it runs framebag's numpy: glibc's malloc thresholds.

dask's nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536``
(``distributed.nanny.pre-spawn-environ``). That pins glibc's mmap threshold at
128 KiB and gives every freed page above 64 KiB of heap straight back: each
larger array (a read slab, an FFT temporary) is then a fresh mmap or brk, paid
for with a page fault per 4 KiB. A per-frame ``abs(rfft2(frame)).max()`` of a
256x256 frame took 1.0-1.4 ms that way on the 2-core test VM, 0.26-0.28 ms
with the thresholds below, and 0.47-0.50 ms with glibc's own defaults
(docs/benchmarks.md).

The thresholds are set at run time with ``mallopt`` (through ctypes), which
overrides whatever the environment said when the process started (measured:
a process started with ``MALLOC_TRIM_THRESHOLD_=65536`` and tuned with
``mallopt`` runs the FFT as fast as one started with no such setting and tuned).
So it reaches every worker a run uses, whoever started it -- a local cluster,
SLURM/PBS/SGE jobs, an ``address`` scheduler, a ``client=`` of the user's --
through a :class:`distributed.WorkerPlugin` that the engine registers once per
client: the scheduler hands it to workers that join later, too. It is done by
hand because neither dask nor distributed offers it (the nanny can only set the
environment of the processes it spawns itself).

The same plugin quiets one record distributed logs in a worker as it closes: a
heartbeat that was on its way when the worker's connections closed fails, and is
logged at ERROR with a traceback ("Failed to communicate with scheduler during
heartbeat"), under load at the end of a run that went well (the README's first
Python example showed it). :class:`QuietHeartbeatAtClose` drops that record only
while no worker in the process is running any more; a heartbeat failing while one
runs (a scheduler that went away) is logged as before.

A worker that runs in the driver's own process (``LocalCluster(processes=False)``)
tunes that process. Where glibc is absent (macOS, musl), tuning is a no-op with a
debug log.
``FRAMEBAG_WORKER_TUNING=0`` in the driver's environment turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
from typing import Any

__all__ = ["MALLOC", "tune_process", "mmapped", "tune_workers", "WorkerTuning",
           "QuietHeartbeatAtClose", "quiet_heartbeat_at_close"]

log = logging.getLogger("framebag")

#: glibc's mallopt parameters and the values framebag sets: arrays up to 16 MiB come from
#: the heap, and at most 32 MiB of free heap is kept, so per-frame temporaries are reused
MALLOC = {"M_MMAP_THRESHOLD": 16 << 20, "M_TRIM_THRESHOLD": 32 << 20}
_PARAM = {"M_TRIM_THRESHOLD": -1, "M_MMAP_THRESHOLD": -3}  # glibc's malloc.h

PLUGIN_NAME = "framebag-worker-tuning"


_libc: Any = None
_tuned = False
_lock = threading.Lock()


def _glibc() -> Any:
    """This process's glibc, or None when the C library is another one."""
    global _libc
    if _libc is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
            libc.gnu_get_libc_version  # noqa: B018 - glibc only
            libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            libc.malloc.restype = ctypes.c_void_p
            libc.malloc.argtypes = [ctypes.c_size_t]
            libc.free.argtypes = [ctypes.c_void_p]
            _libc = libc
        except (OSError, AttributeError):
            _libc = False
    return _libc or None


def tune_process() -> bool:
    """Set :data:`MALLOC` in this process with ``mallopt``; once, idempotent.

    True when the thresholds are in force (now or from an earlier call), False
    where this is not glibc or glibc refused a value.
    """
    global _tuned
    with _lock:
        if _tuned:
            return True
        libc = _glibc()
        if libc is None:
            log.debug("framebag: no glibc in this process; malloc thresholds left as they are")
            return False
        ok = all(libc.mallopt(_PARAM[k], v) == 1 for k, v in MALLOC.items())
        if not ok:
            log.debug("framebag: glibc's mallopt refused %s", MALLOC)
        _tuned = ok
        return ok


def mmapped(nbytes: int) -> bool | None:
    """Whether glibc serves a ``malloc(nbytes)`` in this process by mmap now (None: no glibc).

    The read-back of :func:`tune_process`: glibc marks a chunk it mmapped with the
    ``IS_MMAPPED`` bit (2) of the size word just before the pointer it returns. Under
    dask's nanny environment a 1 MiB block is mmapped; once tuned it is not. (A count
    of mmapped blocks, ``mallinfo2().hblks``, is no read-back: another thread of a
    worker frees or maps blocks of its own meanwhile.)
    """
    libc = _glibc()
    if libc is None:
        return None
    p = libc.malloc(nbytes)
    try:
        return bool(ctypes.c_size_t.from_address(p - ctypes.sizeof(ctypes.c_size_t)).value & 2)
    finally:
        libc.free(p)


try:
    from distributed import WorkerPlugin as _WorkerPlugin
except ImportError:  # pragma: no cover - distributed is a dependency
    _WorkerPlugin = object  # type: ignore[assignment,misc]


class QuietHeartbeatAtClose(logging.Filter):
    """Drops distributed's "Failed to communicate with scheduler during heartbeat" record
    once every worker of this process is closing (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Failed to communicate with scheduler during "
                                          "heartbeat"):
            return True
        try:
            from distributed.worker import WORKER_ANY_RUNNING, Worker

            return any(w.status in WORKER_ANY_RUNNING for w in list(Worker._instances))
        except Exception:  # noqa: BLE001 - another distributed: keep the record
            return True


def quiet_heartbeat_at_close() -> None:
    """Put :class:`QuietHeartbeatAtClose` on distributed's worker logger; once per process."""
    logger = logging.getLogger("distributed.worker")
    if not any(isinstance(f, QuietHeartbeatAtClose) for f in logger.filters):
        logger.addFilter(QuietHeartbeatAtClose())


class WorkerTuning(_WorkerPlugin):  # type: ignore[misc,valid-type]
    """Applies :func:`tune_process` in each worker process, now and when a worker joins,
    and :func:`quiet_heartbeat_at_close`."""

    name = PLUGIN_NAME
    idempotent = True  # registered again with the same name: a no-op on workers that have it

    def setup(self, worker: Any) -> None:
        tune_process()
        quiet_heartbeat_at_close()


_registered: set[tuple[str, str]] = set()


def tune_workers(client: Any) -> None:
    """Register :class:`WorkerTuning` on ``client``'s scheduler, once per client.

    The first run on a client pays one round trip to the scheduler and its
    workers; later runs on it pay nothing. Never fails a run: a scheduler that
    refuses the plugin leaves the workers as they are, with a debug log.
    """
    if os.environ.get("FRAMEBAG_WORKER_TUNING", "1").strip() in ("0", "false", "no", "off"):
        return
    try:
        key = (str(client.id), str(client.scheduler.address))
    except AttributeError:
        key = (str(id(client)), "")
    if key in _registered:
        return
    try:
        register = getattr(client, "register_plugin", None) or client.register_worker_plugin
        register(WorkerTuning(), name=PLUGIN_NAME)
    except Exception:  # noqa: BLE001 - tuning is for speed only; the run goes on without it
        log.debug("framebag: could not register the worker tuning plugin", exc_info=True)
        return
    _registered.add(key)
