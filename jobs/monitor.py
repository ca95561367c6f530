"""spark-submit / Databricks entry point: monitor. Usage: spark-submit jobs/monitor.py --conf conf/cluster.yaml ..."""
import sys

from remedi_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["monitor", *sys.argv[1:]]))
