"""spark-submit / Databricks entry point: foundation. Usage: spark-submit jobs/foundation.py --conf conf/cluster.yaml ..."""
import sys

from remedi_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["foundation", *sys.argv[1:]]))
