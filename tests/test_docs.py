"""The docs run as written: every code block of the README and docs/ is checked against the code.

- every ``yaml`` block that is a profile (has ``cluster:``) loads with the profile loader, and
  the README's ``slurm.yaml`` block is the shipped file;
- every ``framebag ...`` line of a shell block parses with the command-line parser;
- every ``python`` block runs: a workflow module loads, a fragment of one registers its
  functions on a workflow, and a script runs as ``python script.py`` (a subprocess, no
  ``if __name__ == "__main__":`` guard) in a directory holding a small simulated scan.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from framebag import Workflow, clusters, load_workflow, profiles
from framebag.cli import build_parser
from framebag.simulate import simulate

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks(lang: str | tuple[str, ...]) -> list[tuple[str, str]]:
    """``(where, text)`` of every fenced block in the docs whose language is ``lang``."""
    langs = (lang,) if isinstance(lang, str) else lang
    out = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            if m.group(1) in langs:
                line = text[: m.start()].count("\n") + 1
                out.append((f"{doc.relative_to(ROOT)}:{line}", m.group(2)))
    return out


def _ids(items: list[tuple[str, str]]) -> list[str]:
    return [where for where, _ in items]


# profiles ---------------------------------------------------------------------------

PROFILES = [(w, t) for w, t in blocks("yaml") if re.search(r"^cluster:", t, re.M)]


def test_the_docs_have_profile_blocks():
    assert len(PROFILES) >= 2  # the README's and the HPC guide's at least


@pytest.mark.parametrize("where, text", PROFILES, ids=_ids(PROFILES))
def test_yaml_profile_block_loads(where, text, tmp_path):
    path = tmp_path / "doc.yaml"
    path.write_text(text)
    prof = profiles.load(path)
    assert prof.cluster == yaml.safe_load(text)["cluster"]


@pytest.mark.parametrize("where, text", PROFILES, ids=_ids(PROFILES))
def test_yaml_batch_profile_block_previews_its_job_script(where, text, tmp_path):
    """``profiles show FILE --job-script`` works here, even without the profile's interface."""
    path = tmp_path / "doc.yaml"
    path.write_text(text)
    prof = profiles.load(path)
    if not prof.is_batch:
        pytest.skip(f"{where} is cluster {prof.cluster!r}: no job script")
    script = clusters.job_script(prof)
    assert "distributed.cli.dask_worker" in script
    if prof.options.get("interface"):
        assert f"--interface {prof.options['interface']}" in script


def test_readme_slurm_block_is_the_shipped_file():
    shipped = (ROOT / "cluster_profiles" / "slurm.yaml").read_text()
    readme = [t for w, t in PROFILES if w.startswith("README") and "cluster: slurm" in t]
    assert readme == [shipped]


# command lines ----------------------------------------------------------------------


def command_lines() -> list[tuple[str, str]]:
    """Every ``framebag ...`` command of the shell blocks, split at ``&&``, comments dropped."""
    out = []
    for where, text in blocks(("bash", "sh", "console", "shell")):
        for raw in text.splitlines():
            line = raw.split(" #")[0].strip().removeprefix("$ ").rstrip("&").strip()
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith("framebag ") and "..." not in part and "[" not in part:
                    out.append((where, part))
    return out


COMMANDS = command_lines()


def test_the_docs_have_command_lines():
    assert len(COMMANDS) >= 10


@pytest.mark.parametrize("where, line", COMMANDS, ids=[f"{w} {c}" for w, c in COMMANDS])
def test_command_line_parses(where, line, capsys):
    argv = shlex.split(line)[1:]
    try:
        args, rest = build_parser().parse_known_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: {line!r} does not parse: {capsys.readouterr().err.strip()}")
    assert not rest, f"{where}: {line!r}: unrecognized {rest}"
    if args.command == "run":
        assert not args.extra, f"{where}: {line!r}: stray argument(s) {args.extra}"


# python -----------------------------------------------------------------------------

PYTHON = blocks("python")


def _kind(text: str) -> str:
    if re.search(r"^\w+ = Workflow\(", text, re.M):
        return "module"
    if "@workflow." in text:
        return "fragment"
    return "script"


MODULES = [(w, t) for w, t in PYTHON if _kind(t) == "module"]
FRAGMENTS = [(w, t) for w, t in PYTHON if _kind(t) == "fragment"]
SCRIPTS = [(w, t) for w, t in PYTHON if _kind(t) == "script"]


