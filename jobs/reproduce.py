"""spark-submit / Databricks entry point: reproduce. Usage: spark-submit jobs/reproduce.py --conf conf/cluster.yaml --run <id> --out <root>"""
import sys

from remedi_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["reproduce", *sys.argv[1:]]))
