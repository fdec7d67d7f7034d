import numpy as np

from framebag import Workflow


def test_api_run_with_client_equals_numpy(make_scan, client, tmp_path, unchanged):
    path, data = make_scan((5, 6), (8, 8))
    unchanged(path)
    wf = Workflow("t", data="entry/data/data", keys=["entry/keys/key_1"])

    @wf.frame
    def total(frame):
        return frame.sum()

    @wf.frame(fold="max")
    def brightest(frame):
        return frame

    res = wf.run(path, tmp_path / "out.h5", client=client)
    np.testing.assert_array_equal(res["total"], data.sum(axis=(2, 3)))
    np.testing.assert_array_equal(res["brightest"], data.max(axis=(0, 1)))
    assert res.done.all()