def test_the_docs_have_python_blocks_of_each_kind():
    assert MODULES and FRAGMENTS and len(SCRIPTS) >= 4


@pytest.mark.parametrize("where, text", MODULES, ids=_ids(MODULES))
def test_workflow_module_block_loads(where, text, tmp_path):
    path = tmp_path / "doc_module.py"
    path.write_text(text)
    wf = load_workflow(path)
    assert wf.functions


@pytest.mark.parametrize("where, text", FRAGMENTS, ids=_ids(FRAGMENTS))
def test_workflow_fragment_block_registers_its_functions(where, text):
    import numpy as np

    workflow = Workflow("doc", data="entry/data/data", keys=["entry/keys/key_1"])
    exec(compile(text, where, "exec"), {"np": np, "workflow": workflow})  # noqa: S102
    names = re.findall(r"^def (\w+)\(", text, re.M)
    registered = [n for n in names if n in {f.function for f in workflow.functions.values()}]
    assert registered, f"{where}: no function registered"


@pytest.fixture(scope="module")
def docs_dir(tmp_path_factory) -> Path:
    """A directory like the one the docs are run in: a small finished scan, the examples."""
    d = tmp_path_factory.mktemp("docs")
    simulate(d / "scan.h5", (4, 5), (32, 32), rate=1e6)
    shutil.copytree(ROOT / "workflows", d / "workflows")
    hits = next(t for _, t in MODULES if 'Workflow("hits"' in t)
    (d / "hits.py").write_text(hits)
    env = dict(os.environ, DASK_LOGGING__DISTRIBUTED="error")
    run = subprocess.run([sys.executable, "-m", "framebag.cli", "-q", "run",
                          "workflows/frame_sum.py", "scan.h5"],
                         cwd=d, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    return d


#: distributed's own ERROR record when a worker's heartbeat is in flight as a closing cluster
#: drops the worker's comms (dask/distributed#7105, open upstream; likelier on a loaded
#: machine): a log of the shutdown, not a failure of the script. Only this record is taken
#: out of stderr before it is searched for tracebacks: header, traceback, up to the
#: CommClosedError of the heartbeat's own comm.
HEARTBEAT_AT_CLOSE = re.compile(
    r"^[-\d]+ [:,\d]+ - distributed\.worker - ERROR - Failed to communicate with scheduler "
    r"during heartbeat\.\n(?:(?![-\d]+ [:,\d]+ - ).*\n)*?"
    r"distributed\.comm\.core\.CommClosedError: in <TCP \(closed\) "
    r"ConnectionPool\.heartbeat_worker [^\n]*>: Stream is closed\n", re.M)


def test_heartbeat_at_close_drops_only_that_record():
    record = (
        "2026-11-27 20:33:31,834 - distributed.worker - ERROR - Failed to communicate with "
        "scheduler during heartbeat.\nTraceback (most recent call last):\n  File \"x.py\", "
        "line 1, in read\ntornado.iostream.StreamClosedError: Stream is closed\n\nThe above "
        "exception was the direct cause of the following exception:\n\nTraceback (most "
        "recent call last):\n  File \"y.py\", line 2, in heartbeat\n"
        "distributed.comm.core.CommClosedError: in <TCP (closed) ConnectionPool."
        "heartbeat_worker local=tcp://127.0.0.1:1 remote=tcp://127.0.0.1:2>: Stream is closed\n")
    other = "Traceback (most recent call last):\nValueError: the script's own\n"
    assert HEARTBEAT_AT_CLOSE.sub("", "framebag: dashboard\n" + record + other) == \
        "framebag: dashboard\n" + other
    # a record of another failure is kept whole
    mid = record.replace("ConnectionPool.heartbeat_worker", "ConnectionPool.gather")
    assert HEARTBEAT_AT_CLOSE.sub("", mid) == mid


@pytest.mark.parametrize("where, text", SCRIPTS, ids=_ids(SCRIPTS))
def test_python_script_block_runs_as_a_script(where, text, docs_dir):
    script = docs_dir / "script.py"
    script.write_text(text)
    env = dict(os.environ, DASK_LOGGING__DISTRIBUTED="error")
    out = subprocess.run([sys.executable, str(script)], cwd=docs_dir, capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, f"{where} failed as a script:\n{out.stderr[-3000:]}"
    err = HEARTBEAT_AT_CLOSE.sub("", out.stderr)
    assert "Traceback" not in err, err[-3000:]
