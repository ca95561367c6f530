"""spark-submit / Databricks entry point: monitor_demo. Usage: spark-submit jobs/monitor_demo.py --conf conf/cluster.yaml ..."""
import sys

from remedi_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["monitor-demo", *sys.argv[1:]]))
