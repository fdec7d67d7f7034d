"""framebag on a real SLURM (tests/harness/start-slurm.sh): jobs submitted, work done inside them,
a job cancelled mid-run, a job that never starts, and no job left behind.

Outside CI these tests skip when no SLURM answers; with ``CI`` set that is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

import framebag
from framebag import tuning
from framebag.clusters import start_client
from framebag.errors import FramebagError

pytestmark = pytest.mark.slurm
PROBE = 8 << 20  # the malloc the tuning's read-back makes (see test_tuning.PROBE)
ROOT = Path(__file__).resolve().parents[1]
FRAME_SUM = ROOT / "workflows" / "frame_sum.py"


def _no_slurm_reason() -> str | None:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "no SLURM client tools (sbatch, sinfo) on PATH"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%a %D"], capture_output=True, text=True,
                             timeout=10)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 10 s"
    if out.returncode != 0 or "up" not in out.stdout:
        err = (out.stderr.strip().splitlines() or ["no partition is up"])[-1]
        return f"no SLURM answers ({err}); start one with: sudo bash tests/harness/start-slurm.sh"
    return None


@pytest.fixture(scope="module", autouse=True)
def slurm() -> None:
    reason = _no_slurm_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but SLURM is not usable: {reason}")
        pytest.skip(reason)


def queued(ids) -> set[str]:
    """Which of ``ids`` SLURM still lists (pending, running or completing)."""
    out = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(map(str, ids))],
                         capture_output=True, text=True, timeout=10)
    return set(out.stdout.split())


def node_of(job: str) -> str:
    """The node SLURM reports for a running job (one node: the profiles ask for one)."""
    out = subprocess.run(["squeue", "-h", "-o", "%N", "-j", str(job)], capture_output=True,
                         text=True, timeout=10)
    return out.stdout.strip()


def nodes() -> set[str]:
    """The names of the cluster's nodes, as ``sinfo`` reports them."""
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True,
                         timeout=10)
    return set(out.stdout.split())


