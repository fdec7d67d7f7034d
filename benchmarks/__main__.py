"""``python -m benchmarks``: run the suite and print the table (see :mod:`benchmarks.run`).

On some processors OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are set in the
environment and slow numpy down; they are dropped here, for this command and
the processes it starts only (before numpy is imported), never for the tests.
"""

import os

for _name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(_name, None)

from benchmarks.run import main  # noqa: E402

raise SystemExit(main())
