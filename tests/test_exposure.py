"""Exposure: a cluster framebag starts listens on loopback only, and a profile can turn
on distributed's TLS (whoever reaches a dask scheduler can run code as you)."""

from __future__ import annotations

import os

import numpy as np
import psutil
import pytest
import yaml

from framebag import FramebagError, Workflow, clusters, profiles


def _listening(pid: int) -> set[str]:
    return {c.laddr.ip for c in psutil.Process(pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN}


def _write(path, profile: dict):
    path.write_text(yaml.safe_dump(profile))
    return path


def test_the_local_clusters_scheduler_and_dashboard_listen_on_loopback_only():
    with clusters.start_client("local", announce=False) as client:
        info = client.scheduler_info()
        port = info["services"]["dashboard"]
        ips = {c.laddr.ip: c.laddr.port for c in psutil.Process().net_connections(kind="inet")
               if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
        assert ips == {"127.0.0.1": port}, f"the dashboard listens on {ips}"
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        sched_port = int(client.scheduler.address.rsplit(":", 1)[1])
        assert {c.laddr.ip for c in psutil.Process().net_connections(kind="inet")
                if c.status == psutil.CONN_LISTEN and c.laddr.port == sched_port} == \
            {"127.0.0.1"}
        for pid in client.run(os.getpid).values():
            assert _listening(pid) <= {"127.0.0.1"}


def test_a_profile_may_open_the_dashboard_to_the_network(tmp_path):
    p = profiles.load(_write(tmp_path / "open.yaml", {
        "cluster": "local", "options": {"dashboard_address": "0.0.0.0:0"}}))
    assert profiles.cluster_options(p)["dashboard_address"] == "0.0.0.0:0"
    p = profiles.load(_write(tmp_path / "port.yaml", {
        "cluster": "local", "options": {"dashboard_address": ":8787"}}))
    assert profiles.cluster_options(p)["dashboard_address"] == "127.0.0.1:8787"
    batch = {"cluster": "slurm", "options": {"cores": 1, "memory": "1GiB",
                                             "walltime": "00:10:00"}}
    p = profiles.load(_write(tmp_path / "slurm.yaml", batch))
    assert profiles.cluster_options(p)["scheduler_options"]["dashboard_address"] == \
        "127.0.0.1:0"


def test_a_batch_profiles_printed_dashboard_link_is_where_the_dashboard_listens(tmp_path,
                                                                                capsys):
    """dask builds the link from the scheduler's host (the network the workers reach),
    but the dashboard of a batch profile listens on 127.0.0.1: the printed link must
    name an address that answers."""
    from urllib.parse import urlsplit

    p = profiles.load(_write(tmp_path / "slurm.yaml", {
        "cluster": "slurm", "options": {"cores": 1, "memory": "1GiB",
                                        "walltime": "00:10:00"}}))
    cluster = clusters.make_cluster(p)  # the scheduler only: no job is submitted
    try:
        clusters._announce(cluster, p)
    finally:
        listening = {(c.laddr.ip, c.laddr.port) for c in psutil.Process().net_connections(
            kind="inet") if c.status == psutil.CONN_LISTEN}
        cluster.close()
    line = capsys.readouterr().err.strip()
    assert line.startswith("framebag: dashboard http"), line
    link = urlsplit(line.split()[2])
    answering = {ip for ip, port in listening if port == link.port}
    assert answering and (link.hostname in answering or "0.0.0.0" in answering), \
        f"{line}: port {link.port} listens on {answering or 'nothing'}"


TLS_WF = Workflow("tls", data="entry/data/data", keys=["entry/keys/key_1"])


@TLS_WF.frame
def total(frame):
    return frame.sum()


def test_a_tls_profile_loads_and_runs_over_tls(tmp_path, make_scan):
    pytest.importorskip("cryptography")
    prof = _write(tmp_path / "tls.yaml", {"cluster": "local", "scale": {"workers": 1},
                                          "options": {"n_workers": 1, "security": True,
                                                      "dashboard_address": ":0"}})
    assert profiles.load(prof).options["security"] is True
    path, data = make_scan((4, 5), (8, 8))
    with clusters.start_client(str(prof), announce=False) as client:
        assert client.scheduler.address.startswith("tls://127.0.0.1:")
        res = TLS_WF.run(path, tmp_path / "out.h5", client=client)
    np.testing.assert_array_equal(res["total"], data.sum(axis=(2, 3)))


def test_a_bad_security_option_is_one_sentence(tmp_path):
    bad = _write(tmp_path / "bad.yaml", {"cluster": "local",
                                         "options": {"security": {"tls_ca": "x"}}})
    with pytest.raises(FramebagError, match="unknown security key 'tls_ca'; valid keys"):
        profiles.load(bad)
    missing = _write(tmp_path / "missing.yaml", {"cluster": "local", "options": {
        "security": {"tls_ca_file": str(tmp_path / "nope.pem")}}})
    with pytest.raises(FramebagError, match="security tls_ca_file: .*nope.pem' is not a file"):
        profiles.load(missing)