def gone(ids, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while queued(ids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def write_profile(path: Path, *, jobs: int | None = 2, adapt: dict | None = None,
                  timeout: float = 60, **options) -> Path:
    opts = {"cores": 1, "processes": 1, "memory": "1GiB", "walltime": "00:10:00",
            "queue": "debug", "interface": "lo", "log_directory": str(path.parent / "logs"),
            "death_timeout": 30}
    opts.update(options)
    prof: dict = {"cluster": "slurm", "options": opts, "first_worker_timeout": timeout}
    if adapt is not None:
        prof["adapt"] = adapt
    else:
        prof["scale"] = {"jobs": jobs}
    path.write_text(yaml.safe_dump(prof))
    return path


def expected_frame_sum(data: np.ndarray) -> dict[str, np.ndarray]:
    return {"total": data.sum(axis=(-2, -1)), "roi": data[..., 0:10, :].sum(axis=(-2, -1)),
            "brightest": data.max(axis=(0, 1))}


def test_frame_sum_runs_inside_two_slurm_jobs(tmp_path, make_scan, unchanged):
    inp, data = make_scan((12, 10), (16, 16))
    unchanged(inp)
    prof = write_profile(tmp_path / "two.yaml")
    wf = framebag.load_workflow(FRAME_SUM)
    with start_client(prof) as client:
        client.wait_for_workers(2, timeout=60)
        job_of_worker = client.run(lambda: os.environ.get("SLURM_JOB_ID"))
        host_of_worker = client.run(lambda: os.environ.get("SLURMD_NODENAME"))
        # the jobs' workers start with dask's MALLOC_TRIM_THRESHOLD_; the run tunes them
        untuned = client.run(tuning.mmapped, PROBE)
        node_of_job = {j: node_of(j) for j in job_of_worker.values() if j}
        res = wf.run(inp, tmp_path / "out.h5", client=client, partition_bytes=4096)
        tuned = client.run(tuning.mmapped, PROBE)
    assert list(untuned.values()) == [True, True], untuned
    assert list(tuned.values()) == [False, False], tuned
    ids = set(job_of_worker.values())
    assert len(job_of_worker) == 2 and None not in ids and len(ids) == 2, job_of_worker
    # each worker runs on the node SLURM says its job runs on, whatever the nodes are named
    assert {w: node_of_job[j] for w, j in job_of_worker.items()} == host_of_worker
    assert set(host_of_worker.values()) <= nodes(), host_of_worker
    for name, want in expected_frame_sum(data).items():
        np.testing.assert_array_equal(res[name], want, err_msg=name)
    assert res.done.all()
    assert gone(ids), f"jobs {ids} still queued after the client closed"


SLURM_FRAMES = '''
import os
import time
from framebag import Workflow

workflow = Workflow("where", data="entry/data/data", keys=["entry/keys/key_1"])


@workflow.frame
def total(frame):
    return frame.sum()


@workflow.frame
def job(frame, *, nap=0.0):
    """The SLURM job the frame was processed in (0 outside SLURM), after ``nap`` seconds."""
    time.sleep(nap)
    return int(os.environ.get("SLURM_JOB_ID", 0))
'''


def test_adaptive_profile_through_workflow_run(tmp_path, make_scan):
    """adapt: {minimum_jobs: 0, maximum_jobs: 2} starts with one job and asks for a second
    under about 8 s of queued work; every frame runs inside a SLURM job and no job outlives
    the run."""
    inp, data = make_scan((10, 8), (16, 16))
    wf_file = tmp_path / "where.py"
    wf_file.write_text(SLURM_FRAMES)
    name = f"fb-adapt-{os.getpid()}"
    prof = write_profile(tmp_path / "adaptive.yaml",
                         adapt={"minimum_jobs": 0, "maximum_jobs": 2, "target_duration": "1s"},
                         job_extra_directives=[f"--job-name={name}"])
    seen: set[str] = set()
    last = [0.0]

    def watch(stats):
        if time.monotonic() - last[0] > 0.3:
            last[0] = time.monotonic()
            seen.update(subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"],
                                       capture_output=True, text=True, timeout=10).stdout.split())

    res = framebag.load_workflow(wf_file).run(inp, tmp_path / "out.h5", profile=str(prof),
                                              partition_bytes=4096, params={"nap": 0.1},
                                              progress=watch)
    np.testing.assert_array_equal(res["total"], data.sum(axis=(-2, -1)))
    used = {str(j) for j in np.unique(res["job"])}
    assert "0" not in used, "some frames were processed outside any SLURM job"
    assert used <= seen and len(seen) >= 2, f"adapt never asked for a 2nd job: {seen}, used {used}"
    assert gone(seen), f"jobs {seen} still queued after the run"


def test_cluster_context_runs_two_scans_on_the_same_jobs(tmp_path, make_scan):
    """``framebag.cluster(profile, workers=2)`` submits the jobs once; both runs' frames are
    processed inside those jobs, on whatever nodes SLURM names, and the jobs end with
    the block."""
    (a, data_a), (b, data_b) = make_scan((6, 5), (16, 16)), make_scan((5, 4), (16, 16), seed=1)
    wf_file = tmp_path / "where.py"
    wf_file.write_text(SLURM_FRAMES)
    wf = framebag.load_workflow(wf_file)
    prof = write_profile(tmp_path / "one.yaml", jobs=1)  # the override asks for two
    with framebag.cluster(prof, workers=2, announce=False) as client:
        client.wait_for_workers(2, timeout=60)
        jobs = set(client.run(lambda: os.environ.get("SLURM_JOB_ID")).values())
        hosts = set(client.run(lambda: os.environ.get("SLURMD_NODENAME")).values())
        first = wf.run(a, tmp_path / "a_out.h5", client=client, partition_bytes=4096)
        second = wf.run(b, tmp_path / "b_out.h5", client=client, partition_bytes=4096)
    assert len(jobs) == 2 and None not in jobs, jobs
    assert hosts <= nodes(), hosts
    np.testing.assert_array_equal(first["total"], data_a.sum(axis=(-2, -1)))
    np.testing.assert_array_equal(second["total"], data_b.sum(axis=(-2, -1)))
    used = {str(j) for r in (first, second) for j in np.unique(r["job"])}
    assert used <= jobs, f"frames ran outside the context's jobs {jobs}: {used}"
    assert gone(jobs), f"jobs {jobs} still queued after the block"


def test_scancel_one_job_mid_run(tmp_path, make_scan):
    """One of two jobs is cancelled after the first partial arrives: dask moves its work to
    the other job and the run finishes correctly, or it stops clearly and --resume completes it."""
    inp, data = make_scan((20, 20), (32, 32), seed=3)
    wf_file = tmp_path / "where.py"
    wf_file.write_text(SLURM_FRAMES)
    wf = framebag.load_workflow(wf_file)
    out = tmp_path / "out.h5"
    prof = write_profile(tmp_path / "two.yaml")
    killed: dict[str, int] = {}
    resumed: list[str] = []
    with start_client(prof) as client:
        client.wait_for_workers(2, timeout=60)
        jobs = sorted(set(client.run(lambda: os.environ["SLURM_JOB_ID"]).values()))

        def cancel_one(stats):
            if not killed and stats["processed"] > 0:
                subprocess.run(["scancel", jobs[0]], check=True, timeout=10)
                killed[jobs[0]] = stats["processed"]

        try:
            res = wf.run(inp, out, client=client, partition_bytes=2048, progress=cancel_one)
        except FramebagError as exc:  # allowed: a clear stop, then a resume that completes
            assert "resume" in str(exc), exc
            resumed.append(str(exc))
            res = wf.run(inp, out, client=client, partition_bytes=2048, resume=True)
        survivors = set(client.run(lambda: os.environ["SLURM_JOB_ID"]).values())
    assert killed, "the run ended before a job could be cancelled"
    assert killed[jobs[0]] < data.shape[0] * data.shape[1], "cancelled after the run's end"
    assert survivors == {jobs[1]}, survivors
    np.testing.assert_array_equal(res["total"], data.sum(axis=(-2, -1)))
    assert res.done.all()
    assert set(np.unique(res["job"]).astype(str)) <= set(jobs)
    assert gone(jobs), f"jobs {jobs} still queued after the client closed"
    print(f"cancelled job {jobs[0]} after {killed[jobs[0]]} frames; "
          f"{'resumed after: ' + resumed[0] if resumed else 'finished without a resume'}")


def test_first_worker_timeout_names_jobs_and_cancels_them(tmp_path):
    logs = tmp_path / "joblogs"
    prof = write_profile(tmp_path / "never.yaml", jobs=1, timeout=3, log_directory=str(logs),
                         job_extra_directives=["--begin=now+1hour"])
    t0 = time.monotonic()
    with pytest.raises(FramebagError) as info:
        with start_client(prof, announce=False):
            pytest.fail("a job that cannot start yielded a client")
    took = time.monotonic() - t0
    msg = str(info.value)
    ids = [w.strip(",;()") for w in msg.split() if w.strip(",;()").isdigit()]
    assert ids, msg
    assert str(logs) in msg and "interface" in msg and "queue" in msg and "Python" in msg, msg
    assert "PENDING" in msg, msg
    assert took < 20, took
    assert gone(ids), f"pending job(s) {ids} were left queued"


def test_refused_submission_stops_at_once_with_sbatch_error(tmp_path):
    prof = write_profile(tmp_path / "bad.yaml", jobs=1, queue="nosuchpartition")
    t0 = time.monotonic()
    with pytest.raises(FramebagError, match="submitting a job with 'sbatch' failed: .*partition"):
        with start_client(prof, announce=False):
            pytest.fail("a refused job yielded a client")
    assert time.monotonic() - t0 < 15


def test_job_that_dies_at_start_is_reported_before_the_timeout(tmp_path):
    prof = write_profile(tmp_path / "nopython.yaml", jobs=1, timeout=60,
                         python="/nonexistent/bin/python")
    t0 = time.monotonic()
    with pytest.raises(FramebagError) as info:
        with start_client(prof, announce=False):
            pytest.fail("a job without Python yielded a client")
    msg = str(info.value)
    assert "ended before any worker connected" in msg and "/nonexistent/bin/python" in msg, msg
    assert time.monotonic() - t0 < 30
    errs = list((tmp_path / "logs").glob("*.err"))
    assert errs and "/nonexistent/bin/python" in errs[0].read_text()


@pytest.mark.parametrize("sig", [2, 15], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_and_sigterm_cancel_the_jobs(tmp_path, make_scan, sig):
    """SIGINT or SIGTERM to a running ``framebag run`` on SLURM: exit 130, no job left queued."""
    half = np.zeros((4, 4), dtype=bool)
    half[:2] = True  # the rest never completes: --follow keeps the run waiting
    inp, _ = make_scan((4, 4), (8, 8), complete=half)
    prof = write_profile(tmp_path / "two.yaml", jobs=1,
                         job_extra_directives=[f"--job-name=fb-signal-{sig}"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "framebag.cli", "run", str(FRAME_SUM), str(inp), "-o",
         str(tmp_path / "out.h5"), "--profile", str(prof), "--follow", "--timeout", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        ids: list[str] = []
        while not ids and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            q = subprocess.run(["squeue", "-h", "-n", f"fb-signal-{sig}", "-o", "%i %T"],
                               capture_output=True, text=True, timeout=10).stdout.split("\n")
            ids = [line.split()[0] for line in q if line.endswith("RUNNING")]
        assert ids, f"the job never ran; framebag said: {proc.stderr.read() if proc.poll() else ''}"
        time.sleep(1.0)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert gone(ids), f"job(s) {ids} still queued after Ctrl-C"


def test_job_that_can_never_start_stops_the_wait_with_the_reason(tmp_path):
    """More cores than any node has: PENDING (PartitionConfig) is said at once, not waited out."""
    prof = write_profile(tmp_path / "big.yaml", jobs=1, timeout=300, cores=64, processes=1)
    t0 = time.monotonic()
    with pytest.raises(FramebagError) as info:
        with start_client(prof, announce=False):
            pytest.fail("a job that can never start yielded a client")
    msg = str(info.value)
    assert "can never start" in msg and "PENDING (PartitionConfig)" in msg, msg
    assert "more than any node of the partition has" in msg and "cores 64" in msg, msg
    assert time.monotonic() - t0 < 60
    ids = [w for w in msg.replace(",", " ").split() if w.isdigit()]
    assert ids and gone(ids), f"job(s) {ids} left queued"


def test_waiting_for_the_first_worker_says_which_jobs_pend_and_why(tmp_path, caplog):
    import logging

    prof = write_profile(tmp_path / "later.yaml", jobs=1, timeout=5,
                         job_extra_directives=["--begin=now+1hour"])
    with caplog.at_level(logging.WARNING, logger="framebag"):
        with pytest.raises(FramebagError, match=r"PENDING \(BeginTime\)"):
            with start_client(prof, announce=False, report_every=1.0):
                pytest.fail("a job that cannot start yet yielded a client")
    waits = [r.getMessage() for r in caplog.records
             if r.getMessage().startswith("waiting for the first worker")]
    assert len(waits) >= 2, waits  # one a second, for ~4 s
    assert all("slurm job(s)" in w and "PENDING (BeginTime)" in w for w in waits), waits


def test_sigterm_before_any_output_does_not_promise_one(tmp_path, make_scan):
    inp, _ = make_scan((2, 2), (8, 8))
    name = f"fb-early-term-{os.getpid()}"
    prof = write_profile(tmp_path / "later.yaml", jobs=1, timeout=120,
                         job_extra_directives=["--begin=now+1hour", f"--job-name={name}"])
    out = tmp_path / "out.h5"
    proc = subprocess.Popen(
        [sys.executable, "-m", "framebag.cli", "run", str(FRAME_SUM), str(inp), "-o", str(out),
         "--profile", str(prof)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        ids: list[str] = []
        while not ids and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            ids = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True,
                                 text=True, timeout=10).stdout.split()
        assert ids, "the job was never queued"
        proc.send_signal(15)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert not out.exists()
    assert "the output keeps what was done" not in err
    assert "interrupted before any output was written" in err, err
    assert gone(ids)


def test_submit_runs_the_driver_in_a_slurm_job(tmp_path, make_scan):
    """``framebag submit``: the driver runs in a SLURM job of its own and starts its workers'
    job from there; the output equals numpy and the log is where submit said."""
    inp, data = make_scan((6, 5), (16, 16), seed=4)
    prof = write_profile(tmp_path / "one.yaml", jobs=1)
    out = tmp_path / "out.h5"
    env = dict(os.environ, DASK_LOGGING__DISTRIBUTED="error")
    sub = subprocess.run(
        [sys.executable, "-m", "framebag.cli", "submit", str(FRAME_SUM), inp.name, "-o", "out.h5",
         "--profile", str(prof), "--set", "y1=5", "--partition-bytes", "4KiB",
         "--driver-memory", "1GiB", "--driver-walltime", "00:05:00"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert sub.returncode == 0, sub.stderr
    said = dict(line.strip().split(":", 1) for line in sub.stdout.splitlines()[1:])
    job = sub.stdout.split()[3]
    assert sub.stdout.startswith(f"submitted driver job {job} (slurm"), sub.stdout
    log = Path(said["log"].split()[0])
    assert log == tmp_path / "logs" / f"framebag-driver-{job}.err", said
    assert Path(said["output"].strip()) == out
    try:
        assert gone([job], within=240), f"driver job {job} still queued after 240 s"
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=10)
    text = log.read_text()
    assert "30 frames processed, none failed" in text and str(out) in text, text
    with h5py.File(out, "r") as f:
        g = f["entry/frame_sum"]
        np.testing.assert_array_equal(g["total"][()], data.sum(axis=(-2, -1)))
        np.testing.assert_array_equal(g["roi"][()], data[..., 0:5, :].sum(axis=(-2, -1)))
        np.testing.assert_array_equal(g["brightest"][()], data.max(axis=(0, 1)))
        assert g["done"][()].all()
    # the workers ran in a job of their own, submitted by the driver from its node
    workers = [p.name for p in (tmp_path / "logs").glob("dask-worker-*.err")]
    assert len(workers) == 1 and job not in workers[0], workers


def test_submit_refused_by_sbatch_says_why(tmp_path, make_scan):
    inp, _ = make_scan((2, 2), (8, 8))
    prof = write_profile(tmp_path / "bad.yaml", jobs=1, queue="nosuchpartition")
    sub = subprocess.run(
        [sys.executable, "-m", "framebag.cli", "submit", str(FRAME_SUM), str(inp), "--profile",
         str(prof)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert sub.returncode != 0 and not sub.stdout
    assert sub.stderr.startswith("framebag: error: submitting the driver job with 'sbatch' "
                                 "failed: ") and "partition" in sub.stderr, sub.stderr
    assert sub.stderr.count("\n") == 1
