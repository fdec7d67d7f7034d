"""Per-worker setup (``@workflow.setup``): once per worker process, its value by name, its
files in the provenance, its failures in one sentence. Real files, the session's LocalCluster."""

from __future__ import annotations

import json
import os
import socket
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest

from framebag import FramebagError, Workflow, load_workflow

from .conftest import DATA, KEY, assert_one_sentence, run_cli, sha256

REPO = Path(__file__).resolve().parents[1]
MASKED_SUM = str(REPO / "workflows" / "masked_sum.py")


def address_profile(tmp_path: Path, client) -> str:
    """A profile naming the session's LocalCluster, so CLI runs start no cluster of their own."""
    path = tmp_path / "here.yaml"
    path.write_text(f"cluster: address\naddress: {client.scheduler.address}\n")
    return str(path)


def pid_workflow() -> Workflow:
    """A setup that logs the pid of every process it runs in, and returns that pid."""
    wf = Workflow("once", data=DATA, keys=[KEY])

    @wf.setup
    def calib(log_dir="", gain_file=Path("/no/gain/file")):
        with open(Path(log_dir) / "setup.log", "a") as f:  # a directory: no file to hash
            f.write(f"{os.getpid()}\n")
        assert isinstance(gain_file, Path)
        return os.getpid() + len(gain_file.read_bytes()) * 0

    @wf.frames
    def made_by(frames, calib):  # the pid of the process that made the value it got
        return np.full(len(frames), calib, dtype=np.int64)

    @wf.frames
    def ran_in(frames, *, calls_file=""):
        with open(calls_file, "a") as f:  # one line per read (a test's workflow, not a model)
            f.write(f"{os.getpid()}\n")
        return np.full(len(frames), os.getpid(), dtype=np.int64)

    return wf


def pids(path: Path) -> Counter:
    return Counter(int(line) for line in path.read_text().split()) if path.exists() else Counter()


def test_setup_runs_once_per_worker_process_not_per_task(make_scan, client, tmp_path):
    path, data = make_scan((20, 20), (4, 4))
    log, calls, gain = tmp_path / "setup.log", tmp_path / "calls.log", tmp_path / "gain.bin"
    gain.write_bytes(b"1")
    wf = pid_workflow()
    params = {"log_dir": str(tmp_path), "gain_file": str(gain), "calls_file": str(calls)}
    workers = set(client.run(os.getpid).values())
    res = wf.run(path, tmp_path / "o.h5", client=client, params=params,
                 partition_bytes=3 * data[0, 0].nbytes)
    assert res.done.all()
    ran_in = set(np.unique(res["ran_in"]).tolist())
    assert ran_in == workers  # both workers processed frames ...
    assert sum(pids(calls).values()) >= 20  # ... in many reads (and tasks of a few reads each)
    # each frame got the value its own process made: nothing was sent from the driver
    np.testing.assert_array_equal(res["made_by"], res["ran_in"])
    once = pids(log)
    assert set(once) == workers | {os.getpid()}  # the workers, and the driver for the probe
    assert set(once.values()) == {1}, once
    with h5py.File(tmp_path / "o.h5", "r") as f:
        setup = json.loads(f["entry/once"].attrs["setup"])
    assert setup["calib"]["parameters"] == {"log_dir": str(tmp_path), "gain_file": str(gain)}
    assert setup["calib"]["files"] == {"gain_file": {"path": str(gain), "sha256": sha256(gain)}}

    # a second run with the same parameters on the same cluster runs no setup at all
    wf.run(path, tmp_path / "o2.h5", client=client, params=params)
    assert pids(log) == once
    # a file it reads rewritten (same size, same second): the setup runs again, once in each
    # process, since the run's sha256 of the file differs
    gain.write_bytes(b"2")
    log.unlink()
    res = wf.run(path, tmp_path / "o3.h5", client=client, params=params,
                 partition_bytes=3 * data[0, 0].nbytes)
    again = pids(log)
    assert set(again.values()) == {1}, again
    assert set(again) == set(np.unique(res["ran_in"]).tolist()) | {os.getpid()}


