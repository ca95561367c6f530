"""spark-submit / Databricks entry point: features. Usage: spark-submit jobs/build_features.py --conf conf/cluster.yaml ..."""
import sys

from remedi_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["features", *sys.argv[1:]]))
