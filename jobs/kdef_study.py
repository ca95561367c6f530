"""spark-submit / Databricks entry point: kdef-study. Usage: spark-submit jobs/kdef_study.py --conf conf/cluster.yaml ..."""
import sys

from remedi_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["kdef-study", *sys.argv[1:]]))
