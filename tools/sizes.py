"""Print the longest functions and the largest modules of a package, by line count.

    python tools/sizes.py [PACKAGE_DIR] [-n 10]

A function's length is its lines from ``def`` (decorators excluded) to its last
line, nested functions counted in their parent too; a module's is its line count.
For the closing notes of refactorings (issue 11: no function over 50 lines).
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path


def functions(package: Path) -> list[tuple[int, str]]:
    """``(lines, "module.py:Class.function")`` for every function in ``package``."""
    out = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))

        def walk(node: ast.AST, prefix: str, path: Path = path) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    name = f"{prefix}{child.name}"
                    out.append((child.end_lineno - child.lineno + 1,
                                f"{path.relative_to(package.parent)}:{name}"))
                    walk(child, name + ".")
                elif isinstance(child, ast.ClassDef):
                    walk(child, f"{prefix}{child.name}.")
                else:
                    walk(child, prefix)

        walk(tree, "")
    return sorted(out, reverse=True)


def modules(package: Path) -> list[tuple[int, str]]:
    return sorted(((len(p.read_text().splitlines()), str(p.relative_to(package.parent)))
                   for p in package.rglob("*.py")), reverse=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("package", nargs="?", default=Path(__file__).parents[1] / "framebag",
                    type=Path)
    ap.add_argument("-n", type=int, default=10, help="how many of each (default 10)")
    args = ap.parse_args()
    print(f"longest functions in {args.package}:")
    for n, name in functions(args.package)[: args.n]:
        print(f"  {n:4d}  {name}")
    print("largest modules:")
    for n, name in modules(args.package)[: args.n]:
        print(f"  {n:4d}  {name}")


if __name__ == "__main__":
    main()
