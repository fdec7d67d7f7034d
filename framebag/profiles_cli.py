"""``framebag profiles``: list the cluster profiles, show one resolved, preview its job script."""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from . import clusters, profiles
from .errors import FramebagError


def add_parser(sub: Any) -> None:
    """Register ``framebag profiles [show NAME [--job-script]]`` on the CLI's subparsers."""
    p = sub.add_parser(
        "profiles", help="list cluster profiles, or show one",
        description="List the cluster profiles on the search path with where each comes from, "
                    "or show one as framebag resolves it.")
    p.set_defaults(func=cmd_list)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    show = actions.add_parser("show", help="print a profile with its defaults filled in",
                              description="Print profile NAME (a name or a YAML file) resolved.")
    show.add_argument("name", metavar="NAME", help="profile name or YAML file")
    show.add_argument("--job-script", action="store_true",
                      help="print the batch script dask-jobqueue would submit (submits nothing)")
    show.set_defaults(func=cmd_show)


def cmd_list(args: argparse.Namespace) -> int:
    rows = profiles.list_profiles()
    if not rows:
        raise FramebagError("no profile found; looked in "
                            + ", ".join(str(p) for _, p in profiles.search_path()))
    table = [("NAME", "CLUSTER", "FOUND IN", "FILE")]
    for name, label, path, shadowed in rows:
        try:
            kind = profiles.load(path).cluster
        except FramebagError:
            kind = "INVALID (framebag profiles show for why)"
        note = "  (shadowed by the one above)" if shadowed else ""
        table.append((name, kind, label, f"{path}{note}"))
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for row in table:
        print("  ".join(f"{c:<{w}}" for c, w in zip(row[:3], widths)) + f"  {row[3]}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    prof = profiles.load(args.name)
    if args.job_script:
        print(clusters.job_script(prof), end="")
        return 0
    print(f"# profile {prof.name!r} from {prof.source}")
    print(yaml.safe_dump(profiles.resolved(prof), sort_keys=False, default_flow_style=False),
          end="")
    return 0
