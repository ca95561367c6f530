"""The table schemas (``<table>.json``), packaged as ``remedi_spark.schemas``. A regular package,
not a namespace one, so they also load from a wheel on ``--py-files`` (zipimport)."""
