"""Session profiles: local sessions carry Delta and the cached jars; databricks reuses the session."""
import pytest

from remedi_spark.config import replace
from remedi_spark.spark import get_spark, local_jars


def test_local_session_has_delta_and_synapseml_jars(spark):
    conf = spark.sparkContext.getConf()
    assert conf.get("spark.sql.extensions") == "io.delta.sql.DeltaSparkSessionExtension"
    jars = conf.get("spark.jars")
    assert "delta-spark_2.12-3.3.2.jar" in jars and "synapseml-lightgbm_2.12-1.1.3.jar" in jars
    assert "scala-library" not in jars  # pyspark ships it: no second copy on the classpath
    # SynapseML's Python wrapper finds its JVM class in those jars
    from synapse.ml.lightgbm import LightGBMClassifier

    assert LightGBMClassifier(numIterations=3).getNumIterations() == 3


def test_databricks_profile_uses_the_existing_session(spark, base_cfg):
    settings = replace(base_cfg, spark={"profile": "databricks"}).spark
    assert get_spark(settings) is spark


def test_missing_jars_say_how_to_fix(tmp_path):
    with pytest.raises(RuntimeError, match="run `make setup`"):
        local_jars(str(tmp_path))
