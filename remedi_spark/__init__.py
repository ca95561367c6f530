"""remedi-spark: the REMEDI lead-scoring method as a Spark pipeline over Delta tables."""
__version__ = "0.1.0"
