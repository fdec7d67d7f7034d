"""framebag's benchmark suite: each figure measured beside its plain h5py+numpy reference.

Run it from the repository root with ``python -m benchmarks`` (``--quick`` for a
run of about a minute, ``--help`` for the options). See docs/benchmarks.md.
It is not part of the pytest suite: timings on a shared machine are not tests.
"""
