"""The mean and standard deviation image over the scan: frame-shaped folds.

Per frame on purpose: the built-in ``mean`` and ``std`` folds update their
float64 accumulators in place, frame by frame (Welford's update), which is
faster than folding a whole stack at once (a float64 copy of the stack and of
its deviations). Exact to float64 rounding.
"""

from framebag import Workflow

workflow = Workflow("mean_image", data="entry/data/data", keys=["entry/keys/key_1"],
                    finished="entry/finished")


@workflow.frame(fold="mean")
def mean(frame):
    return frame


@workflow.frame(fold="std")
def std(frame):
    return frame
