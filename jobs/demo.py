"""spark-submit / Databricks entry point: demo. Usage: spark-submit jobs/demo.py --conf conf/cluster.yaml ..."""
import sys

from remedi_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
