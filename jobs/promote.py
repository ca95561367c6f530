"""spark-submit / Databricks entry point: promote. Usage: spark-submit jobs/promote.py --conf conf/cluster.yaml ..."""
import sys

from remedi_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["promote", *sys.argv[1:]]))
