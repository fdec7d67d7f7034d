"""framebag: per-frame jobs on HDF5 detector data, on dask.

Register per-frame functions on a :class:`Workflow`, then run it on a finished
or live (SWMR) file, on a laptop or a batch cluster, with ``framebag run``.
"""

from __future__ import annotations

from ._version import __version__
from .clusters import workers_skip_main
from .errors import FramebagError
from .folds import Fold, histogram
from .workflow import Workflow, load_workflow

__all__ = ["Workflow", "Fold", "histogram", "FramebagError", "load_workflow", "__version__"]

workers_skip_main()  # scripts need no ``if __name__ == "__main__":`` (see the function)
