"""spark-submit / Databricks entry point: generate. Usage: spark-submit jobs/generate.py --conf conf/cluster.yaml ..."""
import sys

from remedi_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
