#!/usr/bin/env bash
# The scaling case on a machine with no network (the 16-core device machine): install
# dask, distributed and dask-jobqueue from the wheels in .whl/ (see docs/benchmarks.md for
# how they were downloaded), install framebag itself without its dependencies, then run
#   python -m benchmarks --cases scaling --workers $FB_WORKERS --sizes $FB_SIZES
# and write the table to $OUT (scaling.txt, scaling.json, machine.txt).
#
# Settable: FB_SIZES (GB, default 2,6), FB_WORKERS (default 1,2,4,8,16), FB_REPEAT
# (default 3), FB_DIR (input files, default /tmp/framebag-bench), SITE (install target,
# default /tmp/site), PYTHON (default python3). Run from anywhere: bash benchmarks/device.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/framebag-device-out}
SITE=${SITE:-/tmp/site}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
t0=$(date +%s)

"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl
# the project itself, built with the machine's own setuptools and wheel; where they are
# missing, the checkout is imported instead (python -m benchmarks runs from its root)
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile \
    --no-cache-dir --upgrade --target "$SITE" . \
    || echo "framebag could not be installed; using the checkout's $(pwd)/framebag"
export PYTHONPATH="$SITE"
export PYTHONUNBUFFERED=1

{
    echo "cores: $(nproc)"; uname -a
    grep -m1 "model name" /proc/cpuinfo || true
    free -g | head -2; df -h "$(dirname "${FB_DIR:-/tmp/framebag-bench}")" | tail -1
    "$PY" -c 'import sys, numpy, h5py, dask, distributed, framebag
print("python", sys.version.split()[0], "numpy", numpy.__version__, "h5py", h5py.__version__,
      "hdf5", h5py.version.hdf5_version, "dask", dask.__version__,
      "distributed", distributed.__version__, "framebag", framebag.__version__, framebag.__file__)'
    echo "installed in $(( $(date +%s) - t0 )) s"
} 2>&1 | tee "$OUT/machine.txt"

set +e -o pipefail  # a missed target exits 1: the table is written all the same
"$PY" -m benchmarks --cases scaling --workers "${FB_WORKERS:-1,2,4,8,16}" \
    --sizes "${FB_SIZES:-2,6}" --repeat "${FB_REPEAT:-3}" \
    --dir "${FB_DIR:-/tmp/framebag-bench}" --json "$OUT/scaling.json" 2>&1 | tee "$OUT/scaling.txt"
rc=$?
echo "all done in $(( $(date +%s) - t0 )) s, benchmark exit status $rc" | tee -a "$OUT/machine.txt"
