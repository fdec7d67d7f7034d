"""The example workflows: equal to numpy, and written the fast way their docstrings promise.

Their results on a real scan through a real cluster are checked against numpy
in ``test_core.test_example_workflows_equal_numpy``; here each batched function
is called directly on a stack, as a worker calls it, for the cases that a small
random scan does not reach (counts near the top of uint16, all-zero frames,
float64 data) and for what makes it fast (no float64 copy of the stack).
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from framebag import load_workflow


def _func(path: str, name: str):
    return load_workflow(path).functions[name].func


def _com64(stack: np.ndarray) -> dict[str, np.ndarray]:
    """Centre x, y and intensity of each frame, in float64 (the reference)."""
    f = stack.astype(np.float64)
    y, x = np.indices(f.shape[1:])
    with np.errstate(invalid="ignore", divide="ignore"):
        total = f.sum(axis=(1, 2))
        return {"x": (f * x).sum(axis=(1, 2)) / total, "y": (f * y).sum(axis=(1, 2)) / total,
                "intensity": total}


def test_centre_of_mass_float32_is_within_a_thousandth_of_a_pixel():
    com = _func("workflows/centre_of_mass.py", "com_x")  # one call gives x, y and intensity
    rng = np.random.default_rng(1)
    # bright frames: totals far above 2**24, where float32 sums round
    stack = rng.integers(40000, 65536, size=(40, 128, 128)).astype(np.uint16)
    stack[:, 100:, 100:] = 65535
    stack[7] = 0
    got, want = com(stack), _com64(stack)
    assert list(got) == ["x", "y", "intensity"]
    for name in ("x", "y"):
        assert got[name].shape == (40,) and got[name].dtype == np.float32
        assert np.isnan(got[name][7])
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-3, equal_nan=True)
    assert got["intensity"].dtype == np.float32 and got["intensity"][7] == 0
    np.testing.assert_allclose(got["intensity"], want["intensity"], rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float64", "uint32", "int32"])
def test_centre_of_mass_keeps_float64_for_wider_data(dtype):
    com = _func("workflows/centre_of_mass.py", "com_x")
    rng = np.random.default_rng(2)
    stack = rng.integers(0, 2**30, size=(5, 33, 17)).astype(dtype)
    got, want = com(stack), _com64(stack)
    for name in ("x", "y", "intensity"):
        assert got[name].dtype == np.float64
        np.testing.assert_allclose(got[name], want[name], rtol=1e-12)


def test_centre_of_mass_makes_no_float_copy_of_the_stack():
    com = _func("workflows/centre_of_mass.py", "com_x")
    stack = np.random.default_rng(3).integers(0, 100, size=(256, 128, 128)).astype(np.uint16)
    com(stack[:2])  # imports and first-call allocations out of the way
    tracemalloc.start()
    try:
        com(stack)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # the stack is 8 MiB; a float copy of it would be 16 or 32 MiB
    assert peak < stack.nbytes / 4, f"peak {peak / 2**20:.1f} MiB for an 8 MiB stack"


def test_radial_profile_and_roi_stats_equal_numpy_on_a_stack():
    rng = np.random.default_rng(4)
    stack = rng.integers(0, 65536, size=(6, 20, 24)).astype(np.uint16)
    f64 = stack.astype(np.float64)
    prof = _func("workflows/radial_profile.py", "profile")(stack, cy=5.0, cx=-1.0, nbins=6)
    y, x = np.indices(stack.shape[1:])
    r = np.hypot(y - 5.0, x - 11.5)
    ring = np.minimum((r / r.max() * 6).astype(int), 5)
    want = np.array([[f[ring == k].mean() for k in range(6)] for f in f64])
    np.testing.assert_allclose(prof, want, rtol=1e-12)

    roi = {"y0": 2, "y1": 9, "x0": 3, "x1": 20}
    box = f64[:, 2:9, 3:20]
    np.testing.assert_array_equal(_func("workflows/roi_stats.py", "roi_sum")(stack, **roi),
                                  box.sum(axis=(1, 2)))
    np.testing.assert_allclose(_func("workflows/roi_stats.py", "roi_mean")(stack, **roi),
                               box.mean(axis=(1, 2)), rtol=1e-12)
    np.testing.assert_array_equal(_func("workflows/roi_stats.py", "roi_max")(stack, **roi),
                                  stack[:, 2:9, 3:20].max(axis=(1, 2)))
