"""``framebag submit --dry-run``: the driver's batch script up to the submission boundary, for
SLURM, PBS and SGE (the live SLURM submission is in test_slurm.py)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from framebag.cli import build_parser

from .conftest import write_scan

ROOT = Path(__file__).resolve().parents[1]
FRAME_SUM = ROOT / "workflows" / "frame_sum.py"


def _cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, DASK_LOGGING__DISTRIBUTED="error")
    return subprocess.run([sys.executable, "-m", "framebag.cli", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def _profile(path: Path, kind: str, **extra) -> Path:
    opts = {"cores": 8, "processes": 8, "memory": "32GiB", "walltime": "02:30:00",
            "log_directory": str(path.parent / "joblogs"), "interface": "lo",
            "worker_extra_args": ["--lifetime", "55m"], **extra}
    path.write_text(yaml.safe_dump({"cluster": kind, "scale": {"jobs": 3}, "options": opts,
                                    "job_script_prologue": ["module load hdf5",
                                                            "source /opt/env/bin/activate"]}))
    return path


@pytest.fixture
def scan(tmp_path):
    return write_scan(tmp_path / "scan.h5", np.ones((2, 3, 4, 4), "uint16"), 2)


def _exec_line(script: str) -> list[str]:
    last = script.rstrip("\n").splitlines()[-1]
    assert last.startswith("exec "), script
    return shlex.split(last[len("exec "):])


def _check_command(script: str, tmp_path: Path, prof: Path, scan: Path) -> None:
    """The job runs ``framebag run`` with the given options, absolute paths, the same profile."""
    cmd = _exec_line(script)
    assert cmd[:3] == ["python", "-m", "framebag.cli"], cmd  # python from the prologue's PATH
    args = build_parser().parse_args(cmd[3:])
    assert args.command == "run" and not args.extra
    assert args.workflow == str(FRAME_SUM) and args.input == [str(scan)]
    assert args.profile == str(prof) and args.output == str(tmp_path / "out.h5")
    assert args.params == ["y1=5"] and args.follow and args.timeout == 30.0
    assert args.partition_bytes == 4096 and args.resume and args.verbose == 1
    assert args.on_error == "raise" and args.retries == 2  # defaults left out, kept
    assert f"cd {tmp_path}" in script.splitlines()
    body = script.splitlines()
    assert body.index("module load hdf5") < body.index(f"cd {tmp_path}") < len(body) - 1


RUN_OPTIONS = ["-o", "out.h5", "--set", "y1=5", "--follow", "--timeout", "30",
               "--partition-bytes", "4KiB", "--resume", "-v", "--dry-run",
               "--driver-memory", "2GiB"]


def test_pbs_driver_script(tmp_path, scan, unchanged):
    unchanged(scan)
    prof = _profile(tmp_path / "site.yaml", "pbs", queue="workq", account="ab123",
                    resource_spec="select=1:ncpus=8:mem=32GB")
    out = _cli("submit", str(FRAME_SUM), "scan.h5", "--profile", str(prof), *RUN_OPTIONS,
               cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    script = out.stdout
    head = [ln for ln in script.splitlines() if ln.startswith("#PBS")]
    assert head == ["#PBS -N framebag-driver", "#PBS -q workq", "#PBS -A ab123",
                    "#PBS -l select=1:ncpus=1:mem=2048MB", "#PBS -l walltime=02:30:00",
                    f"#PBS -e {tmp_path}/joblogs/", f"#PBS -o {tmp_path}/joblogs/"], head
    assert script.startswith("#!/usr/bin/env bash\n")
    assert "ncpus=8" not in script and "--lifetime" not in script  # the workers' request
    _check_command(script, tmp_path, prof, scan)
    assert not (tmp_path / "out.h5").exists()


def test_sge_driver_script_with_its_own_walltime(tmp_path, scan):
    prof = _profile(tmp_path / "site.yaml", "sge", queue="all.q", project="ab123",
                    resource_spec="h_vmem=4G,mem_free=32G")
    out = _cli("submit", str(FRAME_SUM), "scan.h5", "--profile", str(prof), *RUN_OPTIONS,
               "--driver-walltime", "12:00:00", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    head = [ln for ln in out.stdout.splitlines() if ln.startswith("#$")]
    assert head == ["#$ -N framebag-driver", "#$ -q all.q", "#$ -P ab123",
                    "#$ -l h_rt=12:00:00", f"#$ -e {tmp_path}/joblogs/",
                    f"#$ -o {tmp_path}/joblogs/", "#$ -cwd", "#$ -j y"], head
    assert "h_vmem" not in out.stdout
    _check_command(out.stdout, tmp_path, prof, scan)


def test_slurm_driver_script_asks_one_core_and_warns_before_the_walltime(tmp_path, scan):
    prof = _profile(tmp_path / "site.yaml", "slurm", queue="debug", account="ab123",
                    job_extra_directives=["--qos=normal"])
    out = _cli("submit", str(FRAME_SUM), "scan.h5", "--profile", str(prof), *RUN_OPTIONS,
               cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    head = [ln for ln in out.stdout.splitlines() if ln.startswith("#SBATCH")]
    assert head == ["#SBATCH -J framebag-driver",
                    f"#SBATCH -e {tmp_path}/joblogs/framebag-driver-%J.err",
                    f"#SBATCH -o {tmp_path}/joblogs/framebag-driver-%J.out",
                    "#SBATCH -p debug", "#SBATCH -A ab123", "#SBATCH -n 1",
                    "#SBATCH --cpus-per-task=1", "#SBATCH --mem=2G", "#SBATCH -t 02:30:00",
                    "#SBATCH --qos=normal", "#SBATCH --signal=B:TERM@120"], head
    _check_command(out.stdout, tmp_path, prof, scan)


def test_several_inputs_and_a_glob_go_to_the_driver_expanded(tmp_path):
    for name in ("a1.h5", "a2.h5", "b.h5"):
        write_scan(tmp_path / name, np.ones((2, 2, 4, 4), "uint16"), 2)
    (tmp_path / "outs").mkdir()
    prof = _profile(tmp_path / "site.yaml", "slurm", queue="debug")
    out = _cli("submit", str(FRAME_SUM), "b.h5", "a*.h5", "-o", "outs", "--profile", str(prof),
               "--dry-run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    args = build_parser().parse_args(_exec_line(out.stdout)[3:])
    assert args.input == [str(tmp_path / n) for n in ("b.h5", "a1.h5", "a2.h5")]
    assert args.output == str(tmp_path / "outs")


@pytest.mark.parametrize("argv, says", [
    (["--profile", "local"], "is cluster 'local'; submit needs a batch profile"),
    ([], "submit needs --profile NAME|FILE"),
    (["--profile", "PROF", "--driver-memory", "lots"], "--driver-memory 'lots' is not a size"),
    (["--profile", "PROF", "-o", "exists.h5"], "output file"),
    (["--profile", "PROF", "nope.h5", "other.h5"], "input file 'nope.h5' does not exist"),
    (["--profile", "PROF", "--roi", "1:x"], "--roi 1:x: '1:x' is not a slice"),
    (["--profile", "PROF", "--roi", "::0"], "--roi ::0: step 0"),
])
def test_submit_refuses_before_writing_anything(tmp_path, scan, argv, says):
    prof = _profile(tmp_path / "site.yaml", "slurm", queue="debug")
    (tmp_path / "exists.h5").write_bytes(b"x")
    argv = [str(prof) if a == "PROF" else a for a in argv]
    out = _cli("submit", str(FRAME_SUM), "scan.h5", *argv, cwd=tmp_path)
    assert out.returncode != 0
    assert out.stderr.startswith("framebag: error: ") and says in out.stderr, out.stderr
    assert out.stderr.count("\n") == 1 and not out.stdout
    assert not (tmp_path / "joblogs").exists()
