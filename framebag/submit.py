"""``framebag submit``: the driver (``framebag run``) inside a batch job of its own.

For long runs dask-jobqueue's docs advise running the driver on a compute node
rather than the login node. ``submit`` writes that job: the header comes from
the profile's own dask-jobqueue job class (queue, account, extra directives, log
directory, prologue, Python), built with the driver's modest request (one core,
``--driver-memory``) instead of the workers'; the body is ``framebag run`` with
the same workflow, inputs, options and profile, so the driver submits the
worker jobs from there as it would from the login node. It is then handed to
the profile's submit command (``sbatch``, ``qsub``, ``bsub``) and the job id, the
log and the output paths are printed. ``--dry-run`` prints the script instead.

Written here because neither dask nor dask-jobqueue submits the driver side: they
only build worker jobs. The header, the submit command and the job-id pattern are
theirs.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import profiles
from .errors import FramebagError

__all__ = ["add_parser", "driver_script", "log_files", "submit", "DRIVER_NAME"]

#: the driver job's name in the queue, and the stem of its log and script files
DRIVER_NAME = "framebag-driver"
DEFAULT_DRIVER_MEMORY = "4GiB"
#: SLURM sends SIGTERM this long before the walltime; framebag then stops and keeps its output
SLURM_WARNING = "--signal=B:TERM@120"
#: options of the workers' jobs that the driver's job does not take from the profile
_WORKER_ONLY = {"cores", "memory", "processes", "walltime", "resource_spec", "job_cpu",
                "job_mem", "worker_extra_args", "worker_command", "interface", "death_timeout",
                "local_directory", "nanny", "protocol", "security", "scheduler_options",
                "name", "job_name", "n_workers"}
SUBMITTABLE = ("slurm", "pbs", "sge", "lsf")


def add_parser(sub: Any) -> None:
    """Register ``framebag submit WORKFLOW INPUT... [run options] --profile P [--dry-run]``."""
    from .cli import _DefaultsShown, add_run_options

    p = sub.add_parser(
        "submit", help="run a workflow from a batch job: the driver on a compute node",
        description="Write a batch job that runs `framebag run` with the same WORKFLOW, INPUTs "
                    "and options on a compute node, its workers started from there with the "
                    "same --profile, and submit it (sbatch, qsub, bsub). Prints the job id and "
                    "where the log and the output will be.",
        formatter_class=_DefaultsShown)
    p.add_argument("workflow", help="workflow file (.py) or importable module name")
    add_run_options(p)
    g = p.add_argument_group("the driver's own job")
    g.add_argument("--dry-run", action="store_true",
                   help="print the batch script and submit nothing")
    g.add_argument("--driver-cores", type=int, default=1, metavar="N",
                   help="cores of the driver's job")
    g.add_argument("--driver-memory", default=DEFAULT_DRIVER_MEMORY, metavar="SIZE",
                   help="memory of the driver's job")
    g.add_argument("--driver-walltime", metavar="HH:MM:SS",
                   help="walltime of the driver's job (default: the profile's walltime)")
    p.set_defaults(func=cmd_submit)


def _run_option_actions() -> list[argparse.Action]:
    from .cli import add_run_options

    probe = argparse.ArgumentParser(add_help=False)
    add_run_options(probe)
    return [a for a in probe._actions if a.option_strings]


def run_command(args: argparse.Namespace, inputs: list[str], python: str,
                profile_path: Path) -> list[str]:
    """The ``framebag run`` command line the driver job runs: the options of ``args``.

    Paths are made absolute (the job also starts in the submit directory); every
    run option that differs from its default is passed on as given.
    """
    wf = Path(args.workflow)
    cmd = [python, "-m", "framebag.cli"]
    if getattr(args, "debug", False):
        cmd.append("--debug")
    cmd += ["-v"] * int(getattr(args, "verbose", 0) or 0)
    if getattr(args, "quiet", False):
        cmd.append("-q")
    cmd += ["run", str(wf.resolve()) if wf.is_file() else args.workflow]
    cmd += [str(Path(i).resolve()) for i in inputs]
    for action in _run_option_actions():
        flag = action.option_strings[-1]
        value = getattr(args, action.dest)
        if action.dest == "profile":
            cmd += [flag, str(profile_path)]
            continue
        default = action.default
        if isinstance(default, str) and callable(action.type):
            default = action.type(default)
        if value is None or value == default:
            continue
        if action.dest in ("output", "report"):
            value = str(Path(value).resolve())
        if isinstance(action, argparse._StoreTrueAction):
            cmd.append(flag)
        elif isinstance(action, argparse._AppendAction):
            for item in value:
                cmd += [flag, str(item)]
        else:
            cmd += [flag, str(value)]
    return cmd


def _job(prof: profiles.Profile, cores: int, memory: str, walltime: str | None) -> Any:
    """The profile's dask-jobqueue job object with the driver's request (submits nothing)."""
    from dask.utils import parse_bytes

    try:
        parse_bytes(memory)
    except (ValueError, TypeError):
        raise FramebagError(f"--driver-memory {memory!r} is not a size like 4GiB") from None
    if cores < 1:
        raise FramebagError(f"--driver-cores must be at least 1, not {cores}")
    cluster_cls: Any = profiles.cluster_class(prof.cluster)
    job_cls = cluster_cls.job_cls
    accepted: set[str] = set()
    for cls in job_cls.__mro__:
        if "__init__" in vars(cls):
            accepted |= set(inspect.signature(cls.__init__).parameters)
    opts = {k: v for k, v in profiles.cluster_options(prof).items()
            if k in accepted and k not in _WORKER_ONLY}
    if prof.cluster == "slurm":
        opts["job_extra_directives"] = [*(opts.get("job_extra_directives") or []),
                                        SLURM_WARNING]
    walltime = walltime or prof.options.get("walltime")
    if walltime is not None and "walltime" in accepted:
        opts["walltime"] = walltime
    return job_cls(scheduler="tcp://driver:0", name=DRIVER_NAME, job_name=DRIVER_NAME,
                   cores=cores, processes=1, memory=memory, **opts)


def driver_script(job: Any, prologue: list[str], command: list[str],
                  cwd: str | os.PathLike) -> str:
    """The batch script: the job's shebang and header, the profile's prologue, ``exec`` the run.

    ``exec`` makes framebag the job's main process, so the batch system's SIGTERM
    (walltime, cancel) reaches it: it cancels its worker jobs and keeps its output.
    """
    lines = [job.shebang, "", job.job_header, ""]
    lines += list(prologue)
    lines += [f"cd {shlex.quote(str(cwd))}", "exec " + shlex.join(command), ""]
    return "\n".join(lines)


def log_files(kind: str, log_directory: str, job_id: str = "JOBID") -> list[str]:
    """The driver job's log files: first its stderr (where framebag reports), then its stdout.

    SGE's header merges the two (``-j y``) into one file.
    """
    d = log_directory.rstrip("/")
    if kind in ("slurm", "lsf"):  # the header's -e/-o name them
        return [f"{d}/{DRIVER_NAME}-{job_id}.err", f"{d}/{DRIVER_NAME}-{job_id}.out"]
    if kind == "sge":  # named by SGE after the job
        return [f"{d}/{DRIVER_NAME}.o{job_id}"]
    return [f"{d}/{DRIVER_NAME}.e{job_id}", f"{d}/{DRIVER_NAME}.o{job_id}"]  # pbs


def _outputs(args: argparse.Namespace, inputs: list[str]) -> list[Path]:
    from .cli import several_inputs
    from .engine import many_outputs, own_outputs_left_out
    from .output import default_output_path
    from .workflow import load_workflow

    wf = load_workflow(args.workflow)
    if not several_inputs(args):
        out = Path(args.output) if args.output else default_output_path(inputs[0], wf.name)
        outs = [out.resolve()]
    else:
        kept, _ = own_outputs_left_out(wf.name, inputs, args.output)
        outs = [p.resolve() for p in many_outputs(wf.name, kept, args.output).values()]
    if not (args.overwrite or args.resume):
        there = [o for o in outs if o.exists()]
        if there:
            raise FramebagError(f"output file {str(there[0])!r} exists; pass --overwrite to "
                                "replace it or --resume to continue it (checked before "
                                "submitting)")
    return outs


def submit(args: argparse.Namespace) -> int:
    """``framebag submit``: check, write the driver's script, submit it or print it."""
    from .cli import _check_run_arguments

    if not args.profile:
        raise FramebagError("submit needs --profile NAME|FILE: a batch profile (slurm, pbs, "
                            "sge, lsf) for the driver's job and its workers")
    inputs = _check_run_arguments(args)
    prof = profiles.load(args.profile)
    if prof.cluster not in SUBMITTABLE:
        raise FramebagError(
            f"profile {str(prof.source)!r} is cluster {prof.cluster!r}; submit needs a batch "
            f"profile ({', '.join(SUBMITTABLE)}): in a single-node job of your own, run "
            "framebag run with the local profile instead")
    outputs = _outputs(args, inputs)
    job = _job(prof, args.driver_cores, args.driver_memory, args.driver_walltime)
    opts = profiles.cluster_options(prof)
    command = run_command(args, inputs, str(opts["python"]), prof.source.resolve())
    script = driver_script(job, opts.get("job_script_prologue") or [], command, Path.cwd())
    if args.dry_run:
        print(script, end="")
        return 0
    log_dir = str(job.log_directory)
    os.makedirs(log_dir, exist_ok=True)
    path = Path(log_dir) / f"{DRIVER_NAME}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.sh"
    path.write_text(script)
    job_id = _submitted(job, prof.cluster, path)
    logs = log_files(prof.cluster, log_dir, job_id)
    print(f"submitted driver job {job_id} ({prof.cluster}, profile {prof.name})")
    print(f"  log:    {logs[0]}" + (f" (stdout: {logs[1]})" if len(logs) > 1 else ""))
    for out in outputs:
        print(f"  output: {out}")
    print(f"  script: {path}")
    sys.stdout.flush()
    return 0


def _submitted(job: Any, kind: str, path: Path) -> str:
    """Submit the driver's script at ``path`` with the job class's command; its job id."""
    submit_cmd = shlex.split(job.submit_command)
    try:
        if kind == "lsf":
            with open(path) as stdin:
                done = subprocess.run(submit_cmd, stdin=stdin, capture_output=True, text=True,
                                      timeout=60)
        else:
            done = subprocess.run([*submit_cmd, str(path)], capture_output=True, text=True,
                                  timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FramebagError(f"cannot submit the driver job with {job.submit_command!r}: "
                            f"{exc}") from None
    found = re.search(job.job_id_regexp, done.stdout) if done.returncode == 0 else None
    if found is None:
        said = (done.stderr.strip() or done.stdout.strip() or f"exit {done.returncode}")
        raise FramebagError(f"submitting the driver job with {job.submit_command!r} failed: "
                            f"{said.splitlines()[-1]} (script kept in {path})")
    return str(found.group("job_id"))


def cmd_submit(args: argparse.Namespace) -> int:
    return submit(args)
