"""Cluster profiles: finding, validating and resolving the profile a run uses.

A profile is a YAML file::

    cluster: slurm          # local | slurm | pbs | sge | lsf | htcondor | address
    scale: {jobs: 2}        # or adapt: {minimum_jobs: 0, maximum_jobs: 20}
    options:                # keyword arguments of the cluster class, validated
      cores: 8
      memory: 32GiB
      walltime: "01:00:00"  # required by every batch kind that has one
    python: /path/to/python           # optional: the Python on the compute nodes
    job_script_prologue: [...]        # optional: shell lines run before the worker starts
    first_worker_timeout: 600         # optional: seconds to wait for the first worker

``--profile NAME|FILE`` is looked up as an explicit path, then in
``$FRAMEBAG_PROFILES``, ``./cluster_profiles``, ``~/.config/framebag/profiles``
and the profiles packaged with framebag, in that order.

The cluster classes are dask's ``LocalCluster`` and dask-jobqueue's
``SLURMCluster``, ``PBSCluster``, ``SGECluster``, ``LSFCluster`` and
``HTCondorCluster``. What this module adds, because they do not do it:

- validation before anything starts, with the valid option names derived from
  the classes' own signatures (so they follow the installed dask-jobqueue), and
  errors instead of dask-jobqueue's FutureWarnings for renamed keywords;
- no silent walltime default (dask-jobqueue falls back to 30 minutes).

Nothing here starts a cluster or submits a job: :mod:`framebag.clusters` does,
from the :class:`Profile` this module returns.

One module of about 550 lines because it is one job, a profile from YAML to the
cluster class's keyword arguments: every check reads the same cluster classes'
signatures and shares the same wording of errors.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import FramebagError

__all__ = ["Profile", "find", "load", "search_path", "list_profiles", "cluster_class",
           "cluster_options", "valid_options", "resolved", "override", "KINDS"]

log = logging.getLogger("framebag")
DEFAULT = "local"

#: cluster kind -> dask-jobqueue class name (``None``: not a batch system)
KINDS: dict[str, str | None] = {
    "local": None,
    "slurm": "SLURMCluster",
    "pbs": "PBSCluster",
    "sge": "SGECluster",
    "lsf": "LSFCluster",
    "htcondor": "HTCondorCluster",
    "address": None,
}

#: keywords dask-jobqueue renamed (it still accepts the old ones with a FutureWarning)
RENAMED = {
    "job_extra": "job_extra_directives",
    "env_extra": "job_script_prologue",
    "extra": "worker_extra_args",
    "header_skip": "job_directives_skip",
}

#: keywords dask-jobqueue rejects at the top level and wants inside ``scheduler_options``
SCHEDULER_ONLY = ("dashboard_address", "host")

#: parameters of the cluster and job classes that are not user options
_INTERNAL = {"self", "scheduler", "name", "job_cls", "loop", "asynchronous", "n_workers",
             "kwargs", "args", "job_kwargs", "base_class_kwargs"}

TOP_KEYS = ("cluster", "options", "scale", "adapt", "address", "python",
            "job_script_prologue", "first_worker_timeout")
DEFAULT_FIRST_WORKER_TIMEOUT = 600.0
DEFAULT_LOG_DIRECTORY = "framebag-logs"


@dataclass
class Profile:
    """A validated cluster profile: what to start, how to scale it, and where it came from."""

    name: str
    source: Path
    cluster: str
    options: dict[str, Any] = field(default_factory=dict)
    scale: dict[str, Any] = field(default_factory=dict)
    adapt: dict[str, Any] | None = None
    address: str | None = None
    first_worker_timeout: float = DEFAULT_FIRST_WORKER_TIMEOUT

    @property
    def is_batch(self) -> bool:
        """True for the dask-jobqueue kinds (workers run inside batch jobs)."""
        return KINDS.get(self.cluster) is not None


# finding -------------------------------------------------------------------------


def search_path() -> list[tuple[str, Path]]:
    """Where profiles are looked up, in order, with a label for each place."""
    places: list[tuple[str, Path]] = []
    env = os.environ.get("FRAMEBAG_PROFILES")
    if env:
        places += [("$FRAMEBAG_PROFILES", Path(p)) for p in env.split(os.pathsep) if p]
    places.append(("./cluster_profiles", Path.cwd() / "cluster_profiles"))
    config = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    places.append(("user config", config / "framebag" / "profiles"))
    places.append(("packaged", Path(str(resources.files("framebag.cluster_profiles")))))
    return places


def find(name: str | os.PathLike | None) -> Path:
    """The file of profile ``name`` (a path, or a name looked up in :func:`search_path`)."""
    name = os.fspath(name or DEFAULT)
    as_path = Path(name)
    if as_path.suffix in (".yaml", ".yml") or os.sep in name:
        if as_path.is_file():
            return as_path
        raise FramebagError(f"profile file {name!r} does not exist")
    for _, place in search_path():
        for ext in (".yaml", ".yml"):
            candidate = place / f"{name}{ext}"
            if candidate.is_file():
                return candidate
    import difflib

    names = sorted({n for n, *_ in list_profiles()})
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    places = ", ".join(dict.fromkeys(str(p) for _, p in search_path()))
    raise FramebagError(
        f"no profile named {name!r}; {hint}the profiles are {', '.join(names) or 'none'} "
        f"(looked in {places})"
    )


def list_profiles() -> list[tuple[str, str, Path, bool]]:
    """Every profile file on the search path: ``(name, place label, path, shadowed)``.

    ``shadowed`` is true when a profile of the same name earlier in the search
    path wins over this one.
    """
    seen: set[str] = set()
    files: set[Path] = set()
    out: list[tuple[str, str, Path, bool]] = []
    for label, place in search_path():
        if not place.is_dir():
            continue
        for path in sorted(place.iterdir()):
            if path.suffix not in (".yaml", ".yml") or not path.is_file():
                continue
            if path.resolve() in files:  # e.g. ./cluster_profiles of an editable install
                continue
            files.add(path.resolve())
            out.append((path.stem, label, path, path.stem in seen))
            seen.add(path.stem)
    return out


# loading and validating ----------------------------------------------------------------


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise FramebagError(f"profile {str(path)!r} is not valid YAML{where}: {problem}") from None


def load(name: str | os.PathLike | None) -> Profile:
    """Find, parse and validate a profile; nothing is started and nothing is submitted."""
    path = find(name)
    where = f"profile {str(path)!r}"
    raw = _read_yaml(path)
    if not isinstance(raw, dict) or "cluster" not in raw:
        raise FramebagError(f"{where} must be a mapping with a 'cluster:' key")
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise FramebagError(
            f"{where} has unknown key(s) {', '.join(map(str, unknown))}; "
            f"valid keys are {', '.join(TOP_KEYS)}"
        )
    kind = str(raw["cluster"])
    if kind not in KINDS:
        raise FramebagError(
            f"{where}: unknown cluster kind {kind!r}; valid kinds are {', '.join(KINDS)}"
        )
    options = raw.get("options") or {}
    if not isinstance(options, dict):
        raise FramebagError(f"{where}: 'options:' must be a mapping of option: value")
    timeout = raw.get("first_worker_timeout", DEFAULT_FIRST_WORKER_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise FramebagError(f"{where}: first_worker_timeout must be a positive number of seconds")
    if kind == "address":
        return _address_profile(where, path, raw, float(timeout))
    options = _options(where, kind, raw, dict(options))
    scale, adapt = _scaling(where, kind, raw)
    return Profile(path.stem, path, kind, options, scale, adapt, None, float(timeout))


def _address_profile(where: str, path: Path, raw: dict[str, Any], timeout: float) -> Profile:
    """A profile of kind ``address``: a running scheduler's address and nothing else."""
    extra = sorted(k for k in raw if k not in ("cluster", "address", "first_worker_timeout"))
    if not raw.get("address"):
        raise FramebagError(f"{where}: cluster 'address' needs address: tcp://host:8786")
    if extra:
        raise FramebagError(
            f"{where}: cluster 'address' connects to a running scheduler and takes no "
            f"{', '.join(extra)}"
        )
    return Profile(path.stem, path, "address", {}, {}, None, str(raw["address"]), timeout)


