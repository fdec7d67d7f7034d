"""``framebag workflows``: the example workflows and those in ``./workflows``, described.

Examples ship as the package :mod:`framebag.workflows` (the repository's
``workflows/`` directory) and run by dotted name
(``framebag run framebag.workflows.frame_sum scan.h5``); ``.py`` files in
``./workflows`` (or the directories given) run by path. Each is loaded with
:func:`framebag.load_workflow`, exactly as ``run`` loads it, so a module that
would fail to run is listed with its error.
"""

from __future__ import annotations

import argparse
import ast
import os
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .describe import table
from .errors import FramebagError
from .workflow import Workflow, load_workflow

__all__ = ["Entry", "discover", "describe", "add_parser"]

PACKAGE = "framebag.workflows"


@dataclass
class Entry:
    """One workflow found: how to name it on ``run``, its file, and the loaded Workflow."""

    spec: str
    path: Path | None
    workflow: Workflow | None
    doc: str = ""
    error: str = ""


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def _load(spec: str, path: Path | None) -> Entry:
    try:
        wf = load_workflow(spec)
    except FramebagError as exc:
        return Entry(spec, path, None, error=str(exc))
    doc = ""
    if path is not None:
        try:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        except (OSError, SyntaxError, UnicodeDecodeError):
            doc = ""
    return Entry(spec, path, wf, doc=_first_line(doc))


def discover(dirs: list[str | os.PathLike] | None = None) -> list[Entry]:
    """The packaged examples, then every ``*.py`` workflow in ``dirs`` (default ``./workflows``).

    A directory that is the packaged examples' own (the repository checkout) is not
    listed twice; files starting with ``_`` are skipped.
    """
    import importlib

    pkg = importlib.import_module(PACKAGE)
    pkg_dirs = {Path(p).resolve() for p in pkg.__path__}
    entries = []
    for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        path = next((Path(p) / f"{mod.name}.py" for p in pkg.__path__
                     if (Path(p) / f"{mod.name}.py").is_file()), None)
        entries.append(_load(f"{PACKAGE}.{mod.name}", path))
    for d in dirs if dirs is not None else ["workflows"]:
        d = Path(d)
        if not d.is_dir():
            if dirs is not None:
                raise FramebagError(f"workflow directory {str(d)!r} does not exist")
            continue
        if d.resolve() in pkg_dirs:
            continue
        for path in sorted(d.glob("*.py")):
            if not path.name.startswith("_"):
                entries.append(_load(str(path), path))
    return entries


def describe(entry: Entry) -> list[str]:
    """The lines ``framebag workflows`` prints for one entry."""
    lines = [entry.spec]
    wf = entry.workflow
    if wf is None:
        return [*lines, f"  cannot load: {entry.error}"]
    if entry.doc:
        lines.append(f"  {entry.doc}")
    if entry.path is not None:
        lines.append(f"  file {entry.path}")
    where = [f"data {wf.data or '-'}", f"keys {', '.join(wf.keys) or '-'}"]
    if wf.finished:
        where.append(f"finished {wf.finished}")
    lines.append(f"  workflow {wf.name!r}: {', '.join(where)}")
    rows = []
    for fn in wf.functions.values():
        kind = "batched" if fn.batched else "per frame"
        if fn.wants_index:
            kind += ", gets index"
        for want in fn.wants:
            kind += f", gets {want}"
        params = " ".join(f"{k}={v!r}" for k, v in fn.defaults.items())
        rows.append([fn.name, fn.fold.name, kind, params])
    for st in wf.setups.values():
        params = " ".join(f"{k}={v!r}" for k, v in st.defaults.items())
        rows.append([st.name, "-", "setup, once per worker", params])
    lines += table(rows, "    ")
    if wf.params:
        sets = " ".join(f"--set {k}={v!r}" if isinstance(v, str) else f"--set {k}={v}"
                        for k, v in wf.params.items())
        lines.append(f"  parameters: {sets}")
    return lines


def add_parser(sub: Any) -> None:
    """Register ``framebag workflows``."""
    p = sub.add_parser("workflows", help="list the example workflows and those in ./workflows",
                       description="List the packaged example workflows and the workflow files "
                       "in ./workflows (or DIR), with their functions, folds and parameters.")
    p.add_argument("dirs", nargs="*", metavar="DIR",
                   help="directories of workflow .py files (default: ./workflows)")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    entries = discover(args.dirs or None)
    for e in entries:
        print("\n".join(describe(e)))
        print()
    print("run one with: framebag run WORKFLOW INPUT  (WORKFLOW as listed: a dotted name or a "
          "file); copy an example to start your own")
    return 0
