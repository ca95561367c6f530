"""The MLflow Model Registry flow on a local SQLite registry beside the file store: every registered
student gets alias `challenger` with its signature and input example, a worse challenger is not
promoted over the champion while an equal or better one is, and `models:/<name>@champion` scores
exactly as the saved student does."""
import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from remedi_spark.config import ModelSpec, replace
from remedi_spark.distill.students import load_student, register_student
from remedi_spark.io.store import TableStore
from remedi_spark.models.base import FeatureSpec, load_model
from remedi_spark.models.registry import build_model
from remedi_spark.promotion import settle
from remedi_spark.scoring.score import student_scores
from remedi_spark.tracking import Tracker

FAST = {"num_iterations": 40, "learning_rate": 0.1, "min_data_in_leaf": 20}
MONTH = "2024-09"  # the evaluation month: no student trains on it


@pytest.fixture(scope="module")
def world(spark, base_cfg, tmp_path_factory):
    """Feature rows of a training month and a labelled evaluation month (~8% buyers; signal in two
    numeric columns and a categorical one; some values missing) and two mse students saved where
    distillation saves them: `good` learnt the labels, `noise` a random target (a random ranking)."""
    rng = np.random.default_rng(3)
    n = 12_000
    x = rng.normal(size=(n, 3))
    brand = rng.choice(["aurora", "bexley", "corin"], n).astype(object)
    brand[rng.random(n) < 0.05] = None
    logit = 1.6 * x[:, 0] + np.where(x[:, 1] > 0.5, 1.0, 0.0) + (brand == "corin") * 0.8 - 3.2
    pdf = pd.DataFrame({"user_id": np.arange(n), "month": np.where(np.arange(n) < n // 2, "2024-08", MONTH),
                        "y": (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int),
                        "f0": x[:, 0], "f1": x[:, 1], "f2": np.where(rng.random(n) < 0.03, np.nan, x[:, 2]),
                        "visits": rng.poisson(2, n), "brand": brand})
    features = spark.createDataFrame(pdf).withColumn("f2", F.nanvl("f2", F.lit(None))).cache()
    spec_features = FeatureSpec.from_frame(features.drop("y"))
    train = spec_features.encode(features.filter(F.col("month") != MONTH), extra=("y",))
    root = str(tmp_path_factory.mktemp("registry") / "tables")
    paths = {}
    for name, target in (("good", F.col("y")), ("noise", F.rand(seed=5))):
        spec = ModelSpec(name=name, family="lgbm", backend="native", objective="mse", feature_group=None, params=FAST)
        frame = train.withColumn("y", target.cast("double"))
        held = F.col("user_id") % 10 == 0
        model = build_model(spec, base_cfg.base_models, spec_features).fit(frame.filter(~held), frame.filter(held))
        paths[name] = f"{root}/models/{name}"
        model.save(spark, paths[name], extra={"run_id": f"distill-{name}", "evaluation_month": MONTH})
    return {"root": root, "features": features, "paths": paths}


def registry_cfg(base_cfg, world, name, **sections):
    """Tracking on, registry at <root>/mlflow.db (the default), students registered as ``name``."""
    return replace(base_cfg, tables={"root": world["root"]}, lead_list={"k": 300},
                   evaluation={"bootstrap": {"replicates": 400}},
                   tracking={"enabled": True, "experiment": f"test-{name}", "registered_model": name}, **sections)


def register(spark, cfg, world, student):
    tracker = Tracker(cfg, world["root"])
    with tracker.run(f"distill-{student}", {"remedi.run_id": f"distill-{student}"}):
        return register_student(spark, cfg, tracker, world["paths"][student], world["features"], student)["version"]


def month_rows(world) -> pd.DataFrame:
    """The evaluation month's feature rows as the pyfunc student takes them (its signature: numeric
    columns as double, so the integer column is cast; MLflow refuses int64 for a double column)."""
    rows = world["features"].filter(F.col("month") == MONTH).toPandas().sort_values("user_id", ignore_index=True)
    return rows.astype({"visits": "float64"})


def test_every_registered_student_is_the_challenger_with_signature_and_input_example(spark, base_cfg, world):
    cfg = registry_cfg(base_cfg, world, "students-a")
    tracker = Tracker(cfg, world["root"])
    assert tracker.alias_version("challenger") is None  # nothing registered under the name yet
    first = register(spark, cfg, world, "good")
    assert cfg.tracking.registry_uri is None and tracker.mlflow.get_registry_uri() == \
        f"sqlite:///{world['root']}/mlflow.db"
    assert tracker.alias_version("challenger") == first
    second = register(spark, cfg, world, "noise")
    assert second != first and tracker.alias_version("challenger") == second
    assert tracker.alias_version("champion") is None  # registering never promotes
    info = tracker.mlflow.models.get_model_info("models:/students-a@challenger")
    student = load_model(spark, world["paths"]["noise"], cfg.base_models, [world["root"]])
    assert info.signature.inputs.input_names() == student.features.columns == ["f0", "f1", "f2", "visits", "brand"]
    assert info.signature.outputs.input_names() == ["score"]
    assert info.saved_input_example_info is not None


def test_a_worse_challenger_is_not_promoted_an_equal_or_better_one_is(spark, base_cfg, world):
    cfg = registry_cfg(base_cfg, world, "students-b")
    rows = month_rows(world)
    columns = ["f0", "f1", "f2", "visits", "brand"]
    decisions = []
    for student in ("noise", "good", "noise", "good"):
        version = register(spark, cfg, world, student)
        tracker = Tracker(cfg, world["root"])
        champion = tracker.alias_version("champion")
        frame = rows[["user_id", "y"]].assign(eligible=True)
        for role, v in (("challenger", version), ("champion", champion)):
            if v is not None:  # each version scored as loaded back from the registry
                frame[role] = tracker.mlflow.pyfunc.load_model(f"models:/students-b/{v}").predict(rows[columns])
        with tracker.run("pipeline", {"remedi.run_id": f"pipeline-{version}"}):
            decisions.append(settle(cfg, tracker, version, champion, MONTH, frame))
        assert tracker.alias_version("champion") == decisions[-1]["champion_after"]
    first, better, worse, equal = decisions
    assert first["decision"] == "promote" and first["champion_version"] is None
    assert better["decision"] == "promote" and better["ci_low"] > 0
    assert better["p_at_k_challenger"] > better["p_at_k_champion"]
    # the random ranking against the good champion: kept out, the champion stays on the good version
    assert worse["decision"] == "keep" and worse["ci_high"] < 0 and worse["ci_low"] < -cfg.tracking.promotion_margin
    assert worse["champion_after"] == better["challenger_version"]
    assert worse["positives"] == int(rows["y"].sum()) and worse["k"] == 300
    # the same student again: no difference at all, promoted
    assert equal["decision"] == "promote" and equal["difference"] == 0 and equal["ci_low"] == 0
    assert Tracker(cfg, world["root"]).alias_version("champion") == equal["challenger_version"]


def test_the_champion_uri_scores_as_the_saved_student(spark, base_cfg, world):
    cfg = registry_cfg(base_cfg, world, "students-c")
    version = register(spark, cfg, world, "good")
    tracker = Tracker(cfg, world["root"])
    with tracker.run("pipeline", {"remedi.run_id": "pipeline-c"}):
        settle(cfg, tracker, version, None, None, None)  # no champion yet: promoted
    assert tracker.alias_version("champion") == version
    features = world["features"].filter(F.col("month") == MONTH)
    saved = load_model(spark, world["paths"]["good"], cfg.base_models, [world["root"]])
    expected = student_scores(saved, features).toPandas().sort_values("user_id", ignore_index=True)
    # the scoring job's way: scoring.model_uri → the registered student folder, scored on Spark
    scoring = replace(cfg, scoring={"model_uri": "models:/students-c@champion"})
    registered = load_student(spark, scoring, TableStore(spark, world["root"]))
    assert registered.run_id == "distill-good" and registered.path == f"models:/students-c@champion (version {version})"
    got = student_scores(registered.model, features).toPandas().sort_values("user_id", ignore_index=True)
    np.testing.assert_allclose(got["score"], expected["score"], rtol=0, atol=1e-12)
    # serving's way: the pyfunc model on the month's feature rows
    rows = month_rows(world)
    served = tracker.mlflow.pyfunc.load_model("models:/students-c@champion").predict(rows)
    np.testing.assert_allclose(np.asarray(served), expected["score"], rtol=0, atol=1e-12)
