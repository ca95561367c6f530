"""Cluster mode: stages submitted with spark-submit to a two-worker standalone cluster on
127.0.0.1 (pandas UDFs and Delta writes on executors, the project shipped as a wheel), and the
cluster stopped afterwards, also after a failed job. ``make cluster-demo`` runs every stage."""
import socket

import pytest

from remedi_spark.spark import local_jars
from remedi_spark.standalone import build_wheel, standalone_cluster, submit
from tests.conftest import REPO

pytestmark = pytest.mark.cluster


def _port_open(url: str) -> bool:
    port = int(url.rsplit(":", 1)[1])
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_stages_run_on_a_two_worker_cluster_and_it_stops(spark, tmp_path):
    wheel = build_wheel(tmp_path / "dist")
    jars = local_jars(str(REPO / ".jars"))
    root = tmp_path / "tables"
    args = ["--conf", "conf/cluster_demo.yaml", "--set", f"tables.root={root}", "--set", "synthetic.n_users=1500",
            "--set", "synthetic.chunk_users=500"]
    with standalone_cluster(tmp_path / "cluster", workers=2) as master:
        assert _port_open(master)
        for script in ("generate.py", "build_features.py"):
            submit(master, script, args, jars, wheel, tmp_path / f"{script}.log")
        with pytest.raises(RuntimeError, match="score.py failed"):
            submit(master, "score.py", [*args, "--month", "2031-01"], jars, wheel, tmp_path / "score.log")
        assert "no feature rows for month 2031-01" in (tmp_path / "score.log").read_text()
    assert not _port_open(master)
    for worker in ("work0", "work1"):  # each application had an executor on both workers
        assert len(list((tmp_path / "cluster" / worker).glob("app-*"))) == 3, worker
    features = spark.read.format("delta").load(str(root / "features"))
    assert features.select("user_id").distinct().count() == 1500


def test_the_cluster_is_stopped_when_the_body_fails(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with standalone_cluster(tmp_path / "cluster", workers=1) as master:
            url = master
            1 / 0
    assert not _port_open(url)
