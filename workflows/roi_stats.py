"""Sum, mean and maximum inside a rectangle of every frame."""

from framebag import Workflow

workflow = Workflow("roi_stats", data="entry/data/data", keys=["entry/keys/key_1"],
                    finished="entry/finished")


@workflow.frame
def roi_sum(frame, *, y0=0, y1=16, x0=0, x1=16):
    return frame[y0:y1, x0:x1].sum(dtype="float64")


@workflow.frame
def roi_mean(frame, *, y0=0, y1=16, x0=0, x1=16):
    return frame[y0:y1, x0:x1].mean()


@workflow.frame
def roi_max(frame, *, y0=0, y1=16, x0=0, x1=16):
    return frame[y0:y1, x0:x1].max()
