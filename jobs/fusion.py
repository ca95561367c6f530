"""spark-submit / Databricks entry point: fusion. Usage: spark-submit jobs/fusion.py --conf conf/cluster.yaml ..."""
import sys

from remedi_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["fusion", *sys.argv[1:]]))
