"""spark-submit / Databricks entry point: lead-list. Usage: spark-submit jobs/lead_list.py --conf conf/cluster.yaml ..."""
import sys

from remedi_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["lead-list", *sys.argv[1:]]))
