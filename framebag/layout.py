"""Names fixed by the output file's layout, shared by the registry and the writer.

A module of its own so that :mod:`framebag.workflow`, which every worker
imports, can refuse a function named like a layout dataset without importing
the output writer (and h5py's writing path) onto the workers.
"""

from __future__ import annotations

import re

__all__ = ["RESERVED", "NXDATA_SUFFIX", "AXIS_NAMES"]

#: the datasets and groups of the layout itself, beside the results, in /entry/<workflow>;
#: no function may take these names
RESERVED = ("done", "errors", "checkpoint", "fingerprint", "roi_mask")
#: result ``<name>`` is plotted from the NXdata group ``<name>_nxdata`` beside it
NXDATA_SUFFIX = "_nxdata"
#: the axis datasets the NXdata groups hold beside a result's link: no result may be named so
AXIS_NAMES = re.compile(r"scan_\d+|frame_(?:x|y|\d+)|bin_(?:centres|edges)")
