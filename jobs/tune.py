"""spark-submit / Databricks entry point: tune. Usage: spark-submit jobs/tune.py --conf conf/cluster.yaml --models a,b"""
import sys

from remedi_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
