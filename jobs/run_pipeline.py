"""spark-submit / Databricks entry point: pipeline. Usage: spark-submit jobs/run_pipeline.py --conf conf/cluster.yaml ..."""
import sys

from remedi_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
