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


def test_output_of_processes_started_in_output_to_goes_to_the_file(tmp_path, capfd):
    """How a JVM started by get_spark(log_file=...) writes to the log: processes started inside the
    block keep fds 1 and 2 (native "[LightGBM] ..." lines, log4j's console appender, worker stderr)."""
    import subprocess
    import sys

    from remedi_spark.spark import output_to

    log = tmp_path / "run.log"
    log.write_text("first line\n")
    with output_to(str(log)):
        subprocess.run([sys.executable, "-c", "import sys; print('[LightGBM] [Info] Listening...'); "
                        "print('26/12/01 WARN Utils: noise', file=sys.stderr)"], check=True)
    print("back on the console")
    out, err = capfd.readouterr()
    assert out == "back on the console\n" and err == ""
    assert log.read_text() == "first line\n[LightGBM] [Info] Listening...\n26/12/01 WARN Utils: noise\n"


def test_a_running_jvm_keeps_its_console_at_error_level(spark, base_cfg, tmp_path):
    """spark-submit's JVM is there before get_spark: its output cannot move, so only errors are shown."""
    log = tmp_path / "run.log"
    root = spark.sparkContext._jvm.org.apache.logging.log4j.LogManager.getRootLogger()
    try:
        assert get_spark(base_cfg.spark, log_file=str(log)) is spark
        assert str(root.getLevel()) == "ERROR" and not log.exists()
    finally:
        spark.sparkContext.setLogLevel("WARN")
    assert str(root.getLevel()) == "WARN"
