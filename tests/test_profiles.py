"""Cluster profiles: lookup order, validation before anything starts, resolved options, job
scripts for SLURM/PBS/SGE up to the submit boundary, and starting local/address clusters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from framebag import clusters, profiles
from framebag.cli import main
from framebag.errors import FramebagError

BATCH = {"cores": 4, "memory": "8GiB", "walltime": "02:00:00"}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Each test runs in its own cwd, with no user profiles and no $FRAMEBAG_PROFILES."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FRAMEBAG_PROFILES", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


def write(path: Path, content: dict | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


def batch(kind: str, **options) -> dict:
    return {"cluster": kind, "options": {**BATCH, **options}}


def error_of(content: dict | str, tmp_path: Path) -> str:
    path = write(tmp_path / "p.yaml", content)
    with pytest.raises(FramebagError) as info:
        profiles.load(path)
    return str(info.value)


# lookup ------------------------------------------------------------------------------


def test_lookup_order_path_env_cwd_user_packaged(tmp_path, monkeypatch):
    def local(n):
        return {"cluster": "local", "options": {"n_workers": n}}

    assert profiles.find("local").parent == Path(str(
        __import__("importlib").resources.files("framebag.cluster_profiles")))
    write(tmp_path / "xdg" / "framebag" / "profiles" / "local.yaml", local(4))
    assert profiles.load("local").options["n_workers"] == 4
    write(tmp_path / "cluster_profiles" / "local.yaml", local(3))
    assert profiles.load("local").options["n_workers"] == 3
    write(tmp_path / "env" / "local.yml", local(2))
    monkeypatch.setenv("FRAMEBAG_PROFILES", str(tmp_path / "env"))
    assert profiles.load("local").options["n_workers"] == 2
    explicit = write(tmp_path / "mine.yaml", local(1))
    assert profiles.load(str(explicit)).options["n_workers"] == 1
    assert profiles.load(None).name == "local"  # the default profile

    rows = {(name, label): shadowed for name, label, _, shadowed in profiles.list_profiles()}
    assert rows[("local", "$FRAMEBAG_PROFILES")] is False
    assert rows[("local", "./cluster_profiles")] is True
    assert rows[("local", "user config")] is True
    assert rows[("slurm", "packaged")] is False


def test_missing_profile_names_the_places(tmp_path):
    with pytest.raises(FramebagError, match="no profile named 'nope'.*cluster_profiles"):
        profiles.find("nope")
    with pytest.raises(FramebagError, match="profile file 'gone.yaml' does not exist"):
        profiles.find("gone.yaml")


def test_packaged_profiles_are_valid():
    names = {name for name, label, _, _ in profiles.list_profiles() if label == "packaged"}
    assert {"local", "inline", "slurm", "pbs", "sge", "address"} <= names
    for name in names - {"inline"}:
        prof = profiles.load(name)
        assert prof.cluster == name
    inline = profiles.load("inline")  # a local cluster in the driver process, one thread
    assert inline.cluster == "local" and inline.options["processes"] is False
    assert inline.options["n_workers"] == inline.options["threads_per_worker"] == 1
    assert profiles.load("slurm").options["walltime"]


# validation ----------------------------------------------------------------------------


def test_malformed_yaml_names_file_and_line(tmp_path):
    msg = error_of("cluster: slurm\noptions:\n  cores: 4\n  memory: [8GiB\n", tmp_path)
    assert str(tmp_path / "p.yaml") in msg and "line 5" in msg, msg


def test_unknown_option_lists_valid_ones_for_the_kind(tmp_path):
    msg = error_of(batch("slurm", coers=8), tmp_path)
    assert "unknown option 'coers' for cluster 'slurm'" in msg
    valid = msg.split("valid options are ")[1].split(", ")
    assert {"cores", "memory", "walltime", "queue", "account", "job_cpu", "interface",
            "job_extra_directives", "worker_extra_args", "local_directory"} <= set(valid)
    assert "resource_spec" not in valid and "job_extra" not in valid
    msg = error_of(batch("pbs", job_cpu=2), tmp_path)
    assert "for cluster 'pbs'" in msg and "resource_spec" in msg
    msg = error_of({"cluster": "local", "options": {"nworkers": 2}}, tmp_path)
    assert "unknown option 'nworkers' for cluster 'local'" in msg and "n_workers" in msg


def test_valid_options_follow_the_installed_signatures():
    import inspect

    import dask_jobqueue

    for kind, cls in [("slurm", dask_jobqueue.SLURMCluster), ("pbs", dask_jobqueue.PBSCluster),
                      ("sge", dask_jobqueue.SGECluster), ("lsf", dask_jobqueue.LSFCluster)]:
        own = set(inspect.signature(cls.job_cls.__init__).parameters)
        own -= {"self", "scheduler", "name", "config_name", "base_class_kwargs", "project"}
        assert own <= profiles.valid_options(kind), kind
    assert "project" in profiles.valid_options("sge")  # SGE's -P is still called project
    assert "project" not in profiles.valid_options("slurm")


@pytest.mark.parametrize("kind, old, new", [
    ("slurm", "job_extra", "job_extra_directives"),
    ("slurm", "env_extra", "job_script_prologue"),
    ("pbs", "extra", "worker_extra_args"),
    ("sge", "header_skip", "job_directives_skip"),
    ("slurm", "project", "account"),
    ("pbs", "project", "account"),
])
def test_renamed_keyword_names_the_new_spelling(tmp_path, kind, old, new):
    msg = error_of(batch(kind, **{old: ["x"]}), tmp_path)
    assert f"option {old!r} was renamed; write {new!r}" in msg, msg


@pytest.mark.parametrize("kind", ["slurm", "pbs", "sge", "lsf"])
def test_walltime_is_required_on_batch_systems(tmp_path, kind):
    prof = batch(kind)
    del prof["options"]["walltime"]
    msg = error_of(prof, tmp_path)
    assert f"option 'walltime' is required for cluster {kind!r}" in msg, msg


def test_walltime_read_as_a_number_is_explained(tmp_path):
    msg = error_of("cluster: slurm\noptions: {cores: 1, memory: 1GiB, walltime: 1:00:00}\n",
                   tmp_path)
    assert "read as the number 3600" in msg and '"01:00:00"' in msg, msg


@pytest.mark.parametrize("content, expected", [
    ({"cluster": "slurm", "options": {"memory": "1GiB", "walltime": "01:00:00"}},
     "option 'cores' is required"),
    (batch("slurm", memory="lots"), "option 'memory' 'lots' is not a size"),
    ({"cluster": "kubernetes"}, "unknown cluster kind 'kubernetes'; valid kinds are local"),
    ({"cluster": "local", "workers": 2}, "unknown key(s) workers; valid keys are cluster"),
    ({**batch("slurm"), "scale": {"jobs": 2}, "adapt": {"maximum_jobs": 4}},
     "either 'scale:' or 'adapt:'"),
    ({**batch("slurm"), "scale": {"job": 2}}, "unknown scale key 'job'; valid keys are"),
    ({**batch("slurm"), "adapt": {"maximum": 4, "max_jobs": 3}}, "unknown adapt key 'max_jobs'"),
    (batch("slurm", dashboard_address=":8787"), "scheduler_options: {dashboard_address"),
    (batch("slurm", n_workers=3), "scale: {jobs: N}"),
    ({"cluster": "address"}, "needs address: tcp://"),
    ({"cluster": "address", "address": "tcp://h:1", "options": {"a": 1}}, "takes no options"),
    ({"cluster": "local", "python": "/usr/bin/python3"}, "'python' is for batch systems"),
    ({**batch("slurm", python="/a"), "python": "/b"}, "give 'python' once"),
    ({**batch("slurm"), "first_worker_timeout": -1}, "first_worker_timeout must be a positive"),
    ({**batch("slurm"), "scale": {"jobs": "two"}}, "scale jobs must be a whole number"),
    ({**batch("slurm"), "adapt": {"minimum_jobs": 3, "maximum_jobs": 1}},
     "adapt minimum 3 is above its maximum 1"),
    ("- just\n- a list\n", "must be a mapping with a 'cluster:' key"),
])
def test_bad_profiles_fail_with_one_sentence(tmp_path, content, expected):
    msg = error_of(content, tmp_path)
    assert expected in msg, msg
    assert str(tmp_path / "p.yaml") in msg and "\n" not in msg


def test_cli_reports_a_bad_profile_on_stderr_with_exit_2(tmp_path, capsys):
    write(tmp_path / "bad.yaml", batch("slurm", env_extra=["module load x"]))
    assert main(["profiles", "show", "bad.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("framebag: error: profile") and "'job_script_prologue'" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


# resolving and job scripts -----------------------------------------------------------------


def test_python_on_compute_nodes_defaults_to_this_interpreter(tmp_path):
    p = profiles.load(write(tmp_path / "a.yaml", batch("slurm")))
    opts = profiles.cluster_options(p)
    assert opts["python"] == sys.executable
    assert opts["log_directory"] == str(tmp_path / "framebag-logs")
    assert opts["scheduler_options"]["dashboard_address"] == "127.0.0.1:0"
    prologue = {**batch("slurm"), "job_script_prologue": ["source /opt/env/bin/activate"]}
    p = profiles.load(write(tmp_path / "b.yaml", prologue))
    assert profiles.cluster_options(p)["python"] == "python"  # the one the prologue activates
    p = profiles.load(write(tmp_path / "c.yaml", {**prologue, "python": "/opt/env/bin/python"}))
    script = clusters.job_script(p)
    assert "\nsource /opt/env/bin/activate\n/opt/env/bin/python -m distributed.cli.dask_worker" \
        in script, script


def test_show_prints_the_resolved_profile(tmp_path, capsys):
    write(tmp_path / "cluster_profiles" / "site.yaml",
          {**batch("slurm", queue="short"), "adapt": {"minimum_jobs": 0, "maximum_jobs": 5}})
    assert main(["profiles", "show", "site"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# profile 'site' from {tmp_path / 'cluster_profiles' / 'site.yaml'}")
    shown = yaml.safe_load(out)
    assert shown["cluster"] == "slurm" and shown["adapt"] == {"minimum_jobs": 0,
                                                               "maximum_jobs": 5}
    assert shown["options"]["queue"] == "short" and "python" not in shown["options"]
    assert shown["python"] == sys.executable  # at the top level, as the documented format has it
    assert shown["first_worker_timeout"] == profiles.DEFAULT_FIRST_WORKER_TIMEOUT
    # what show prints is itself a valid profile, which resolves to the same
    again = write(tmp_path / "again.yaml", shown)
    assert profiles.resolved(profiles.load(again)) == profiles.resolved(profiles.load("site"))


def test_cli_lists_profiles_with_their_source(tmp_path, capsys):
    write(tmp_path / "cluster_profiles" / "slurm.yaml", batch("slurm"))
    write(tmp_path / "cluster_profiles" / "broken.yaml", "cluster: [\n")
    assert main(["profiles"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "CLUSTER", "FOUND", "IN", "FILE"]
    mine = [ln for ln in lines if ln.startswith("slurm") and "./cluster_profiles" in ln]
    packaged = [ln for ln in lines if ln.startswith("slurm") and "packaged" in ln]
    assert mine and packaged and "shadowed" in packaged[0] and "shadowed" not in mine[0]
    assert any(ln.startswith("broken") and "INVALID" in ln for ln in lines)


def test_slurm_job_script_memory_gib_vs_gb(tmp_path):
    gib = clusters.job_script(profiles.load(write(tmp_path / "a.yaml", batch(
        "slurm", memory="32GiB", queue="debug", account="proj", processes=2))))
    assert "#SBATCH -p debug\n#SBATCH -A proj\n" in gib
    assert "#SBATCH --cpus-per-task=4\n#SBATCH --mem=32G\n#SBATCH -t 02:00:00" in gib
    assert "--nthreads 2 --memory-limit 16.00GiB --nworkers 2" in gib
    assert f"#SBATCH -o {tmp_path}/framebag-logs/dask-worker-%J.out" in gib
    gb = clusters.job_script(profiles.load(write(tmp_path / "b.yaml", batch(
        "slurm", memory="32GB"))))
    assert "#SBATCH --mem=30G\n" in gb  # 32e9 bytes are 29.8 GiB, and SLURM's G is GiB


def test_pbs_job_script_up_to_the_submit_boundary(tmp_path, capsys):
    """No PBS server is packaged for Debian: check what would be handed to qsub."""
    path = write(tmp_path / "pbs.yaml", batch(
        "pbs", queue="workq", account="ab123", resource_spec="select=1:ncpus=4:mem=8GB",
        walltime="02:30:00", interface="lo", job_extra_directives=["-m n"]))
    assert main(["profiles", "show", str(path), "--job-script"]) == 0
    script = capsys.readouterr().out
    header = [ln for ln in script.splitlines() if ln.startswith("#PBS")]
    assert header == ["#PBS -N dask-worker", "#PBS -q workq", "#PBS -A ab123",
                      "#PBS -l select=1:ncpus=4:mem=8GB", "#PBS -l walltime=02:30:00",
                      f"#PBS -e {tmp_path}/framebag-logs/", f"#PBS -o {tmp_path}/framebag-logs/",
                      "#PBS -m n"]
    assert f"{sys.executable} -m distributed.cli.dask_worker tcp://127.0.0.1:" in script
    assert "--interface lo" in script
    job_cls = profiles.cluster_class("pbs").job_cls
    assert (job_cls.submit_command, job_cls.cancel_command) == ("qsub", "qdel")
    computed = clusters.job_script(profiles.load(write(tmp_path / "p2.yaml", batch(
        "pbs", memory="16GiB"))))
    assert "#PBS -l select=1:ncpus=4:mem=16GB\n" in computed


def test_sge_job_script_up_to_the_submit_boundary(tmp_path):
    script = clusters.job_script(profiles.load(write(tmp_path / "sge.yaml", batch(
        "sge", queue="all.q", project="p1", resource_spec="h_vmem=2G"))))
    header = [ln for ln in script.splitlines() if ln.startswith("#$")]
    assert header[:5] == ["#$ -N dask-worker", "#$ -q all.q", "#$ -P p1", "#$ -l h_vmem=2G",
                          "#$ -l h_rt=02:00:00"]
    assert profiles.cluster_class("sge").job_cls.submit_command == "qsub"


def test_job_script_of_a_local_profile_is_an_error():
    with pytest.raises(FramebagError, match="submits no batch jobs"):
        clusters.job_script("local")


def test_cluster_rejection_is_one_sentence(tmp_path):
    path = write(tmp_path / "h.yaml", {"cluster": "htcondor",
                                       "options": {"cores": 1, "memory": "1GiB"}})
    with pytest.raises(FramebagError, match="HTCondorCluster rejected the options: .*disk"):
        clusters.job_script(path)


# starting ------------------------------------------------------------------------------


def test_address_profile_connects_to_a_running_scheduler(tmp_path, client, capsys):
    path = write(tmp_path / "addr.yaml", {"cluster": "address",
                                          "address": client.scheduler.address})
    with clusters.start_client(path) as c:
        assert c.scheduler.address == client.scheduler.address
        assert c.submit(sum, [1, 2, 3]).result() == 6
    assert "dashboard" in capsys.readouterr().err
    assert client.submit(sum, [4]).result() == 4  # the cluster is left running


def test_address_profile_unreachable(tmp_path):
    path = write(tmp_path / "addr.yaml", {"cluster": "address", "address": "tcp://127.0.0.1:9",
                                          "first_worker_timeout": 1})
    with pytest.raises(FramebagError, match="cannot reach the scheduler at tcp://127.0.0.1:9"):
        with clusters.start_client(path):
            pass


def test_local_profile_starts_scales_and_stops(tmp_path, capfd):
    path = write(tmp_path / "one.yaml", {"cluster": "local", "scale": {"workers": 2},
                                         "options": {"n_workers": 1, "dashboard_address": ":0",
                                                     "memory_limit": "1GiB"}})
    with clusters.start_client(path) as c:
        c.wait_for_workers(2, timeout=30)
        pids = set(c.run(os.getpid).values())
        assert len(pids) == 2 and os.getpid() not in pids
        assert c.submit(pow, 2, 10).result() == 1024
    assert "framebag: dashboard http" in capfd.readouterr().err
    for pid in pids:  # the worker processes are gone
        assert subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0


# the public cluster context ------------------------------------------------------------


def test_cluster_context_serves_two_runs_then_stops(tmp_path, make_scan, capfd):
    """``with framebag.cluster(...)``: one cluster, started once, runs both scans on the
    same worker processes, and is gone after the block."""
    import numpy as np

    import framebag

    wf = framebag.Workflow("where", data="entry/data/data", keys=["entry/keys/key_1"])

    @wf.frame
    def pid(frame):
        return os.getpid()

    @wf.frame
    def total(frame):
        return frame.sum()

    (a, data_a), (b, data_b) = make_scan((4, 5)), make_scan((3, 6), seed=1)
    # one worker where the profile would start one per core: the override is taken
    with framebag.cluster("local", workers=1, dashboard_address=":0") as client:
        workers = set(client.scheduler_info()["workers"])
        pids = set(client.run(os.getpid).values())
        first = wf.run(a, tmp_path / "a_out.h5", client=client, partition_bytes=256)
        second = wf.run(b, tmp_path / "b_out.h5", client=client, partition_bytes=256)
        assert set(client.scheduler_info()["workers"]) == workers
    assert len(workers) == 1 and len(pids) == 1 and os.getpid() not in pids
    assert set(first["pid"].ravel()) <= pids and set(second["pid"].ravel()) <= pids
    np.testing.assert_array_equal(first["total"], data_a.sum(axis=(-2, -1)))
    np.testing.assert_array_equal(second["total"], data_b.sum(axis=(-2, -1)))
    assert capfd.readouterr().err.count("framebag: dashboard") == 1  # started once
    assert client.status == "closed"
    for p in pids:  # the worker processes are gone
        assert subprocess.run(["kill", "-0", str(p)], capture_output=True).returncode != 0


def test_cluster_overrides_are_validated_before_anything_starts(tmp_path):
    import framebag

    with pytest.raises(FramebagError, match="unknown option 'n_wrokers' for cluster 'local'"):
        with framebag.cluster("local", n_wrokers=2):
            pass
    with pytest.raises(FramebagError, match="workers must be a whole number >= 1, not 0"):
        with framebag.cluster("local", workers=0):
            pass
    path = write(tmp_path / "addr.yaml", {"cluster": "address", "address": "tcp://127.0.0.1:9"})
    with pytest.raises(FramebagError, match="takes no workers"):
        with framebag.cluster(path, workers=2):
            pass
    slurm = profiles.load(write(tmp_path / "s.yaml", batch("slurm")))
    over = profiles.override(slurm, workers=3, memory="2GiB")
    assert (over.scale, over.adapt, over.options["memory"]) == ({"n": 3}, None, "2GiB")
    assert slurm.options["memory"] == "8GiB"  # the loaded profile is left as it was
    with pytest.raises(FramebagError, match="'memory' 'lots' is not a size"):
        profiles.override(slurm, memory="lots")


def test_public_surface_is_the_api_only():
    import framebag

    assert set(framebag.__all__) == {"Workflow", "Fold", "histogram", "Results", "run",
                                     "run_many", "RunOptions", "cluster", "load_workflow",
                                     "FramebagError", "__version__"}
    for name in framebag.__all__:
        assert getattr(framebag, name) is not None, name
    assert framebag.run.__module__ == "framebag.engine"
    assert not hasattr(framebag, "workers_skip_main")
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        framebag.nope  # noqa: B018


def test_a_misspelt_keyword_of_framebag_cluster_is_named_with_the_right_one():
    from framebag.profiles import load, override

    with pytest.raises(FramebagError, match=r"did you mean workers=") as e:
        override(load("local"), wrkers=1)  # was: unknown option 'wrkers' for cluster 'local';
    assert "WorkerStateClass" not in str(e.value)  # ... valid options are (70 dask names)
