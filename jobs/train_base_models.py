"""spark-submit / Databricks entry point: train-base. Usage: spark-submit jobs/train_base_models.py --conf conf/cluster.yaml ..."""
import sys

from remedi_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-base", *sys.argv[1:]]))
