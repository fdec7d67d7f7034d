"""One run per output: an exclusive lock on the sidecar file ``OUTPUT.lock``.

A run takes the lock before it opens anything for writing and holds it to the
end, so a second run on the same output -- plain, ``--overwrite`` or
``--resume`` -- is refused at once, naming the holder, instead of computing
everything and then colliding in HDF5 (whose own message suggests ``h5clear``,
which would corrupt a file that is being written).

Why a sidecar file and ``flock``:

- The output itself is replaced atomically by ``--overwrite`` (and by the
  repair of a crashed file on resume), so a lock on the output's inode would
  not survive the replace; the sidecar's does.
- The kernel drops an ``flock`` lock when its holder dies, even by SIGKILL, so
  a crashed run never blocks ``--resume``. On Linux NFS clients ``flock`` is
  carried out as a POSIX byte-range lock that the server arbitrates (NFSv4, or
  lockd for NFSv3), so two hosts sharing a directory exclude each other too.
- Where the file system cannot lock (an NFS mount with ``nolock``, Lustre
  without ``-o flock``) the lock falls back to the holder's PID and host
  written in the file: a holder on this host whose PID is gone is stale and
  taken over; a holder on another host cannot be checked and is refused, with
  the file named so that the user can remove it.
- Locks are per process for POSIX locks, so a second run in the same process
  (two threads, the Python API) is refused by a registry kept here.

The file holds ``PID HOST`` of the holder, for the message, and is removed
when the run ends. Python's ``fcntl`` is the library that does the locking;
what is written here is only the stale-holder policy, which no library in the
project's dependencies provides.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import threading
from pathlib import Path
from types import TracebackType

from .errors import FramebagError

__all__ = ["OutputLock", "lock_path"]

_held: set[str] = set()
_held_lock = threading.Lock()
_NO_LOCKING = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def lock_path(output: str | os.PathLike) -> Path:
    """The sidecar lock file of ``output``: ``OUTPUT.lock`` beside the file it really is
    (symlinks resolved, so a run through a link to an output meets the same lock)."""
    p = Path(os.path.realpath(output))
    return p.with_name(p.name + ".lock")


def _holder(path: Path) -> tuple[int, str] | None:
    try:
        pid, host = path.read_text().split(maxsplit=1)
        return int(pid), host.strip()
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    """Exclusive hold of one output path for one run; a context manager.

    :meth:`acquire` raises :class:`FramebagError` naming the output and the
    holder (PID, host) when another run holds it. It never waits.
    """

    def __init__(self, output: str | os.PathLike) -> None:
        self.output = Path(output)
        self.path = lock_path(output)
        self._fd: int | None = None
        self._key = os.path.realpath(self.path)

    def acquire(self) -> OutputLock:
        with _held_lock:
            if self._key in _held:
                raise self._refusal((os.getpid(), socket.gethostname()))
            _held.add(self._key)
        try:
            self._acquire()
        except BaseException:
            with _held_lock:
                _held.discard(self._key)
            raise
        return self

    def _acquire(self) -> None:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise FramebagError(
                    f"cannot create the lock file {str(self.path)!r} of output "
                    f"{str(self.output)!r}: {exc.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                    raise self._refusal(_holder(self.path)) from None
                if exc.errno not in _NO_LOCKING:
                    raise
                self._acquire_by_pid()
                return
            # the file may have been removed by its last holder between our open and
            # our lock: then we hold a lock on a name nobody else can see; try again
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                self._write_holder_or_give_up(fd)
                return
            os.close(fd)

    def _acquire_by_pid(self) -> None:
        """No file locking here: the PID and host in the file are the lock."""
        holder = _holder(self.path)
        if holder is not None:
            pid, host = holder
            if host != socket.gethostname() or _alive(pid):
                raise self._refusal(holder, unlockable=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        self._fd = fd
        self._write_holder_or_give_up(fd)

    def _write_holder_or_give_up(self, fd: int) -> None:
        """Write who holds the lock; if the disk is full, leave no lock file behind."""
        try:
            self._write_holder(fd)
        except OSError as exc:
            self._fd = None
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            os.close(fd)
            raise FramebagError(
                f"cannot write the lock file {str(self.path)!r} of output "
                f"{str(self.output)!r}: {exc.strerror}") from None

    @staticmethod
    def _write_holder(fd: int) -> None:
        text = f"{os.getpid()} {socket.gethostname()}\n".encode()
        # truncating to zero makes ext4 (auto_da_alloc) write the file out when it is
        # closed, 5-50 ms on the test VM at every run's end: only a stale holder's
        # longer text needs it
        if os.fstat(fd).st_size > len(text):
            os.ftruncate(fd, len(text))
        os.pwrite(fd, text, 0)

    def _refusal(self, holder: tuple[int, str] | None, unlockable: bool = False) -> FramebagError:
        who = f"PID {holder[0]} on host {holder[1]}" if holder else "a process still starting"
        tail = (f"; if that run is gone, remove {str(self.path)!r}" if unlockable
                else "; wait for it to end, or choose another -o")
        return FramebagError(
            f"output file {str(self.output)!r} is in use by another framebag run "
            f"({who}){tail}")

    def release(self) -> None:
        """Give the output up: the lock file is removed, then unlocked."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(self._fd)  # drops the flock
        self._fd = None
        with _held_lock:
            _held.discard(self._key)

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
