"""Cluster lifecycle: starting a profile's cluster, waiting for its workers, stopping it.

:func:`start_client` starts the cluster a :class:`~framebag.profiles.Profile`
describes (found and validated by :mod:`framebag.profiles`) and yields a
connected ``distributed.Client``; :func:`cluster` is the same for users, to
share one cluster between several runs. What this module adds to dask and
dask-jobqueue, because they do not do it:

- a bounded wait for the first worker that explains itself (job ids, log
  directory, usual causes, SLURM's reason for a pending job) instead of a run
  that hangs on a pending job;
- a ledger of every job submitted, so that every one is cancelled on exit,
  including after errors, Ctrl-C and SIGTERM (and Ctrl-C raises KeyboardInterrupt
  again: importing dask-jobqueue 0.9 turns it into a silent ``sys.exit()``);
- local worker processes that do not re-run the user's ``__main__``
  (:func:`workers_skip_main`).

One module of about 500 lines because starting, waiting and stopping share one
ledger of jobs and one cluster object; the waiting (SLURM's reasons, the
messages) is most of it.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import FramebagError
from .profiles import LOOPBACK, Profile, cluster_class, cluster_options, load, override

__all__ = ["cluster", "start_client", "make_cluster", "job_script", "workers_skip_main",
           "dashboard_link"]

log = logging.getLogger("framebag")


def _security(value: Any) -> Any:
    """The ``security=`` argument for the cluster class (a mapping becomes a Security)."""
    if isinstance(value, dict):
        from distributed.security import Security

        return Security(**{k: os.path.expanduser(v) if isinstance(v, str) else v
                           for k, v in value.items()})
    return value or None



# starting --------------------------------------------------------------------------


class _Ledger:
    """Every job a cluster submitted or failed to submit, so none outlives framebag."""

    def __init__(self) -> None:
        self.submitted: list[str] = []
        self.closed: set[str] = set()
        self.errors: list[BaseException] = []
        self.lock = threading.Lock()

    def open_ids(self) -> list[str]:
        with self.lock:
            return [j for j in self.submitted if j not in self.closed]


def _recording(job_cls: type, ledger: _Ledger) -> type:
    """A subclass of dask-jobqueue's ``job_cls`` that writes what it submits into ``ledger``."""

    from distributed.core import Status

    class Recorded(job_cls):  # type: ignore[misc, valid-type]
        async def start(self) -> None:
            # A refused submission is recorded, not raised: raised, it would only reach
            # tornado's log as a traceback; start_client reports it in one sentence.
            try:
                await super().start()
            except Exception as exc:
                ledger.errors.append(exc)
                self.status = Status.running  # for SpecCluster: started (and closed later)
            finally:
                if self.job_id:
                    with ledger.lock:
                        ledger.submitted.append(str(self.job_id))

        async def close(self) -> None:
            await super().close()
            self.status = Status.closed
            if self.job_id:
                with ledger.lock:
                    ledger.closed.add(str(self.job_id))

    Recorded.__name__ = Recorded.__qualname__ = job_cls.__name__
    return Recorded


def make_cluster(prof: Profile, ledger: _Ledger | None = None) -> Any:
    """Create the profile's cluster object (scheduler running, no job submitted yet)."""
    if prof.cluster == "address":
        raise FramebagError(f"profile {str(prof.source)!r} connects to {prof.address}; "
                            "it has no cluster to create")
    cls = cluster_class(prof.cluster)
    opts = cluster_options(prof)
    if "security" in opts:
        opts["security"] = _security(opts["security"])
        if opts["security"] is True and opts.get("shared_temp_directory"):
            # dask-jobqueue writes the workers' certificates there but does not create it
            shared = Path(os.path.expanduser(str(opts["shared_temp_directory"])))
            shared.mkdir(mode=0o700, parents=True, exist_ok=True)
    if prof.is_batch and ledger is not None:
        opts["job_cls"] = _recording(cls.job_cls, ledger)
    import dask

    # An adaptive cluster scales on the work it sees; with the scheduler's queuing
    # (worker-saturation), the tasks it holds back are the bag's from_sequence roots,
    # which take no time, so short tasks looked like no work and adapt asked for no
    # second job. Without queuing every task counts.
    saturation = {"distributed.scheduler.worker-saturation": float("inf")} \
        if prof.adapt is not None else {}
    try:
        with dask.config.set(saturation):
            return cls(**opts)
    except FramebagError:
        raise
    except Exception as exc:
        raise FramebagError(
            f"profile {str(prof.source)!r}: {cls.__name__} rejected the options: "
            f"{_first_line_of_stderr(exc)}"
        ) from exc