def mask_files(tmp_path: Path, frame_shape: tuple[int, int]) -> tuple[np.ndarray, Path, Path]:
    mask = np.random.default_rng(7).random(frame_shape) > 0.4
    npy = tmp_path / "mask.npy"
    np.save(npy, mask)
    h5 = tmp_path / "mask.h5"
    with h5py.File(h5, "w") as f:
        f["masks/roi"] = mask.astype(np.uint8)
    return mask, npy, h5


def test_masked_sum_example_equals_numpy(make_scan, client, tmp_path):
    path, data = make_scan((6, 7), (8, 9))
    mask, npy, h5 = mask_files(tmp_path, (8, 9))
    wf = load_workflow(MASKED_SUM)
    want = (data * mask).sum(axis=(-2, -1), dtype=np.float64)
    for i, params in enumerate([{"mask_file": str(npy)},
                                {"mask_file": str(h5), "mask_dataset": "masks/roi"}]):
        res = wf.run(path, tmp_path / f"o{i}.h5", client=client, params=params,
                     partition_bytes=4 * data[0, 0].nbytes)
        np.testing.assert_array_equal(res["masked_sum"], want)
        np.testing.assert_allclose(res["masked_mean"], want / mask.sum(), rtol=1e-12)
        with h5py.File(tmp_path / f"o{i}.h5", "r") as f:
            setup = json.loads(f["entry/masked_sum"].attrs["setup"])
        assert setup["mask"]["files"] == {
            "mask_file": {"path": params["mask_file"], "sha256": sha256(params["mask_file"])}}


def test_setup_failure_on_the_driver_is_one_sentence_before_a_cluster_starts(make_scan, capsys,
                                                                              tmp_path):
    path, _ = make_scan((3, 4))
    out = tmp_path / "out.h5"
    missing = tmp_path / "nope.npy"
    rc, err = run_cli(capsys, "run", MASKED_SUM, str(path), "-o", str(out),
                      "--set", f"mask_file={missing}")
    assert rc == 2
    assert_one_sentence(rc, err, "setup function 'mask' failed on the driver",
                        f"({socket.gethostname()}:{os.getpid()})", "FileNotFoundError",
                        str(missing), "masked_sum.py:")
    rc, err = run_cli(capsys, "run", MASKED_SUM, str(path), "-o", str(out))
    assert_one_sentence(rc, err, "setup function 'mask'", "no mask file given",
                        "--set mask_file=PATH")
    assert not out.exists()


WORKER_ONLY = '''
import numpy as np
from distributed import get_worker
from framebag import Workflow

workflow = Workflow("node", data="entry/data/data", keys=["entry/keys/key_1"])


@workflow.setup
def calib(scale=2.0):
    try:
        get_worker()
    except ValueError:
        return scale  # on the driver
    raise OSError("no calibration on this node")


@workflow.frame
def scaled(frame, calib):
    return frame.sum() * calib
'''


def test_setup_failure_on_a_worker_names_the_worker(make_scan, client, capsys, tmp_path):
    path, _ = make_scan((4, 5))
    module = tmp_path / "node.py"
    module.write_text(WORKER_ONLY)
    rc, err = run_cli(capsys, "run", str(module), str(path), "-o", str(tmp_path / "o.h5"),
                      "--profile", address_profile(tmp_path, client), "--quiet")
    assert_one_sentence(rc, err, "setup function 'calib' failed on worker tcp://127.0.0.1:",
                        "OSError: no calibration on this node", "node.py:")
    named = err.split("failed on worker ", 1)[1].split(" ", 1)[0]
    assert named in client.scheduler_info()["workers"]
    assert rc == 2


