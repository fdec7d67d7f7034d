"""Preload for the worker processes of a local cluster: Ctrl-C is the driver's.

Ctrl-C in a terminal sends SIGINT to the whole foreground process group, and the
worker processes a ``local`` profile starts belong to it. Each would raise its own
KeyboardInterrupt and print a traceback, while the driver already stops the run,
commits and shuts the cluster down (which ends the workers). dask has no option for
this, so ``cluster_options`` names this module as the workers' ``preload``, and a
worker ignores SIGINT from its start. Workers framebag did not start (a batch
profile's jobs, ``cluster: address``, a user's ``client=``) are left alone.
"""

from __future__ import annotations

import signal
import threading
from typing import Any


def dask_setup(worker: Any) -> None:
    """Ignore SIGINT in this worker process (its main thread runs the worker's loop)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