def job_script(profile: str | os.PathLike | Profile) -> str:
    """The batch script dask-jobqueue would submit for ``profile`` (``cluster.job_script()``).

    A scheduler is started briefly, to put its real address in the script; no job
    is submitted.
    """
    prof = profile if isinstance(profile, Profile) else load(profile)
    if not prof.is_batch:
        raise FramebagError(f"profile {str(prof.source)!r} is cluster {prof.cluster!r}, "
                            "which submits no batch jobs and has no job script")
    iface = prof.options.get("interface")
    sched = dict(prof.options.get("scheduler_options") or {})
    if iface and "host" not in sched and "interface" not in sched:
        import dataclasses

        import psutil  # type: ignore[import-untyped]

        if iface not in psutil.net_if_addrs():
            # a preview on a login node or laptop without the compute network: the workers
            # keep --interface, only the scheduler address in the script is a stand-in
            log.warning("interface %s is not on this machine: the scheduler address in this "
                        "preview is 127.0.0.1; a real run must start where %s exists",
                        iface, iface)
            sched["host"] = "127.0.0.1"
            prof = dataclasses.replace(prof, options={**prof.options, "scheduler_options": sched})
    cluster = make_cluster(prof)
    try:
        return str(cluster.job_script())
    finally:
        cluster.close()


def _first_line_of_stderr(exc: BaseException) -> str:
    text = str(exc)
    if "stderr:" in text:
        text = text.split("stderr:", 1)[1]
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


#: SLURM reasons for a pending job that no waiting clears: the job asks for what the
#: partition, the nodes or the account can never give (``squeue``'s REASON column)
NEVER_STARTS = {
    "PartitionConfig": "the job asks for more than any node of the partition has (cores, "
                       "memory or nodes)",
    "BadConstraints": "the job's constraints can never be met",
    "PartitionNodeLimit": "the job asks for more nodes than the partition allows",
    "PartitionTimeLimit": "the walltime is above the partition's time limit",
    "InvalidAccount": "the account is not valid",
    "InvalidQOS": "the QOS is not valid",
    "QOSMaxWallDurationPerJobLimit": "the walltime is above the QOS's limit",
    "QOSMaxCpuPerJobLimit": "the job asks for more cores than the QOS allows",
    "QOSMaxMemoryPerJob": "the job asks for more memory than the QOS allows",
}

#: seconds between "still waiting" lines while no worker has connected
DEFAULT_REPORT_EVERY = 15.0


def _queue_states(kind: str, ids: list[str]) -> dict[str, tuple[str, str]] | None:
    """SLURM ``(state, reason)`` of ``ids`` (ended jobs are absent); ``None`` where we cannot ask.

    PBS and the other kinds give no reason column this cheaply; they get ``None``.
    """
    if kind != "slurm" or not ids:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-o", "%i %T %r", "-j", ",".join(ids)],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0 and "Invalid job id" not in out.stderr:
        return None
    states = {}
    for line in out.stdout.splitlines():
        parts = line.split(None, 2)
        if len(parts) >= 2:
            states[parts[0]] = (parts[1], parts[2].strip() if len(parts) > 2 else "")
    return states


