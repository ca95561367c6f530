"""spark-submit / Databricks entry point: backtest. Usage: spark-submit jobs/backtest.py --conf conf/cluster.yaml ..."""
import sys

from remedi_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["backtest", *sys.argv[1:]]))