KILLER = '''
import os
import signal

from distributed import get_worker
from framebag import Workflow

workflow = Workflow("killer", data="entry/data/data", keys=["entry/keys/key_1"])


@workflow.setup
def calib(how="exit"):
    try:
        get_worker()
    except ValueError:
        return 2.0  # on the driver
    if how == "exit":
        os._exit(1)
    os.kill(os.getpid(), signal.SIGKILL)


@workflow.frame
def scaled(frame, calib):
    return frame.sum() * calib
'''


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_setup_that_ends_its_worker_process_is_named_in_one_sentence(make_scan, tmp_path, how):
    """A setup that ends its worker (os._exit, SIGKILL of itself) on the ``local`` profile: no
    retries and no KilledWorker lines, but one sentence naming the setup, and exit 2.
    It printed a KilledWorker line per retry of each task, the setup named nowhere."""
    import subprocess
    import sys

    path, _ = make_scan((4, 5))
    module = tmp_path / "killer.py"
    module.write_text(KILLER)
    out = tmp_path / "o.h5"
    # a task fails at the first worker that dies under it (3 more deaths by default): quicker
    env = dict(os.environ, DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="0")
    env.pop("DASK_LOGGING__DISTRIBUTED", None)  # dask's log lines as a user sees them (none)
    run = subprocess.run([sys.executable, "-m", "framebag.cli", "run", str(module), str(path),
                          "-o", str(out), "--profile", "local", "--set", f"how={how}"],
                         capture_output=True, text=True, env=env, timeout=300)
    err = run.stderr.strip()
    lines = err.splitlines()
    assert run.returncode == 2, err
    assert "Traceback" not in err and "retrying" not in err, err
    assert len(lines) == 3 and lines[0].startswith("framebag: dashboard "), err
    assert lines[1] == "framebag: 20 complete frames to process", err
    assert lines[-1].startswith("framebag: error: workers died (KilledWorker), and the "
                                "workflow's setup function 'calib' is the likely cause: "
                                "worker process tcp://127.0.0.1:"), err
    assert "ended while running it" in lines[-1] and "--resume" in lines[-1], err


ONE_KILLER = '''
import os
import time

from distributed import get_worker
from framebag import Workflow

workflow = Workflow("killer", data="entry/data/data", keys=["entry/keys/key_1"])


def _wait_for(path):
    for _ in range(600):  # a bound, not the sequencing: the gate opens long before
        if os.path.exists(path):
            return
        time.sleep(0.05)


@workflow.setup
def calib(gates=""):
    try:
        get_worker()
    except ValueError:
        return 2.0  # on the driver
    try:
        os.close(os.open(os.path.join(gates, "first"), os.O_CREAT | os.O_EXCL))
    except FileExistsError:  # the other worker: still in its setup when the first dies
        open(os.path.join(gates, "waiting"), "w").close()
        _wait_for(os.path.join(gates, "never"))
        return 2.0
    _wait_for(os.path.join(gates, "waiting"))
    os._exit(1)


@workflow.frame
def scaled(frame, calib):
    return frame.sum() * calib
'''


def test_setup_killer_counts_only_the_worker_processes_that_died(make_scan, tmp_path):
    """Two workers in the setup, one ends its process: the sentence counts that one, not
    the other, still alive in its setup (it said "2 worker processes in all")."""
    import subprocess
    import sys

    path, _ = make_scan((8, 10))
    module = tmp_path / "killer.py"
    module.write_text(ONE_KILLER)
    gates = tmp_path / "gates"
    gates.mkdir()
    prof = tmp_path / "two.yaml"
    prof.write_text("cluster: local\nscale: {workers: 2}\n"
                    "options: {threads_per_worker: 1, processes: true}\n")
    env = dict(os.environ, DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="0")
    env.pop("DASK_LOGGING__DISTRIBUTED", None)  # dask's log lines as a user sees them (none)
    run = subprocess.run([sys.executable, "-m", "framebag.cli", "run", str(module), str(path),
                          "-o", str(tmp_path / "o.h5"), "--profile", str(prof),
                          "--set", f"gates={gates}"],
                         capture_output=True, text=True, env=env, timeout=300)
    err = run.stderr.strip()
    assert (gates / "waiting").exists(), err  # both workers were in the setup
    assert run.returncode == 2, err
    assert "setup function 'calib' is the likely cause" in err, err
    assert "(1 worker process in all;" in err and len(err.splitlines()) == 3, err


