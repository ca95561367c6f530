"""spark-submit / Databricks entry point: hm3-study. Usage: spark-submit jobs/hm3_study.py --conf conf/cluster.yaml ..."""
import sys

from remedi_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["hm3-study", *sys.argv[1:]]))
