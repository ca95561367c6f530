"""spark-submit / Databricks entry point: score. Usage: spark-submit jobs/score.py --conf conf/cluster.yaml ..."""
import sys

from remedi_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
