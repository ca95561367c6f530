"""spark-submit / Databricks entry point: kaml-study. Usage: spark-submit jobs/kaml_study.py --conf conf/cluster.yaml ..."""
import sys

from remedi_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["kaml-study", *sys.argv[1:]]))
