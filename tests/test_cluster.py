"""Cluster mode: stages submitted with spark-submit to a two-worker standalone cluster on
127.0.0.1 (pandas UDFs and Delta writes on executors, the project shipped as a wheel), and the
cluster stopped afterwards, also after a failed job. ``make cluster-demo`` runs every stage."""
import socket

import pytest

from remedi_spark.spark import local_jars
from remedi_spark.standalone import build_wheel, standalone_cluster, submit
from tests.conftest import REPO

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


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


def test_oof_agreement_and_the_printed_comparison():
    import numpy as np
    import pandas as pd

    from remedi_spark.standalone import format_comparison, oof_agreement

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    keys = pd.DataFrame({"user_id": np.arange(400), "month": "2024-10", "model": "m", "y": y})
    local = keys.assign(p=y + rng.normal(0, 1, 400))
    same = oof_agreement(local, local)[0]
    assert same["rows"] == 400 and same["positives"] == y.sum()
    assert same["auc_cluster"] == same["auc_local"] and same["spearman"] == pytest.approx(1.0)
    shuffled = oof_agreement(keys.assign(p=rng.permutation(local["p"].to_numpy())), local)[0]
    assert abs(shuffled["auc_cluster"] - 0.5) < 0.1 < shuffled["auc_local"] - 0.5 and abs(shuffled["spearman"]) < 0.2
    result = {"rows": {"scores": {"cluster": 5, "local": 6}}, "oof": [shuffled], "max_auc_diff": 0.3,
              "rows_equal": False, "metrics": {"distill_results": [{"name": "student", "auc_cluster": 0.7,
                                                                    "auc_local": 0.8, "precision_at_k_cluster": 0.1,
                                                                    "precision_at_k_local": 0.2}]},
              "seconds": {"cluster": {"score": 3.0}, "local": {"score": 1.0}}}
    text = format_comparison(result, 0.02)
    assert "<-- differs" in text and "row counts DIFFER" in text and "student" in text and "score 3.0/1.0" in text
