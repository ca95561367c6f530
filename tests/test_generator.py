"""Synthetic world: deterministic per seed, oracle consistent with simulated purchases, positive rate in band."""
import numpy as np
import pytest
from pyspark.sql import functions as F

from remedi_spark.data.behaviour import WorldParams, simulate_chunk
from remedi_spark.io.store import TableStore
from remedi_spark.months import month_range, parse_month
from remedi_spark.pipeline import run_stage

START, END = parse_month("2024-06"), parse_month("2025-01")


def _params(seed=5, **over):
    return WorldParams(**{"seed": seed, "hazard_scale": 0.45, "missing_rate": 0.02, "burn_in_months": 24, **over})


def test_same_seed_same_data_other_seed_other_data():
    ids = np.arange(1, 501)
    a = simulate_chunk(_params(), 3, ids, START, END)[1]
    b = simulate_chunk(_params(), 3, ids, START, END)[1]
    c = simulate_chunk(_params(seed=6), 3, ids, START, END)[1]
    assert all(x.equals(y) for x, y in zip(a, b))
    assert not a[0]["web_query_cnt_s1"].equals(c[0]["web_query_cnt_s1"])


def test_oracle_matches_simulated_purchase_rates():
    """The oracle is the exact forward probability: its mean must match realized purchase rates."""
    _, frames = simulate_chunk(_params(), 0, np.arange(1, 80_001), START, END)
    bought = np.stack([f["purchased"].to_numpy() for f in frames])  # months × users
    for h in (1, 2, 3):
        realized = np.concatenate([bought[t + h] for t in range(len(frames) - h)])
        expected = np.concatenate([frames[t][f"p_h{h}"].to_numpy() for t in range(len(frames) - h)])
        n = realized.size
        se = np.sqrt(expected.mean() * (1 - expected.mean()) / n)
        assert abs(realized.mean() - expected.mean()) < 4 * se, (h, realized.mean(), expected.mean())
    # and it ranks: the oracle's top 7.5% holds far more than 7.5% of next-3-month buyers
    y = bought[1:4].any(axis=0)
    p3 = frames[0][["p_h1", "p_h2", "p_h3"]].sum(axis=1).to_numpy()
    top = np.argsort(-p3)[: int(0.075 * len(p3))]
    assert y[top].sum() / y.sum() > 0.5


def test_missing_values_and_noise_columns_exist():
    frame = simulate_chunk(_params(), 1, np.arange(1, 5001), START, START)[1][0]
    assert frame["app_active_days"].isna().mean() > 0.3  # structurally missing: no app
    assert 0.005 < frame["voice_cnt"].isna().mean() < 0.05  # random outages
    assert frame["web_query_cnt_s1"].max() > 20 * frame["web_query_cnt_s1"].mean()  # heavy tail


@pytest.fixture(scope="module")
def generated_50k(spark, base_cfg, tmp_path_factory):
    from remedi_spark.config import replace

    cfg = replace(base_cfg, synthetic={"n_users": 50_000, "chunk_users": 12_500},
                  tables={"root": str(tmp_path_factory.mktemp("gen50k"))})
    gen = run_stage(spark, cfg, "generate")
    feats = run_stage(spark, cfg, "features")
    return cfg, gen, feats


@pytest.mark.slow  # 50k owners (~1,100 labelled positives): the band below is ±3.7 standard errors wide
def test_positive_rate_in_band_at_50k_users(generated_50k):
    _, _, feats = generated_50k
    labelled = [r for r in feats["per_month"].values() if r["labelled"]]
    assert len(labelled) == 5  # 2024-06..2024-10 have complete 3-month windows
    rate = sum(r["positives"] for r in labelled) / sum(r["labelled"] for r in labelled)
    assert 0.0040 <= rate <= 0.0050, rate


def test_generated_tables_are_consistent(spark, world):
    """On the shared world (tests/world.py): 3,000 owners over 2024-06..2025-01."""
    cfg, gen = world.cfg, world.out["generate"]
    n, months = cfg.synthetic.n_users, len(month_range(cfg.synthetic.start_month, cfg.synthetic.end_month))
    assert months == 8
    store = TableStore(spark, cfg.tables.root)
    assert store.read("owners").count() == n
    activity = store.read("monthly_activity")
    assert activity.count() == n * months
    assert activity.select("user_id").distinct().count() == n
    oracle = store.read("oracle")
    assert oracle.count() == n * months
    assert oracle.filter(F.abs(F.col("p_3m") - F.col("p_h1") - F.col("p_h2") - F.col("p_h3")) > 1e-12).count() == 0
    assert store.read("purchases").count() == sum(gen["buyers_per_month"].values()) > 0
    manifest = store.load_manifest(gen["run_id"])
    assert {w["table"] for w in manifest["writes"]} == {"owners", "monthly_activity", "purchases", "oracle"}


def test_regenerating_is_identical_and_idempotent(spark, world, tmp_path):
    """The world's generate config on a fresh root gives the world's purchases; generating again
    on that root replaces them with the same rows."""
    from remedi_spark.config import replace

    cfg = replace(world.cfg, tables={"root": str(tmp_path / "t")}, tracking={"enabled": False})
    store = TableStore(spark, cfg.tables.root)
    first = run_stage(spark, cfg, "generate")
    assert first["buyers_per_month"] == world.out["generate"]["buyers_per_month"]
    shared = TableStore(spark, world.root).read("purchases")
    assert store.read("purchases").exceptAll(shared).count() == 0 and shared.exceptAll(store.read("purchases")).count() == 0
    before = store.read("purchases")
    version = store.version("purchases")
    again = run_stage(spark, cfg, "generate")
    assert again["buyers_per_month"] == first["buyers_per_month"]
    after = store.read("purchases")
    assert after.count() == before.count()
    assert store.read("purchases", version=version).exceptAll(after).count() == 0
