"""The command line of framebag: run, simulate, inspect, plot, workflows, profiles.

Every user-facing failure is one sentence on stderr and a non-zero exit code;
the traceback is shown only with ``--debug``. Each subcommand other than
``run`` lives beside the stage it belongs to and registers itself through
``COMMANDS`` below (a module exposing ``add_parser(subparsers)`` whose parser
sets ``func``). ``--debug``, ``-v`` and ``-q`` are accepted before and after
the subcommand.

``run`` itself is here, parser and orchestration (load the workflow, show
progress, print the summary, one cluster for several inputs), which is why this
module is over 400 lines: it is the one home of ``framebag run``, shared by
``submit`` (which passes run's options on); the progress display it drives is
:mod:`framebag.progress`.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ._version import __version__
from .errors import FramebagError
from .options import RunOptions
from .progress import Progress, configure, summary_line
from .progress import log as progress_log

#: what ``framebag --help`` says framebag is (plain text: argparse prints it as is)
DESCRIPTION = ("Per-frame jobs on HDF5 detector data, finished or live (SWMR), on a local "
               "cluster or SLURM/PBS.")
#: file name endings taken for HDF5 files when telling an input from a workflow
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs", ".nx5", ".cxi")

log = logging.getLogger("framebag")

#: the fields of :class:`RunOptions` by name: ``run``'s flags take their defaults and help
_FIELDS = {f.name: f for f in dataclasses.fields(RunOptions)}

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
    _option(p, "profile")
    p.add_argument("--set", dest="params", action="append", default=[], metavar="NAME=VALUE",
                   help=_FIELDS["params"].metadata["help"])
    _option(p, "data")
    _option(p, "keys")
    p.add_argument("--no-keys", action="store_true",
                   help="run without key datasets, whatever the workflow names: every frame the "
                        "data hold is complete (see README, Your own data)")
    for name in ("scan_rank", "finished", "axes", "roi", "follow", "timeout", "latency"):
        _option(p, name)
    _option(p, "partition_bytes", type=_parse_bytes,
            default=f"{RunOptions().partition_bytes // 2**20}MiB")
    for name in ("on_error", "retries", "commit_interval", "resume", "overwrite"):
        _option(p, name)
    p.add_argument("extra", nargs="*", default=[], help=argparse.SUPPRESS)  # INPUTs after an option
    p.add_argument("--log-interval", type=float, default=10.0, metavar="S",
                   help="seconds between progress lines when stderr is not a terminal")
    p.add_argument("--plot", action="store_true",
                   help="write quick-look PNGs of the results (needs matplotlib: [plot] extra)")
    _option(p, "report")


def _option(p: argparse.ArgumentParser, name: str, **override: Any) -> None:
    """Add the flag of run option ``name`` with the default and help of :class:`RunOptions`."""
    f = _FIELDS[name]
    kwargs = {"default": f.default, "help": f.metadata["help"], **f.metadata["cli"], **override}
    p.add_argument(f.metadata["flag"], **kwargs)


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
    if getattr(args, "roi", None) is not None:
        from .roi import parse

        parse(args.roi)  # its syntax, before a batch job is queued for it (submit)
    return inputs


def _keys(args: argparse.Namespace) -> list[str] | None:
    """``--keys`` (None: the workflow's), or ``[]`` for ``--no-keys``."""
    if args.no_keys and args.keys:
        raise FramebagError("--no-keys and --keys contradict each other: give one of them")
    return [] if args.no_keys else args.keys


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The run options (see :class:`RunOptions`) from ``run``'s parsed arguments."""
    given = {name: getattr(args, name) for name, f in _FIELDS.items()
             if f.metadata.get("flag") and name != "report"}
    return dict(given, params=_parse_set(args.params), keys=_keys(args))


def _prepare(workflow: str, plot: bool, report: str | None, quiet: bool) -> Any:
    """Check ``--plot``'s and ``--report``'s optional dependencies before anything starts,
    set up the log lines, and load the workflow."""
    import importlib.util

    from .workflow import load_workflow

    if plot:
        from .plot import require_matplotlib

        require_matplotlib()
    if report and importlib.util.find_spec("bokeh") is None:
        raise FramebagError(
            f"--report {report}: dask's performance report needs bokeh; "
            "install it with: pip install 'bokeh>=3.1'"
        )
    configure(quiet)
    return load_workflow(workflow)


def run_reported(workflow: str, input: str, output: str | None = None, *,  # noqa: A002
                 quiet: bool = False, plot: bool = False, report: str | None = None,
                 log_interval: float = 10.0, follow: bool = False, profile: str | None = None,
                 **options: Any) -> Any:
    """``framebag run``: load the workflow, run it with progress, print the summary.

    ``plot`` writes quick-look PNGs afterwards (see :mod:`framebag.plot`);
    ``report`` wraps the run in a ``distributed.performance_report`` written to
    that file. Both check their optional dependencies before anything starts.
    Returns the engine's ``Results``.
    """
    from contextlib import ExitStack

    from .output import default_output_path

    wf = _prepare(workflow, plot, report, quiet)
    out_path = Path(output) if output else default_output_path(input, wf.name)
    progress = Progress(follow=follow, interval=log_interval,
                        roi=_with_roi(options, out_path, wf.name))
    with ExitStack() as stack:
        if progress.tty and progress.enabled:
            _redirect_logging_around_the_bar(stack)
        stack.callback(progress.close)
        try:
            res: Any = wf.run(input, output, follow=follow, progress=progress,
                              profile=profile, report=report, announce=not quiet, **options)
        except KeyboardInterrupt as exc:
            exc.output_written = out_path.exists()  # type: ignore[attr-defined]
            raise
        progress.finish(res.stats)
    progress_log.info(summary_line(res, follow))
    if report:
        progress_log.info("performance report in %s", report)
    if plot:
        _write_pictures(res.output)
    return res


def _with_roi(options: dict[str, Any], out: Path, name: str) -> bool:
    """Whether the run has a ROI: ``--roi``, or the one a resumed output records (so that
    the progress lines call what they count the ROI, not the scan)."""
    if options.get("roi") is not None:
        return True
    if not options.get("resume") or not out.is_file():
        return False
    import h5py

    try:
        with h5py.File(out, "r") as f:
            return f"entry/{name}/roi_mask" in f
    except (OSError, RuntimeError, KeyError, ValueError):  # the run says what is wrong with it
        return False


def _redirect_logging_around_the_bar(stack: Any) -> None:
    """Log lines go above the tqdm bar, not through it, until ``stack`` closes."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    stack.enter_context(logging_redirect_tqdm([logging.root, progress_log]))


def _write_pictures(output: str | os.PathLike) -> None:
    """``--plot``: the quick-look PNGs of ``output``, and a line saying where they are."""
    from .plot import write_pictures

    notes: list[str] = []
    pictures = write_pictures(output, notes=notes)
    if pictures:
        progress_log.info("pictures in %s: %s", pictures[0].parent,
                          ", ".join(p.name for p in pictures))
    for note in notes:  # a result with no picture: why (a fold of one number: its value)
        progress_log.info("%s", note)


def _reason(exc: BaseException) -> str:
    """A failed scan's reason in one line: framebag's own sentence, or the exception named."""
    text = str(exc) if isinstance(exc, FramebagError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


class _ScanLines:
    """What ``framebag run`` shows of each of several scans: a progress display while it
    runs (``progress_for``), then its summary or why it failed (``each``)."""

    def __init__(self, follow: bool, log_interval: float, plot: bool,
                 roi: Callable[[Path], bool] = lambda inp: False) -> None:
        self.follow, self.log_interval, self.plot = follow, log_interval, plot
        self.roi = roi  # whether the run of an input has a ROI (see _with_roi)
        self.current: list[Progress] = []
        self.started: list[Path] = []

    def progress_for(self, inp: Path) -> Progress:
        p = Progress(follow=self.follow, interval=self.log_interval, roi=self.roi(inp))
        self.current[:] = [p]
        self.started.append(inp)
        return p

    def each(self, i: int, n: int, inp: Path, out: Path, res: Any) -> None:
        p = self.current.pop() if self.current else None
        if isinstance(res, BaseException):
            if p is not None:
                p.close()
            progress_log.warning("scan %d of %d failed: %s: %s", i + 1, n, inp, _reason(res))
            return
        if p is not None:
            p.finish(res.stats)
            p.close()
        progress_log.info("scan %d of %d, %s: %s", i + 1, n, inp,
                          summary_line(res, self.follow))
        if self.plot:
            _write_pictures(res.output)

    def interrupted(self, exc: KeyboardInterrupt, workflow: str, out_dir: str | None) -> None:
        """Close the display and tell ``main`` whether an output of a started scan exists."""
        from .output import default_output_path

        for p in self.current:
            p.close()
        outs = [default_output_path(i, workflow) if out_dir is None
                else Path(out_dir) / default_output_path(i, workflow).name for i in self.started]
        exc.output_written = any(o.exists() for o in outs)  # type: ignore[attr-defined]


def run_many_reported(workflow: str, inputs: list[str], out_dir: str | None = None, *,
                      quiet: bool = False, plot: bool = False, report: str | None = None,
                      log_interval: float = 10.0, follow: bool = False,
                      profile: str | None = None, **options: Any) -> Any:
    """``framebag run`` over several inputs: one cluster, a line per scan, then a summary.

    Each scan gets its progress display and, at its end, one line: its summary, or
    why it failed (shown under ``--quiet`` too). A failed scan does not stop the
    next. If any failed, a :class:`FramebagError` names each with its reason, after
    the others ran. Returns the engine's ``ManyResults``.
    """
    from contextlib import ExitStack

    from .engine import run_many
    from .output import default_output_path

    wf = _prepare(workflow, plot, report, quiet)

    def roi(inp: Path) -> bool:
        out = default_output_path(inp, wf.name)
        return _with_roi(options, out if out_dir is None else Path(out_dir) / out.name, wf.name)

    shown = _ScanLines(follow, log_interval, plot, roi)
    with ExitStack() as stack:
        if sys.stderr.isatty() and progress_log.isEnabledFor(logging.INFO):
            _redirect_logging_around_the_bar(stack)
        try:
            res = run_many(wf, inputs, out_dir, follow=follow, profile=profile, report=report,
                           announce=not quiet, progress_for=shown.progress_for,
                           each=shown.each, **options)
        except KeyboardInterrupt as exc:
            shown.interrupted(exc, wf.name, out_dir)
            raise
    failed, n = res.failed, len(res)
    if failed:
        listing = "".join(f"\n  {p}: {_reason(e)}" for p, e in failed.items())
        raise FramebagError(f"{len(failed)} of {n} scans failed ({n - len(failed)} done, in "
                            f"{res.wall:.1f} s):{listing}")
    progress_log.info("all %d scans done in %.1f s", n, res.wall)
    if report:
        progress_log.info("performance report in %s", report)
    return res


def cmd_run(args: argparse.Namespace) -> int:
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


class _Parser(argparse.ArgumentParser):
    """argparse's parser, for a command line a user types: an option is taken only when
    spelt whole (``--resum`` is not ``--resume``), and a value argparse refuses is one
    line on stderr, not the usage block and a line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"framebag: error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="framebag", description=DESCRIPTION)
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


def _unknown_option(parser: argparse.ArgumentParser, command: str, rest: list[str]) -> str:
    """One sentence on the first unknown option in ``rest``, with the closest known
    one when there is a close one; "" when ``rest`` holds no option."""
    import difflib

    flags = [r.split("=", 1)[0] for r in rest if r.startswith("-")]
    if not flags:
        return ""
    sub = next((p for p in _subparsers(parser) if p.prog.split()[-1] == command), parser)
    known = [o for a in sub._actions for o in a.option_strings if o.startswith("--")]
    close = difflib.get_close_matches(flags[0], known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else f"; see framebag {command} --help"
    return f"unrecognized option {flags[0]}{hint}"


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | int:
    """The parsed arguments, or the exit code of a command line argparse refused."""
    try:
        args, rest = parser.parse_known_args(argv)
        if rest and (args.command not in ("run", "submit")
                     or any(r.startswith("-") for r in rest)):
            unknown = _unknown_option(parser, args.command, rest)
            if unknown:
                print(f"framebag: error: {unknown}", file=sys.stderr)
                return 2
            parser.parse_args(argv)  # argparse's own "unrecognized arguments" and exit 2
        if rest:
            args.extra = [*args.extra, *rest]
    except SystemExit as exc:
        return int(exc.code or 0)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``framebag`` console script."""
    parser = build_parser()
    args = _parse(parser, list(sys.argv[1:] if argv is None else argv))
    if isinstance(args, int):
        return args
    level = logging.DEBUG if args.debug else (logging.INFO if args.verbose else logging.WARNING)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    log.setLevel(level)
    # dask's own start-up and shutdown chatter is noise on a normal run; the variable is
    # read when distributed is first imported, here and in every worker process we start
    noisy = "debug" if args.debug else ("info" if args.verbose > 1 else "critical")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", noisy)
    if os.environ["DASK_LOGGING__DISTRIBUTED"] == "critical":
        # distributed's own config keeps its client at "warning": a client closed while it
        # reconnects to a lost scheduler logs a traceback beside our one sentence
        logging.getLogger("distributed.client").addFilter(
            lambda record: record.levelno >= logging.CRITICAL)
    try:
        return int(args.func(args) or 0)
    except FramebagError as exc:
        if args.debug:  # the traceback too, and the same exit code as without --debug
            traceback.print_exc()
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
            traceback.print_exc()
            return 1
        print(f"framebag: error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