UNKNOWN = '''
from framebag import Workflow

workflow = Workflow("unknown", data="entry/data/data", keys=["entry/keys/key_1"])


@workflow.frame
def masked(frame, mask):
    return frame.sum()
'''


def test_a_function_asking_for_an_unknown_name_is_one_sentence(make_scan, capsys, tmp_path):
    path, _ = make_scan((3, 4))
    module = tmp_path / "unknown.py"
    module.write_text(UNKNOWN)
    rc, err = run_cli(capsys, "run", str(module), str(path), "-o", str(tmp_path / "o.h5"))
    assert_one_sentence(rc, err, "function 'masked'", "asks for 'mask'", "setups: none",
                        "@workflow.setup")
    assert not (tmp_path / "o.h5").exists()

    # from Python: a workflow built in place fails at run start, before any cluster
    wf = Workflow("inplace", data=DATA, keys=[KEY])

    @wf.frame
    def total(frame, calibration):
        return frame.sum()

    with pytest.raises(FramebagError, match="function 'total' .* asks for 'calibration'"):
        wf.run(path, tmp_path / "o.h5", profile="no-such-profile-is-started")


def test_setup_registration_errors():
    wf = Workflow("reg", data=DATA, keys=[KEY])
    with pytest.raises(TypeError, match="setup needs_default: parameter 'path' needs a default"):
        @wf.setup
        def needs_default(path):
            return path

    @wf.setup
    def y0():
        return 1

    @wf.frame
    def roi(frame, *, y0=0):
        return frame[y0:].sum()

    with pytest.raises(FramebagError, match="setup 'y0' of workflow 'reg' has the name of a "
                                            "parameter"):
        wf.resolve_params({})
    with pytest.raises(ValueError, match="already has a setup 'y0'"):
        wf.setup(name="y0")(lambda: 2)


def test_resume_refuses_a_changed_setup_file(make_scan, client, capsys, tmp_path):
    path, data = make_scan((5, 6), (8, 9))
    mask, _, h5 = mask_files(tmp_path, (8, 9))
    out = tmp_path / "out.h5"
    profile = address_profile(tmp_path, client)
    argv = ["run", MASKED_SUM, str(path), "-o", str(out), "--profile", profile, "--quiet",
            "--set", f"mask_file={h5}", "--set", "mask_dataset=masks/roi"]
    rc, err = run_cli(capsys, *argv)
    assert rc == 0, err
    rc, err = run_cli(capsys, *argv, "--resume")  # the same mask: resumes (nothing left to do)
    assert rc == 0, err
    before = sha256(out)
    with h5py.File(h5, "r+") as f:  # one pixel of the mask changes
        f["masks/roi"][0, 0] = 1 - f["masks/roi"][0, 0]
    rc, err = run_cli(capsys, *argv, "--resume")
    assert_one_sentence(rc, err, "--resume: setup 'mask' file", repr(str(h5)), "'mask_file'",
                        "changed since", repr(str(out)), "sha256", "--overwrite")
    assert sha256(out) == before  # refused before anything was written
    h5.unlink()
    rc, err = run_cli(capsys, *argv, "--resume")
    # the setup on the driver would fail too, but the resume check comes first and says why
    assert_one_sentence(rc, err, "--resume: setup 'mask' file", repr(str(h5)), "is gone")
    assert sha256(out) == before
