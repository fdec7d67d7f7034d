"""Run options: the one place each option of a run has its default and its help.

:class:`RunOptions` is what :func:`framebag.run` takes (keywords are turned into
one), what the engine reads, and what ``framebag run``'s parser is built from:
``cli.py`` takes every default and help text from the fields below, so no default
is written twice. The options of the display (``--plot``, ``--log-interval``,
``-q``) belong to the command line, not to a run, and are not here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from .dispatch import DEFAULT_PARTITION_BYTES
from .errors import FramebagError

__all__ = ["RunOptions", "ON_ERROR"]

#: the options that are numbers (checked as such: a str from a config file is refused)
_NUMBERS = ("timeout", "poll_interval", "latency", "partition_bytes", "retries",
            "commit_interval")

#: what ``on_error`` may be
ON_ERROR = ("raise", "skip")


def _opt(default: Any, help: str, flag: str | None = None, **cli: Any) -> Any:  # noqa: A002
    """A field with its help text and, for ``framebag run``, its flag and argparse extras."""
    return field(default=default, metadata={"help": help, "flag": flag, "cli": cli})


@dataclass(frozen=True)
class RunOptions:
    """Every option of one run, with its default; immutable once made.

    ``None`` for ``data``, ``keys``, ``finished`` and ``axes`` means "the
    workflow's"; ``keys=()`` runs without keys (every frame the data hold is
    complete). ``roi`` (slices, a mask, or a dataset path: :mod:`framebag.roi`)
    is None for the whole scan. A bad value raises :class:`FramebagError` naming the option.
    """

    profile: str | None = _opt(
        None, "cluster profile name or YAML file (default: local)", "--profile",
        metavar="NAME|FILE")
    params: Mapping[str, Any] | None = _opt(
        None, "override a function parameter (repeatable)")
    data: str | None = _opt(
        None, "data dataset path (overrides the workflow's)", "--data", metavar="PATH")
    keys: tuple[str, ...] | None = _opt(
        None, "key dataset path (repeatable; overrides the workflow's)", "--keys",
        action="append", metavar="PATH")
    scan_rank: int | None = _opt(
        None, "without keys: the number of scan dims of the data (default: all but the "
              "last two)", "--scan-rank", type=int, metavar="N")
    finished: str | None = _opt(
        None, "finished-flag dataset path (overrides the workflow's)", "--finished",
        metavar="PATH")
    axes: tuple[str, ...] | None = _opt(
        None, "the scan's motor-position datasets, one per scan dim, slowest first (1-d or "
              "scan-shaped): the output's scan axes (default: indices)", "--axes",
        nargs="+", metavar="PATH")
    roi: Any = _opt(
        None, "process only part of the scan: numpy-style slices over the scan dims "
              "(10:20,::2), or a boolean scan-shaped dataset in the input (PATH) or in another "
              "file (FILE.h5:PATH); see README, Part of a scan", "--roi",
        metavar="SLICES|PATH|FILE:PATH")
    follow: bool = _opt(False, "follow a live (SWMR) file", "--follow", action="store_true")
    timeout: float = _opt(
        60.0, "with --follow: stop after this many seconds with no new frame, and wait this "
              "long for the input file to appear", "--timeout", type=float, metavar="S")
    poll_interval: float = _opt(0.05, "seconds between polls of the key datasets")
    latency: float = _opt(
        0.25, "with --follow: while every worker has a task, send the complete frames "
              "waiting as a task, however few, after this many seconds (to an idle worker, "
              "at the next commit interval)", "--latency", type=float, metavar="S")
    partition_bytes: int = _opt(
        DEFAULT_PARTITION_BYTES, "the read budget: bytes of frames per read (one slab read on "
                                 "a worker)", "--partition-bytes", metavar="SIZE")
    on_error: str = _opt(
        "raise", "a failing frame stops the run (raise) or is recorded and left (skip)",
        "--on-error", choices=ON_ERROR)
    retries: int = _opt(2, "retries of a failed task", "--retries", type=int,
                        metavar="N")
    commit_interval: float | None = _opt(
        None, "seconds between checkpoints of the output (default: 0.5, or 0.1 with "
              "--follow)", "--commit-interval", type=float, metavar="S")
    resume: bool = _opt(False, "continue an interrupted output", "--resume",
                        action="store_true")
    overwrite: bool = _opt(False, "replace an existing output", "--overwrite",
                           action="store_true")
    report: str | None = _opt(
        None, "write a dask performance report (HTML) of the run to FILE", "--report",
        metavar="FILE")
    announce: bool = _opt(True, "print the dashboard link of a cluster started for the run")
    progress: Callable[[dict[str, Any]], None] | None = field(
        default=None, compare=False, metadata={"help": "called with counts as the run goes on",
                                               "flag": None, "cli": {}})

    def __post_init__(self) -> None:
        for name in ("keys", "axes"):  # lists are accepted, and kept as tuples
            value = getattr(self, name)
            if isinstance(value, (str, PurePath)):  # one path, as Workflow(keys=...) takes it
                object.__setattr__(self, name, (str(value),))
            elif value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        if self.report is not None:
            object.__setattr__(self, "report", str(self.report))
        self._check()

    def _check(self) -> None:
        if self.profile is not None and not isinstance(self.profile, (str, PurePath)):
            raise FramebagError(f"profile must be a profile name or YAML file, not "
                                f"{self.profile!r}")
        if self.params is not None and not isinstance(self.params, Mapping):
            raise FramebagError(f"params must be a mapping of parameter names to values "
                                f"(params={{'y0': 1}}), not {self.params!r}")
        for name in _NUMBERS:
            value = getattr(self, name)
            if value is None and name == "commit_interval":
                continue
            flag = _FLAGS.get(name, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise FramebagError(f"{flag} must be a number, not {value!r}")
            if name in ("commit_interval", "poll_interval") and not math.isfinite(value):
                raise FramebagError(f"{flag} must be a finite number of seconds, not {value!r}")
        if self.on_error not in ON_ERROR:
            raise FramebagError(f"on_error must be 'raise' or 'skip', not {self.on_error!r}")
        if self.partition_bytes <= 0:
            raise FramebagError(
                f"--partition-bytes must be positive, got {self.partition_bytes}")
        if self.timeout <= 0:
            raise FramebagError(f"--timeout must be positive, got {self.timeout}")
        for option, value in (("--latency", self.latency), ("--retries", self.retries),
                              ("poll_interval", self.poll_interval),
                              ("--commit-interval", self.commit_interval or 0.0)):
            if value < 0:
                raise FramebagError(f"{option} must be zero or more, got {value}")

    @classmethod
    def of(cls, options: RunOptions | None = None, **given: Any) -> RunOptions:
        """``options`` (default: all defaults) with the keywords ``given`` replaced.

        An unknown keyword is a ``TypeError`` naming it, as for any function.
        """
        if options is not None and not isinstance(options, RunOptions):
            raise TypeError(f"options must be a RunOptions, not {type(options).__name__}; "
                            "for a dict d, pass options=RunOptions(**d) or **d")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise TypeError(f"unknown run option {unknown[0]!r}; run options are: "
                            + ", ".join(sorted(known)))
        return dataclasses.replace(options or cls(), **given)

    def replace(self, **changes: Any) -> RunOptions:
        """A copy with ``changes``."""
        return dataclasses.replace(self, **changes)

    @property
    def resolved_commit_interval(self) -> float:
        """Seconds between commits: ``commit_interval``, or 0.1 when following, else 0.5."""
        if self.commit_interval is not None:
            return float(self.commit_interval)
        return 0.1 if self.follow else 0.5


#: each option's name in messages: its flag where ``framebag run`` has one
_FLAGS = {f.name: f.metadata["flag"] or f.name for f in dataclasses.fields(RunOptions)}


def cli_fields() -> list[dataclasses.Field[Any]]:
    """The fields that ``framebag run`` has a flag for, in declaration order."""
    return [f for f in dataclasses.fields(RunOptions) if f.metadata.get("flag")]