def _shown(ids: list[str], states: dict[str, tuple[str, str]]) -> str:
    """``12 PENDING (Resources), 13 RUNNING`` for the jobs in ``ids``."""
    out = []
    for j in ids:
        state, reason = states.get(j, ("", ""))
        if not state:
            out.append(j)
        elif reason and reason != "None":
            out.append(f"{j} {state} ({reason})")
        else:
            out.append(f"{j} {state}")
    return ", ".join(out) or "none"


def _wait_first_worker(client: Any, cluster: Any, prof: Profile, ledger: _Ledger,
                       timeout: float, report_every: float = DEFAULT_REPORT_EVERY) -> None:
    """Block until one worker connected; explain why not within ``timeout`` seconds.

    Every ``report_every`` seconds it logs which jobs are waiting and why (the
    scheduler's reason, where it gives one); a job pending for a reason that can
    never clear (:data:`NEVER_STARTS`) stops the wait at once.
    """
    kind = prof.cluster
    submit = cluster.job_cls.submit_command
    start = time.monotonic()
    deadline = start + timeout
    last_check = last_report = 0.0
    while True:
        if ledger.errors:
            raise FramebagError(
                f"profile {str(prof.source)!r}: submitting a job with {submit!r} failed: "
                f"{_first_line_of_stderr(ledger.errors[0])}"
            )
        try:
            client.wait_for_workers(1, timeout=0.5)
            return
        except TimeoutError:
            pass
        now = time.monotonic()
        ids = list(ledger.submitted)
        if now - last_check > 2 and ids:
            last_check = now
            states = _queue_states(kind, ids)
            _check_queue(prof, cluster, ids, states)
            if now - last_report >= report_every and now - start >= report_every:
                last_report = now
                log.warning("waiting for the first worker (%.0f s of %g s): %s job(s) %s",
                            now - start, timeout, kind, _shown(ids, states or {}))
        if now >= deadline:
            states = _queue_states(kind, ids) or {}
            raise FramebagError(_no_worker_message(
                prof, ids, cluster, f"no worker connected within {timeout:g} s; "
                f"{kind} job(s) {_shown(ids, states)}"))


def _check_queue(prof: Profile, cluster: Any, ids: list[str],
                 states: dict[str, tuple[str, str]] | None) -> None:
    """Stop the wait for the first worker when no waiting can help: every job ended, or
    every one pends for a reason that never clears (:data:`NEVER_STARTS`)."""
    kind = prof.cluster
    if states is not None and not states:
        raise FramebagError(_no_worker_message(
            prof, ids, cluster, f"{kind} job(s) {', '.join(ids)} ended before any "
            "worker connected"))
    stuck = {r for st, r in (states or {}).values() if st == "PENDING" and
             r in NEVER_STARTS}
    if stuck and all(st == "PENDING" and r in NEVER_STARTS
                     for st, r in (states or {}).values()):
        reason = sorted(stuck)[0]
        opts = cluster_options(prof)
        asked = ", ".join(f"{k} {opts[k]}" for k in ("cores", "memory", "walltime",
                                                     "queue") if opts.get(k))
        raise FramebagError(
            f"profile {str(prof.source)!r}: {kind} job(s) {_shown(ids, states or {})} "
            f"can never start: {NEVER_STARTS[reason]} (asked: {asked}); lower the "
            "options in the profile to what the nodes have (sinfo -N -l shows them)")


def _no_worker_message(prof: Profile, ids: list[str], cluster: Any, what: str) -> str:
    opts = cluster_options(prof)
    iface = opts.get("interface")
    return (
        f"profile {str(prof.source)!r}: {what}; job logs are in {opts['log_directory']}; "
        f"usual causes: the network interface (interface: {iface or 'not set'}) is not one "
        f"the compute nodes reach the scheduler on, the queue "
        f"({opts.get('queue') or 'default'}) is busy or wrong, or the Python on the compute "
        f"nodes ({opts.get('python')}) cannot import distributed"
    )


