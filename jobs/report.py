"""spark-submit / Databricks entry point: report. Usage: spark-submit jobs/report.py --conf conf/cluster.yaml ..."""
import sys

from remedi_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
