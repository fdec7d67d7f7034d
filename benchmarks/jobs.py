"""The framebag workflows the benchmark runs (the same jobs as :mod:`benchmarks.reference`)."""

from __future__ import annotations

import numpy as np

from framebag import Workflow

from .scans import DATA, KEY


def per_frame_sum() -> Workflow:
    """``frame.sum()`` as a per-frame Python function (fold: stack)."""
    wf = Workflow("per_frame_sum", data=DATA, keys=[KEY])

    @wf.frame
    def total(frame):
        return frame.sum()

    return wf


def batched_sum() -> Workflow:
    """The same sums as a batched function over the partition's stack."""
    wf = Workflow("batched_sum", data=DATA, keys=[KEY])

    @wf.frames
    def total(frames):
        return frames.sum(axis=(1, 2))

    return wf


def no_op() -> Workflow:
    """A per-frame function that does nothing: what is left is framebag's own cost."""
    wf = Workflow("no_op", data=DATA, keys=[KEY])

    @wf.frame
    def nothing(frame):
        return 0

    return wf


def fft_power() -> Workflow:
    """The CPU-heavy job: the FFT magnitude of every frame, summed into one image."""
    wf = Workflow("fft_power", data=DATA, keys=[KEY])

    @wf.frame(fold="sum")
    def power(frame):
        return np.abs(np.fft.fft2(frame))

    return wf


def memory_job() -> Workflow:
    """The memory case: a value per frame and a frame-sized fold, the two kinds of result."""
    wf = Workflow("memory_job", data=DATA, keys=[KEY])

    @wf.frame
    def total(frame):
        return frame.sum()

    @wf.frame(fold="max")
    def brightest(frame):
        return frame

    return wf
