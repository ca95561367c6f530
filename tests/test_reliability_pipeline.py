"""Idempotency and reproducibility on a small pipeline run: every stage run twice gives identical
tables (rows and content hash, without the columns that name the writing run); a lead list is
reproduced exactly from its run manifest at the recorded Delta versions, even after its inputs
changed; the CRM export holds only id, rank, score and reason."""
import csv
import glob

import pytest
from pyspark.sql import functions as F

from remedi_spark.config import replace
from remedi_spark.io.store import RUN_COLUMNS, TableStore
from remedi_spark.pipeline import run_pipeline, run_stage
from remedi_spark.reproduce import reproduce_run
from tests.tiny import TINY_MLP, lgbm_spec

pytestmark = [pytest.mark.reliability, pytest.mark.slow]
FAST = {"num_iterations": 20, "learning_rate": 0.1, "min_data_in_leaf": 20}
MODELS = [lgbm_spec("lgbm_logloss", FAST), lgbm_spec("lgbm_dealer", FAST, feature_group="dealer"), TINY_MLP]
META = {"raw_hidden": [8], "relative_hidden": [8], "output_hidden": [8], "epochs": 5, "batch_size": 256, "lr": 0.01,
        "patience": 5, "min_valid_positives": 3, "bags": 1}  # a tiny world: ~20 training positives
# columns that name the run or the model run that wrote a row, or measure wall time: they differ
# between two runs that compute the same thing
VOLATILE = (*RUN_COLUMNS, "model_version", "train_seconds", "seconds_per_1000")


@pytest.fixture(scope="module")
def world(spark, base_cfg, tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    cfg = replace(base_cfg, tables={"root": str(root / "t")}, synthetic={"n_users": 1500, "chunk_users": 1500},
                  folds={"n_folds": 2}, base_models={"models": MODELS, "early_stopping_rounds": 5},
                  fusion={"meta_model": META, "ablations": [], "variants": {}},
                  distill={"students": [{"name": "student", "objective": "mse", "target": "teacher", "params": FAST}],
                           "timing_rows": 300},
                  lead_list={"k": 60}, report={"curve_points": 20, "top_features": 5})
    return cfg, run_pipeline(spark, cfg), TableStore(spark, cfg.tables.root)


def test_a_features_channel_does_not_depend_on_the_order_of_the_groups():
    from remedi_spark.models.base import channel_of

    groups = {"dealer": ["visit_days"], "static": ["segment"], "core": ["visit_days_sum3", "segment"]}
    resorted = dict(sorted(groups.items()))  # as a config read back from a run manifest (sorted JSON keys)
    channels = ["dealer", "static"]  # base_models.channel_groups: `core` selects inputs, it is no channel
    for column, channel in (("visit_days_sum3", "dealer"), ("segment", "static"), ("voice_cnt", "other")):
        assert channel_of(column, groups, channels) == channel_of(column, resorted, channels) == channel
    # without channel groups every group is one, taken by name whatever the order of the mapping
    assert channel_of("visit_days_sum3", groups) == channel_of("visit_days_sum3", resorted) == "core"


def test_the_crm_export_holds_only_id_rank_score_reason(world):
    cfg, out, store = world
    files = glob.glob(f"{out['lead-list[evaluation]']['export']}/csv/*.csv")
    assert len(files) == 1
    with open(files[0]) as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["user_id", "rank", "score", "reason"]
    assert len(rows) - 1 == out["lead-list[evaluation]"]["leads"] == 60


def test_a_lead_list_is_reproduced_from_its_manifest_after_its_inputs_changed(spark, world, tmp_path):
    cfg, out, store = world
    run_id, month = out["lead-list[evaluation]"]["run_id"], out["lead-list[evaluation]"]["month"]
    first = store.read("lead_list", months=[month]).filter("lead_rank = 1").first()["user_id"]
    version = store.version("owners")
    owners = store.read("owners", version=version)  # the top lead asks not to be contacted: today's list differs
    store.write_table(owners.withColumn("do_not_contact", (F.col("user_id") == first) | F.col("do_not_contact")),
                      "owners")
    try:
        result = reproduce_run(spark, cfg.tables.root, run_id, str(tmp_path / "again"))
    finally:
        store.write_table(store.read("owners", version=version), "owners")  # as generated, for the next tests
    assert result["stage"] == "lead-list" and result["options"] == {"month": month}
    assert result["reads"]["owners"] == version
    assert result["identical"], result["tables"]
    assert result["tables"]["lead_list"]["original"]["rows"] == 60
    again = TableStore(spark, str(tmp_path / "again")).read("lead_list").filter("lead_rank = 1").first()
    assert again["user_id"] == first


def test_every_stage_run_twice_gives_identical_tables(spark, world):
    cfg, out, store = world
    oot = out["folds"]["oot_test_month"]
    stages = [("generate", {}, ["owners", "monthly_activity", "purchases", "oracle"]),
              ("features", {}, ["features"]), ("folds", {}, ["folds"]), ("train-base", {}, ["oof_predictions"]),
              ("meta-features", {}, ["meta_features"]), ("fusion", {}, ["teacher_predictions", "fusion_results"]),
              ("distill", {}, ["distill_results"]), ("score", {"month": oot}, ["scores"]),
              ("lead-list", {"month": oot}, ["lead_list"])]
    differ = []
    for stage, options, tables in stages:
        before = {t: store.fingerprint(t, exclude=VOLATILE) for t in tables}
        versions = {t: store.version(t) for t in tables}
        run_stage(spark, cfg, stage, **options)
        for t in tables:
            assert store.version(t) > versions[t], f"{stage} did not rewrite {t}"
            if store.fingerprint(t, exclude=VOLATILE) != before[t]:
                differ.append((stage, t, _changed_models(store, versions[t]) if t == "oof_predictions" else ""))
    assert not differ


def _changed_models(store, version):
    """Per base model whose out-of-fold predictions changed since ``version``: the largest change."""
    keys = ["model", "user_id", "month", "split"]
    before = store.read("oof_predictions", version=version).select(*keys, F.col("p").alias("before"))
    now = store.read("oof_predictions").select(*keys, "p")
    diff = now.join(before, keys, "full").groupBy("model") \
        .agg(F.max(F.abs(F.col("p") - F.col("before"))).alias("max_change"),
             F.sum((F.col("p").isNull() | F.col("before").isNull()).cast("int")).alias("unmatched"))
    return {r["model"]: (r["max_change"], r["unmatched"]) for r in diff.collect()
            if r["unmatched"] or r["max_change"]}


def test_reproducing_with_a_retrained_student_is_refused(spark, world, tmp_path):
    cfg, out, store = world  # the previous test retrained the student
    with pytest.raises(ValueError, match="models are files, not Delta tables"):
        reproduce_run(spark, cfg.tables.root, out["lead-list[evaluation]"]["run_id"], str(tmp_path / "again"))
