"""spark-submit / Databricks entry point: meta-features. Usage: spark-submit jobs/meta_features.py --conf conf/cluster.yaml ..."""
import sys

from remedi_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["meta-features", *sys.argv[1:]]))
