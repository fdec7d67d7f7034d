"""Cluster profiles: finding, validating and starting the cluster a run uses.

A profile is a YAML file::

    cluster: local          # local | slurm | pbs | sge | lsf | htcondor | address
    scale: {jobs: 2}        # or adapt: {minimum_jobs: 0, maximum_jobs: 20}
    options: {...}          # keyword arguments of the cluster class, validated

``--profile NAME|FILE`` is looked up as an explicit path, then in
``$FRAMEBAG_PROFILES``, ``./cluster_profiles``, ``~/.config/framebag/profiles``
and the profiles packaged with framebag, in that order.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import FramebagError

__all__ = ["Profile", "find", "load", "start_client", "search_path"]

log = logging.getLogger("framebag")
DEFAULT = "local"


@dataclass
class Profile:
    """A validated cluster profile."""

    name: str
    source: Path
    cluster: str
    options: dict[str, Any] = field(default_factory=dict)
    scale: dict[str, Any] = field(default_factory=dict)
    adapt: dict[str, Any] | None = None
    address: str | None = None


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
    raise FramebagError(
        f"no profile named {name!r}; looked in "
        + ", ".join(str(p) for _, p in search_path())
    )


def load(name: str | os.PathLike | None) -> Profile:
    """Find, parse and validate a profile."""
    path = find(name)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise FramebagError(f"profile {str(path)!r} is not valid YAML{where}: {problem}") from None
    if not isinstance(raw, dict) or "cluster" not in raw:
        raise FramebagError(f"profile {str(path)!r} must be a mapping with a 'cluster:' key")
    unknown = set(raw) - {"cluster", "options", "scale", "adapt", "address"}
    if unknown:
        raise FramebagError(
            f"profile {str(path)!r} has unknown key(s) {', '.join(sorted(unknown))}; "
            "valid keys are cluster, options, scale, adapt, address"
        )
    kind = str(raw["cluster"])
    options = dict(raw.get("options") or {})
    if kind == "local":
        _check_options(path, kind, options, _local_options())
    elif kind == "address":
        if not raw.get("address"):
            raise FramebagError(f"profile {str(path)!r}: cluster 'address' needs address: tcp://...")
    else:
        raise FramebagError(
            f"profile {str(path)!r}: unknown cluster kind {kind!r}; valid kinds are local, address"
        )
    return Profile(Path(path).stem, path, kind, options, dict(raw.get("scale") or {}),
                   raw.get("adapt"), raw.get("address"))


def _local_options() -> set[str]:
    import inspect

    from distributed import LocalCluster, Nanny, Worker

    names = set(inspect.signature(LocalCluster.__init__).parameters)
    names |= set(inspect.signature(Worker.__init__).parameters)
    names |= set(inspect.signature(Nanny.__init__).parameters)
    return {n for n in names if n not in ("self", "kwargs", "args")}


def _check_options(path: Path, kind: str, options: dict[str, Any], valid: set[str]) -> None:
    bad = sorted(set(options) - valid)
    if bad:
        raise FramebagError(
            f"profile {str(path)!r}: unknown option {bad[0]!r} for cluster {kind!r}; "
            f"valid options are {', '.join(sorted(valid))}"
        )


@contextmanager
def start_client(profile: str | os.PathLike | None = None) -> Iterator[Any]:
    """Start the profile's cluster, yield a connected ``distributed.Client``, shut it down."""
    from distributed import Client, LocalCluster

    prof = load(profile)
    if prof.cluster == "address":
        client = Client(prof.address)
        try:
            yield client
        finally:
            client.close()
        return
    opts = dict(prof.options)
    opts.setdefault("n_workers", os.cpu_count() or 1)
    opts.setdefault("threads_per_worker", 1)
    opts.setdefault("processes", True)
    cluster = LocalCluster(**opts)
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
