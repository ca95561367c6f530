"""spark-submit / Databricks entry point: distill. Usage: spark-submit jobs/distill.py --conf conf/cluster.yaml ..."""
import sys

from remedi_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["distill", *sys.argv[1:]]))
