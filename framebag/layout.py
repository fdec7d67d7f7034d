"""Names fixed by the output file's layout, shared by the registry and the writer.

A module of its own so that :mod:`framebag.workflow`, which every worker
imports, can refuse a function named like a layout dataset without importing
the output writer (and h5py's writing path) onto the workers.
"""

from __future__ import annotations

__all__ = ["RESERVED"]

#: the datasets and groups of the layout itself, beside the results, in /entry/<workflow>;
#: no function may take these names
RESERVED = ("done", "errors", "checkpoint", "fingerprint")
