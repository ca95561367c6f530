"""spark-submit / Databricks entry point: folds. Usage: spark-submit jobs/make_folds.py --conf conf/cluster.yaml ..."""
import sys

from remedi_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["folds", *sys.argv[1:]]))
