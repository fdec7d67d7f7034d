"""The command line of framebag: run, simulate, inspect, plot, workflows, profiles.

Every user-facing failure is one sentence on stderr and a non-zero exit code;
the traceback is shown only with ``--debug``. Each subcommand other than
``run`` lives beside the stage it belongs to and registers itself through
``COMMANDS`` below (a module exposing ``add_parser(subparsers)`` whose parser
sets ``func``). ``--debug``, ``-v`` and ``-q`` are accepted before and after
the subcommand.
"""

from __future__ import annotations

import argparse
import glob
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from ._version import __version__
from .errors import FramebagError
from .partitions import DEFAULT_PARTITION_BYTES

#: what ``framebag --help`` says framebag is (plain text: argparse prints it as is)
DESCRIPTION = ("Per-frame jobs on HDF5 detector data, finished or live (SWMR), on a local "
               "cluster or SLURM/PBS.")
#: file name endings taken for HDF5 files when telling an input from a workflow
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs", ".nx5", ".cxi")

log = logging.getLogger("framebag")

#: modules that add a subcommand each: ``add_parser(subparsers)``
COMMANDS: list[str] = [".simulate", ".inspect", ".plot", ".catalog", ".profiles_cli", ".submit"]


def _parse_set(items: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise FramebagError(f"--set {item!r}: expected name=value")
        out[key.strip()] = value
    return out


def _parse_bytes(text: str) -> int:
    units = {"": 1, "k": 2**10, "kib": 2**10, "m": 2**20, "mib": 2**20, "g": 2**30, "gib": 2**30,
             "kb": 10**3, "mb": 10**6, "gb": 10**9}
    t = text.strip().lower()
    num = t.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = t[len(num):]
    try:
        if unit not in units:
            raise ValueError
        return int(float(num) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 16MiB") from None


class _DefaultsShown(argparse.HelpFormatter):
    """Help that ends each option with its default, where it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS, []):
            return text
        return f"{text} (default: %(default)s)"


class _Once(argparse.Action):
    """Store an option's value, refusing it a second time (``-o a.h5 -o b.h5``)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        had = getattr(namespace, self.dest, None)
        if had is not None and had != self.default:
            parser.error(f"{option_string} given twice ({had} and {values}); give it once")
        setattr(namespace, self.dest, values)


def add_run_parser(sub: Any) -> None:
    p = sub.add_parser("run", help="run a workflow over HDF5 files",
                       description="Run WORKFLOW (a .py file or dotted module) over INPUT, or "
                                   "over several INPUTs in turn on one cluster, each into its "
                                   "own output.",
                       formatter_class=_DefaultsShown)
    p.add_argument("workflow", help="workflow file (.py) or importable module name")
    add_run_options(p)
    p.set_defaults(func=cmd_run)


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The INPUTs and every option of ``run`` (``submit`` takes the same, to pass them on)."""
    p.add_argument("input", nargs="+", metavar="INPUT",
                   help="input HDF5 file, never written to; several files or quoted globs "
                        "('scans/*.h5') are run in turn, each into its own output")
    p.add_argument("-o", "--output", action=_Once,
                   help="output HDF5 file (default: <input stem>_<workflow>.h5 next to the "
                        "input); with several inputs, an existing directory for the outputs")
    p.add_argument("--profile", metavar="NAME|FILE",
                   help="cluster profile name or YAML file (default: local)")
    p.add_argument("--set", dest="params", action="append", default=[], metavar="NAME=VALUE",
                   help="override a function parameter (repeatable)")
    p.add_argument("--data", metavar="PATH", help="data dataset path (overrides the workflow's)")
    p.add_argument("--keys", action="append", metavar="PATH",
                   help="key dataset path (repeatable; overrides the workflow's)")
    p.add_argument("--no-keys", action="store_true",
                   help="run without key datasets, whatever the workflow names: every frame the "
                        "data hold is complete (see README, Your own data)")
    p.add_argument("--scan-rank", type=int, metavar="N",
                   help="without keys: the number of scan dims of the data (default: all "
                        "but the last two)")
    p.add_argument("--finished", metavar="PATH",
                   help="finished-flag dataset path (overrides the workflow's)")
    p.add_argument("--axes", nargs="+", metavar="PATH",
                   help="the scan's motor-position datasets, one per scan dim, slowest first "
                        "(1-d or scan-shaped): the output's scan axes (default: indices)")
    p.add_argument("--roi", metavar="SLICES|PATH|FILE:PATH",
                   help="process only part of the scan: numpy-style slices over the scan dims "
                        "(10:20,::2), or a boolean scan-shaped dataset in the input (PATH) or "
                        "in another file (FILE.h5:PATH); see README, Part of a scan")
    p.add_argument("--follow", action="store_true", help="follow a live (SWMR) file")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="with --follow: stop after this many seconds with no new frame, "
                        "and wait this long for the input file to appear")
    p.add_argument("--latency", type=float, default=0.25, metavar="S",
                   help="with --follow: send a partial partition after this many seconds")
    p.add_argument("--partition-bytes", type=_parse_bytes, metavar="SIZE",
                   default=f"{DEFAULT_PARTITION_BYTES // 2**20}MiB",
                   help="target bytes of frames per slab read")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="a failing frame stops the run (raise) or is recorded and left (skip)")
    p.add_argument("--retries", type=int, default=2, metavar="N",
                   help="retries of a failed partition")
    p.add_argument("--commit-interval", type=float, metavar="S",
                   help="seconds between checkpoints of the output (default: 0.5, or 0.1 with "
                        "--follow)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted output")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("extra", nargs="*", help=argparse.SUPPRESS)  # INPUTs after an option
    p.add_argument("--log-interval", type=float, default=10.0, metavar="S",
                   help="seconds between progress lines when stderr is not a terminal")
    p.add_argument("--plot", action="store_true",
                   help="write quick-look PNGs of the results (needs matplotlib: [plot] extra)")
    p.add_argument("--report", metavar="FILE",
                   help="write a dask performance report (HTML) of the run to FILE")


def _looks_hdf5(path: str) -> bool:
    return path.lower().endswith(HDF5_SUFFIXES)


def _is_glob(text: str) -> bool:
    return glob.has_magic(text)


def run_inputs(args: argparse.Namespace) -> list[str]:
    """The input files of ``run`` (or ``submit``): quoted globs expanded, the usual slips caught.

    One plain INPUT is taken as it is (with ``--follow`` it may not exist yet). With
    several, each must exist, and each glob must match at least one file; a last
    argument that does not exist and looks like an HDF5 file was meant as the output.
    """
    given = [*args.input, *(getattr(args, "extra", None) or [])]
    if _looks_hdf5(args.workflow) and not _looks_hdf5(given[0]):
        raise FramebagError(
            f"the arguments are swapped: the WORKFLOW comes first, then the INPUT file: "
            f"framebag {args.command} {given[0]} {args.workflow}")
    stray = [g for g in given[1:] if not _is_glob(g) and not os.path.exists(g)]
    if stray:
        last = given[-1]
        if len(given) == 2 and _looks_hdf5(last):
            raise FramebagError(f"there is no input file {last}: to name the output file, "
                                f"use -o {last} (several INPUTs must all exist)")
        raise FramebagError(f"input file {stray[0]!r} does not exist (with several INPUTs, "
                            "each must exist)")
    inputs: list[str] = []
    for item in given:
        if not _is_glob(item):
            inputs.append(item)
            continue
        hits = sorted(glob.glob(os.path.expanduser(item)))
        if not hits:
            raise FramebagError(f"INPUT pattern {item!r} matches no file")
        inputs += hits
    return list(dict.fromkeys(inputs))


def several_inputs(args: argparse.Namespace) -> bool:
    """Whether ``run`` was given several INPUTs or a glob: then ``-o`` names a directory."""
    given = [*args.input, *(getattr(args, "extra", None) or [])]
    return len(given) > 1 or any(_is_glob(g) for g in given)


def _check_run_arguments(args: argparse.Namespace) -> list[str]:
    """Catch the usual slips in ``run``'s arguments before anything is opened or started.

    Returns the input files (see :func:`run_inputs`).
    """
    inputs = run_inputs(args)
    if args.profile:
        from .profiles import find

        find(args.profile)  # an unknown profile is named before the output is checked
    return inputs


def _keys(args: argparse.Namespace) -> list[str] | None:
    """``--keys`` (None: the workflow's), or ``[]`` for ``--no-keys``."""
    if args.no_keys and args.keys:
        raise FramebagError("--no-keys and --keys contradict each other: give one of them")
    return [] if args.no_keys else args.keys


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The engine's run options from ``run``'s parsed arguments."""
    return dict(
        profile=args.profile, params=_parse_set(args.params),
        data=args.data, keys=_keys(args), finished=args.finished, axes=args.axes,
        follow=args.follow, scan_rank=args.scan_rank, roi=args.roi,
        timeout=args.timeout, latency=args.latency, partition_bytes=args.partition_bytes,
        overwrite=args.overwrite, resume=args.resume, on_error=args.on_error,
        retries=args.retries, commit_interval=args.commit_interval,
    )


def cmd_run(args: argparse.Namespace) -> int:
    from .progress import run_many_reported, run_reported

    inputs = _check_run_arguments(args)
    shown = dict(quiet=args.quiet, plot=args.plot, report=args.report,
                 log_interval=args.log_interval)
    if not several_inputs(args):
        run_reported(args.workflow, inputs[0], args.output, **shown, **run_options(args))
    else:
        run_many_reported(args.workflow, inputs, args.output, **shown, **run_options(args))
    return 0


def _add_global_flags(p: argparse.ArgumentParser, top: bool) -> None:
    """``--debug``, ``-v``, ``-q``: on the top parser with defaults, on subcommands without.

    A subcommand's parser copies every default it has over what the top parser
    parsed, so there they default to SUPPRESS: given after the subcommand they
    count, left out they leave the top parser's value alone.
    """
    defaults = (False, 0, False) if top else (argparse.SUPPRESS,) * 3
    p.add_argument("--debug", action="store_true", default=defaults[0],
                   help="show tracebacks and debug logs")
    p.add_argument("-v", "--verbose", action="count", default=defaults[1],
                   help="more log output (repeatable)")
    p.add_argument("-q", "--quiet", action="store_true", default=defaults[2],
                   help="no progress display and no summary line (errors still show)")


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every subcommand parser below ``parser``, nested ones (``profiles show``) included."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                out += [child, *_subparsers(child)]
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="framebag", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"framebag {__version__}")
    _add_global_flags(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    add_run_parser(sub)
    for name in COMMANDS:
        importlib.import_module(name, __package__).add_parser(sub)
    for child in _subparsers(parser):
        _add_global_flags(child, top=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``framebag`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args, rest = parser.parse_known_args(argv)
        if rest and (args.command not in ("run", "submit")
                     or any(r.startswith("-") for r in rest)):
            parser.parse_args(argv)  # argparse's own "unrecognized arguments" and exit 2
        if rest:
            args.extra = [*args.extra, *rest]
    except SystemExit as exc:
        return int(exc.code or 0)
    level = logging.DEBUG if args.debug else (logging.INFO if args.verbose else logging.WARNING)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    log.setLevel(level)
    # dask's own start-up and shutdown chatter is noise on a normal run; the variable is
    # read when distributed is first imported, here and in every worker process we start
    noisy = "debug" if args.debug else ("info" if args.verbose > 1 else "critical")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", noisy)
    try:
        return int(args.func(args) or 0)
    except FramebagError as exc:
        if args.debug:
            raise
        print(f"framebag: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # whoever read stdout stopped early (| head): end quietly, with the status a
        # SIGPIPE gives, like the shell's own tools; stdout goes nowhere from here on
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt as exc:
        if getattr(exc, "output_written", True):
            print("framebag: interrupted; the output keeps what was done: "
                  "run the same command with --resume to continue", file=sys.stderr)
        else:
            print("framebag: interrupted before any output was written; run the same command "
                  "to start again", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"framebag: error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
