"""The mean and standard deviation image over the scan: frame-shaped folds."""

from framebag import Workflow

workflow = Workflow("mean_image", data="entry/data/data", keys=["entry/keys/key_1"],
                    finished="entry/finished")


@workflow.frame(fold="mean")
def mean(frame):
    return frame


@workflow.frame(fold="std")
def std(frame):
    return frame