def _cancel(cluster: Any, ids: list[str]) -> None:
    if not ids:
        return
    cmd = shlex.split(cluster.job_cls.cancel_command) + ids
    try:
        subprocess.run(cmd, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("could not cancel job(s) %s with %s: %s", ", ".join(ids), cmd[0], exc)
        return
    log.info("cancelled job(s) %s", ", ".join(ids))


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Turn SIGTERM (a batch system ending the driver's job) into KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    fired: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if not fired:  # a second SIGTERM must not cut the cleanup short
            fired.append(signum)
            raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


#: the name distributed's Nanny gives the worker processes it starts
_WORKER_PROCESS = "Dask Worker process"


def workers_skip_main() -> None:
    """Let dask start local worker processes without re-running the user's script.

    multiprocessing's spawn (dask's default for local workers) re-imports the
    parent's ``__main__`` in every child, so a script that calls ``wf.run()``
    or ``Client()`` without ``if __name__ == "__main__":`` would start a cluster
    again inside each worker, which fails with "Nanny failed to start". A worker
    needs nothing from ``__main__``: distributed pickles what is defined there by
    value (cloudpickle), and framebag does the same for workflow files. So this
    drops ``__main__`` from what spawn hands to the processes a Nanny starts
    (recognised by their name), and from no other process. Called once, on
    ``import framebag``; calling it again changes nothing.
    """
    import multiprocessing.spawn as spawn

    original = spawn.get_preparation_data
    if getattr(original, "_framebag", False):
        return

    def get_preparation_data(name: str) -> dict[str, Any]:
        data = original(name)
        if str(name).startswith(_WORKER_PROCESS):
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
        return data

    get_preparation_data._framebag = True  # type: ignore[attr-defined]
    spawn.get_preparation_data = get_preparation_data


def _announce(client: Any, prof: Profile) -> None:
    import importlib.util

    link = getattr(client, "dashboard_link", "")
    if not link:
        return
    # a scheduler started here (all kinds but address) serves no dashboard without bokeh
    if prof.cluster != "address" and importlib.util.find_spec("bokeh") is None:
        print(f"framebag: no dashboard ({prof.name} profile): install bokeh, or the [plot] "
              "extra, to get one", file=sys.stderr)
        return
    print(f"framebag: dashboard {dashboard_link(prof, link)} ({prof.name} profile)",
          file=sys.stderr)


def dashboard_link(prof: Profile, link: str) -> str:
    """The dashboard link as it can be opened: dask builds it from the scheduler's host,
    but a batch profile's dashboard listens on 127.0.0.1 unless the profile names a host
    (see ``cluster_options``), so the link names 127.0.0.1 then. So does an in-process
    local cluster's (``inline``): its scheduler has no socket, and dask names the
    machine's own address instead."""
    if prof.cluster == "address":
        return link
    if prof.cluster == "local":
        opts = cluster_options(prof)
        if opts.get("processes", True) or \
                not str(opts.get("dashboard_address", "")).startswith(LOOPBACK + ":"):
            return link
    else:
        sched = cluster_options(prof).get("scheduler_options") or {}
        if not str(sched.get("dashboard_address", "")).startswith(LOOPBACK + ":"):
            return link
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(link)
    if parts.port is None:
        return link
    return urlunsplit(parts._replace(netloc=f"{LOOPBACK}:{parts.port}"))


@contextmanager
def start_client(profile: str | os.PathLike | Profile | None = None, *,
                 first_worker_timeout: float | None = None,
                 announce: bool = True,
                 report_every: float = DEFAULT_REPORT_EVERY) -> Iterator[Any]:
    """Start the profile's cluster, yield a connected ``distributed.Client``, shut it all down.

    For batch kinds the jobs of ``scale:`` (or ``adapt: minimum_jobs``, at least
    one) are submitted and the first worker is awaited for
    ``first_worker_timeout`` seconds (default: the profile's, else 600); past it,
    a :class:`FramebagError` names the job ids, the log directory and the usual
    causes; meanwhile, every ``report_every`` seconds, a warning says which jobs
    wait and why. ``adapt:`` takes over once the first worker is up. On leaving, by
    return, error, Ctrl-C or SIGTERM, every job framebag submitted is cancelled.
    The dashboard link is printed on stderr unless ``announce`` is false.
    """
    from distributed import Client

    prof = profile if isinstance(profile, Profile) else load(profile)
    timeout = float(first_worker_timeout or prof.first_worker_timeout)
    if prof.cluster == "address":
        with _address_client(prof, timeout, announce) as running:
            yield running
        return
    ledger = _Ledger()
    with _sigterm_interrupts():
        cluster = make_cluster(prof, ledger)
        client: Client | None = None
        try:
            client = Client(cluster)
            if announce:
                _announce(client, prof)
            _scale(client, cluster, prof, ledger, timeout, report_every)
            yield client
        finally:
            if client is not None:
                client.close()
            try:
                cluster.close()
            except Exception as exc:  # must not hide why we are leaving; the ledger cancels
                log.debug("closing the %s cluster failed: %r", prof.cluster, exc)
            finally:
                if prof.is_batch:
                    _cancel(cluster, ledger.open_ids())


@contextmanager
def _address_client(prof: Profile, timeout: float, announce: bool) -> Iterator[Any]:
    """A client of the running scheduler an ``address`` profile names; closed on leaving,
    the scheduler left running."""
    from distributed import Client

    try:
        client = Client(prof.address, timeout=timeout)
    except OSError as exc:
        raise FramebagError(f"profile {str(prof.source)!r}: cannot reach the scheduler at "
                            f"{prof.address}: {exc}") from exc
    try:
        if announce:
            _announce(client, prof)
        yield client
    finally:
        client.close()


def _scale(client: Any, cluster: Any, prof: Profile, ledger: _Ledger, timeout: float,
           report_every: float) -> None:
    """Scale a started cluster as its profile says; for batch kinds, submit the first
    jobs and wait for the first worker before ``adapt:`` takes over."""
    if prof.is_batch:
        if prof.adapt is not None:
            first = max(1, int(prof.adapt.get("minimum_jobs") or 0))
            cluster.scale(jobs=first)
        else:
            cluster.scale(**prof.scale)
        _wait_first_worker(client, cluster, prof, ledger, timeout, report_every)
        log.info("first worker connected; job(s) %s", ", ".join(ledger.submitted))
    elif prof.scale:
        cluster.scale(**prof.scale)
    if prof.adapt is not None:
        cluster.adapt(**prof.adapt)


@contextmanager
def cluster(profile: str | os.PathLike | None = None, *, workers: int | None = None,
            first_worker_timeout: float | None = None, announce: bool = True,
            **options: Any) -> Iterator[Any]:
    """Start a profile's cluster once for several runs: ``with framebag.cluster("slurm") as c:``.

    Yields a connected ``distributed.Client`` to pass as ``client=`` to
    :meth:`framebag.Workflow.run` and :meth:`~framebag.Workflow.run_many`, which
    then start no cluster of their own. ``profile`` is a profile name or YAML file,
    looked up as ``--profile`` is (default ``local``); ``workers`` (worker processes)
    and ``options`` (the profile's ``options:``, e.g. ``memory="8GiB"``) override it
    and are validated as the profile is, before anything starts. On leaving the
    block, by return, error, Ctrl-C or SIGTERM, the client and the cluster are closed
    and every batch job it submitted is cancelled (see :func:`start_client`)::

        with framebag.cluster("local", workers=2) as client:
            first = wf.run("a.h5", client=client)
            second = wf.run("b.h5", client=client)
    """
    prof = override(load(profile), workers=workers, **options)
    with start_client(prof, first_worker_timeout=first_worker_timeout,
                      announce=announce) as client:
        yield client
