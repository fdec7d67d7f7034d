"""framebag: per-frame jobs on HDF5 detector data, on dask.

Register per-frame functions on a :class:`Workflow`, then run it on a finished
or live (SWMR) file, on a laptop or a batch cluster, with ``framebag run``,
:meth:`Workflow.run` or :func:`run`; :func:`cluster` starts one cluster for
several runs. These names are the public API; the modules behind them are not.

``run``, ``run_many`` and ``Results`` come from the driver's engine, which is
imported when first asked for: the workers import this package too (to unpickle
the workflow's functions) and must not load the output writer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .clusters import cluster, workers_skip_main
from .errors import FramebagError
from .folds import Fold, histogram
from .options import RunOptions
from .workflow import Workflow, load_workflow

if TYPE_CHECKING:
    from .engine import Results, run, run_many

__all__ = ["Workflow", "Fold", "histogram", "Results", "run", "run_many", "RunOptions",
           "cluster", "load_workflow", "FramebagError", "__version__"]

#: public names of the engine, imported when first looked up (see the docstring)
_FROM_ENGINE = ("Results", "run", "run_many")


def __getattr__(name: str) -> Any:
    if name in _FROM_ENGINE:
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'framebag' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_FROM_ENGINE))


workers_skip_main()  # scripts need no ``if __name__ == "__main__":`` (see the function)
del workers_skip_main