def _options(where: str, kind: str, raw: dict[str, Any], options: dict[str, Any]
             ) -> dict[str, Any]:
    """The profile's ``options:`` with its top-level ``python``/``job_script_prologue``,
    every key checked against the cluster class of ``kind``."""
    for key in ("python", "job_script_prologue"):
        if key in raw:
            if kind == "local":
                raise FramebagError(f"{where}: {key!r} is for batch systems, not cluster 'local'")
            if key in options:
                raise FramebagError(f"{where}: give {key!r} once, at the top level or in options")
            options[key] = raw[key]
    if isinstance(options.get("job_script_prologue"), str):
        options["job_script_prologue"] = [options["job_script_prologue"]]
    valid = valid_options(kind)
    for key in options:
        _check_option(where, kind, str(key), valid)
    if "security" in options:
        _check_security(where, options["security"])
    if kind != "local":
        _check_batch(where, kind, options, valid)
    return options


def _scaling(where: str, kind: str, raw: dict[str, Any]
             ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The profile's ``(scale, adapt)``, checked; a batch profile with neither scales to
    one job."""
    scale = raw.get("scale")
    adapt = raw.get("adapt")
    if scale is not None and adapt is not None:
        raise FramebagError(f"{where}: give either 'scale:' or 'adapt:', not both")
    if scale is not None:
        scale = _check_mapping(where, "scale", scale, _scale_keys(kind))
        if "workers" in scale:
            scale["n"] = scale.pop("workers")
    elif kind != "local" and adapt is None:
        scale = {"jobs": 1}
    if adapt is not None:
        adapt = _check_mapping(where, "adapt", adapt, _adapt_keys(kind))
        low = adapt.get("minimum_jobs", adapt.get("minimum", 0))
        high = adapt.get("maximum_jobs", adapt.get("maximum"))
        if high is not None and low > high:
            raise FramebagError(f"{where}: adapt minimum {low} is above its maximum {high}")
    return dict(scale or {}), adapt


def cluster_class(kind: str) -> Any:
    """The dask (``local``) or dask-jobqueue class that starts clusters of ``kind``."""
    if kind == "local":
        from distributed import LocalCluster

        return LocalCluster
    import dask_jobqueue

    _restore_ctrl_c()
    return getattr(dask_jobqueue, KINDS[kind])  # type: ignore[arg-type]


def _restore_ctrl_c() -> None:
    """Undo dask-jobqueue 0.9's import-time SIGINT handler (``sys.exit()``, status 0).

    ``dask_jobqueue.runner`` replaces Ctrl-C's KeyboardInterrupt by a clean exit, so an
    interrupted run would look successful; framebag wants the KeyboardInterrupt back.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    handler = signal.getsignal(signal.SIGINT)
    if getattr(handler, "__module__", "").startswith("dask_jobqueue"):
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _params(func: Any) -> set[str]:
    return {name for name, p in inspect.signature(func).parameters.items()
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def valid_options(kind: str) -> set[str]:
    """Option names a profile of ``kind`` accepts, read from the installed classes' signatures."""
    cls = cluster_class(kind)
    if kind == "local":
        from distributed import Nanny, Worker

        names = _params(cls.__init__) | _params(Worker.__init__) | _params(Nanny.__init__)
        return names - {"self", "scheduler_ip", "scheduler_file", "loop", "asynchronous"}
    from dask_jobqueue.core import Job

    names = _params(cls.__init__) | _params(Job.__init__) | _params(cls.job_cls.__init__)
    names -= _INTERNAL | set(RENAMED) | set(SCHEDULER_ONLY)
    if "account" in names:  # SLURM and PBS renamed project -> account; SGE and LSF keep project
        names.discard("project")
    return names


def _check_option(where: str, kind: str, key: str, valid: set[str]) -> None:
    if key in valid:
        return
    if key in RENAMED and kind != "local":
        raise FramebagError(f"{where}: option {key!r} was renamed; write {RENAMED[key]!r}")
    if key == "project" and "account" in valid:
        raise FramebagError(f"{where}: option 'project' was renamed; write 'account'")
    if key in SCHEDULER_ONLY and kind != "local":
        raise FramebagError(
            f"{where}: option {key!r} belongs to the scheduler; write it as "
            f"scheduler_options: {{{key}: ...}}"
        )
    if key == "n_workers" and kind != "local":
        raise FramebagError(f"{where}: option 'n_workers' is set by scale: {{jobs: N}} instead")
    raise FramebagError(
        f"{where}: unknown option {key!r} for cluster {kind!r}; "
        f"valid options are {', '.join(sorted(valid))}"
    )


def _check_batch(where: str, kind: str, options: dict[str, Any], valid: set[str]) -> None:
    import dask

    job_cls = cluster_class(kind).job_cls
    config = options.get("config_name") or job_cls.config_name
    for needed in ("cores", "memory"):
        if options.get(needed) is None and dask.config.get(f"jobqueue.{config}.{needed}",
                                                            None) is None:
            raise FramebagError(f"{where}: option {needed!r} is required for cluster {kind!r} "
                                "(per job, for example cores: 8, memory: 32GiB)")
    if "walltime" in valid and not options.get("walltime"):
        raise FramebagError(
            f"{where}: option 'walltime' is required for cluster {kind!r} "
            "(for example walltime: \"01:00:00\"; there is no silent default)"
        )
    if "walltime" in options and not isinstance(options["walltime"], str):
        raise FramebagError(
            f"{where}: option 'walltime' was read as the number {options['walltime']!r} "
            "(YAML reads 1:00:00 as 3600); quote it: walltime: \"01:00:00\""
        )
    if "memory" in options:
        from dask.utils import parse_bytes

        try:
            parse_bytes(options["memory"])
        except (ValueError, TypeError):
            raise FramebagError(
                f"{where}: option 'memory' {options['memory']!r} is not a size like 32GiB"
            ) from None


def _security_fields() -> tuple[str, ...]:
    from distributed.security import Security

    return tuple(k for k in Security.__slots__ if k != "extra_conn_args")


def _check_security(where: str, value: Any) -> None:
    """``security:`` is ``true`` (self-signed certificates made for this run) or a mapping
    of ``distributed.Security`` fields (``tls_ca_file``, ``tls_client_cert``, ...)."""
    if value is True:
        try:
            import cryptography  # noqa: F401
        except ImportError:
            raise FramebagError(
                f"{where}: security: true makes self-signed TLS certificates, which needs the "
                "'cryptography' package: pip install cryptography (or give certificate files "
                "as security: {tls_ca_file: ..., tls_client_cert: ..., ...})"
            ) from None
        return
    if value is False or value is None:
        return
    fields = _security_fields()
    if not isinstance(value, dict):
        raise FramebagError(f"{where}: option 'security' must be true or a mapping of "
                            f"{', '.join(fields)}, not {value!r}")
    bad = sorted(set(map(str, value)) - set(fields))
    if bad:
        raise FramebagError(f"{where}: unknown security key {bad[0]!r}; valid keys are "
                            f"{', '.join(fields)}")
    for key, path in value.items():
        if key.endswith(("_file", "_key", "_cert")) and not os.path.isfile(
                os.path.expanduser(str(path))):
            raise FramebagError(f"{where}: security {key}: {str(path)!r} is not a file")



def _scale_keys(kind: str) -> set[str]:
    return (_params(cluster_class(kind).scale) - {"self"}) | ({"workers"} if kind == "local"
                                                              else set())


def _adapt_keys(kind: str) -> set[str]:
    from distributed.deploy.adaptive import Adaptive
    from distributed.deploy.adaptive_core import AdaptiveCore

    cls = cluster_class(kind)
    names = _params(cls.adapt) | _params(Adaptive.__init__) | _params(AdaptiveCore.__init__)
    return names - {"self", "cluster", "Adaptive", "worker_key"}


_COUNTS = {"jobs", "n", "workers", "minimum", "maximum", "minimum_jobs", "maximum_jobs",
           "wait_count"}


def _check_mapping(where: str, key: str, value: Any, valid: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FramebagError(f"{where}: '{key}:' must be a mapping like {{jobs: 2}}")
    bad = sorted(set(map(str, value)) - valid)
    if bad:
        raise FramebagError(
            f"{where}: unknown {key} key {bad[0]!r}; valid keys are {', '.join(sorted(valid))}"
        )
    for name, count in value.items():
        if name in _COUNTS and (isinstance(count, bool) or not isinstance(count, int)
                                or count < 0):
            raise FramebagError(f"{where}: {key} {name} must be a whole number >= 0, "
                                f"not {count!r}")
    return dict(value)


# resolving -------------------------------------------------------------------------


def cluster_options(prof: Profile) -> dict[str, Any]:
    """The keyword arguments the cluster class is called with: the profile's options + defaults.

    Batch kinds get ``python`` (the interpreter running framebag, or ``python``
    from ``PATH`` when a ``job_script_prologue`` sets up the environment), an
    absolute ``log_directory`` (``./framebag-logs``) and a dashboard on a free port.
    Local clusters get one single-threaded worker process per core.

    Whatever answers on the network runs code as the user (a dask scheduler accepts
    any task), so the scheduler of a local cluster and the dashboard of every cluster
    started here listen on 127.0.0.1 only, unless the profile names a ``host`` or
    a ``dashboard_address`` with a host (see docs/hpc.md for TLS).
    """
    opts = dict(prof.options)
    if prof.cluster == "local":
        opts.setdefault("n_workers", os.cpu_count() or 1)
        opts.setdefault("threads_per_worker", 1)
        opts.setdefault("processes", True)
        if not opts.get("interface") and (opts["processes"] or opts.get("protocol")):
            opts.setdefault("host", LOOPBACK)  # (no processes: in-process comms, no socket)
        if opts["processes"]:  # Ctrl-C reaches the workers too: only the driver answers it
            preload = opts.get("preload") or []
            preload = [preload] if isinstance(preload, str) else list(preload)
            opts["preload"] = [*preload, "framebag.worker_signals"]
        host = str(opts.get("host") or "").split("://")[-1]
        opts["dashboard_address"] = _with_host(opts.get("dashboard_address", ":8787"),
                                               host or LOOPBACK)
        return opts
    opts.setdefault("python", "python" if opts.get("job_script_prologue") else sys.executable)
    opts["log_directory"] = os.path.abspath(
        os.path.expanduser(str(opts.get("log_directory") or DEFAULT_LOG_DIRECTORY)))
    sched = dict(opts.get("scheduler_options") or {})
    sched["dashboard_address"] = _with_host(sched.get("dashboard_address", ":0"), LOOPBACK)
    opts["scheduler_options"] = sched
    return opts


LOOPBACK = "127.0.0.1"


def _with_host(address: Any, host: str) -> Any:
    """A dashboard address given as a bare port (``:8787``, ``8787``) bound to ``host``;
    one that names its host is kept."""
    text = str(address)
    if text.isdigit():
        text = f":{text}"
    if not text.startswith(":"):
        return address
    return f"[{host}]{text}" if ":" in host else f"{host}{text}"


def resolved(prof: Profile) -> dict[str, Any]:
    """The profile as framebag will use it, defaults filled in (for ``profiles show``)."""
    out: dict[str, Any] = {"cluster": prof.cluster}
    if prof.cluster == "address":
        out["address"] = prof.address
    else:
        if prof.adapt is not None:
            out["adapt"] = dict(prof.adapt)
        elif prof.scale:
            out["scale"] = dict(prof.scale)
        out["options"] = cluster_options(prof)
        for key in ("python", "job_script_prologue"):  # where the documented format has them
            if key in out["options"]:
                out[key] = out["options"].pop(key)
    if prof.is_batch or prof.cluster == "address":
        out["first_worker_timeout"] = prof.first_worker_timeout
    return out


def _check_keyword(key: str, valid: set[str]) -> None:
    """A misspelt keyword of :func:`framebag.cluster` itself, named with the right one."""
    keywords = ["workers", "first_worker_timeout", "announce"]
    near = difflib.get_close_matches(key, keywords + sorted(valid), 1)
    if near and near[0] in keywords:
        raise FramebagError(f"unknown option {key!r}; did you mean {near[0]}=... "
                            "(a keyword of framebag.cluster)?")


def override(prof: Profile, *, workers: int | None = None, **options: Any) -> Profile:
    """``prof`` with ``options`` replacing its ``options:`` and ``workers`` its scale,
    validated as :func:`load` validates a profile's own (for :func:`framebag.cluster`).

    ``workers`` is the number of worker processes: a local cluster starts that many,
    a batch cluster scales to that many (``scale: {n: workers}``, no ``adapt:``).
    A profile of kind ``address`` takes no overrides: its cluster runs already.
    """
    where = f"profile {str(prof.source)!r}"
    if workers is None and not options:
        return prof
    if prof.cluster == "address":
        given = ", ".join(["workers"] * (workers is not None) + sorted(options))
        raise FramebagError(f"{where}: cluster 'address' connects to a running scheduler "
                            f"and takes no {given}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise FramebagError(f"{where}: workers must be a whole number >= 1, not {workers!r}")
    merged = {**prof.options, **options}
    valid = valid_options(prof.cluster)
    for key in options:
        if key not in valid:
            _check_keyword(str(key), valid)
        _check_option(where, prof.cluster, str(key), valid)
    if "security" in options:
        _check_security(where, options["security"])
    if prof.cluster != "local":
        _check_batch(where, prof.cluster, merged, valid)
    scale, adapt = dict(prof.scale), prof.adapt
    if workers is not None and prof.cluster == "local":
        merged["n_workers"], scale, adapt = workers, {}, None
    elif workers is not None:
        scale, adapt = {"n": workers}, None
    return dataclasses.replace(prof, options=merged, scale=scale, adapt=adapt)
