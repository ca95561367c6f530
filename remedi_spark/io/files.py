"""Small text files (models, sidecars) on any filesystem Spark can reach (local, HDFS, S3, DBFS).

Goes through Hadoop's FileSystem API on the driver, so the same call works for a local path
and for ``s3a://`` or ``dbfs:/`` roots.
"""
from __future__ import annotations

from pyspark.sql import SparkSession


def _fs_path(spark: SparkSession, path: str):
    jvm = spark._jvm
    p = jvm.org.apache.hadoop.fs.Path(path)
    return p.getFileSystem(spark._jsc.hadoopConfiguration()), p


def write_bytes(spark: SparkSession, path: str, data: bytes) -> None:
    """Write ``data`` to ``path``, replacing it."""
    fs, p = _fs_path(spark, path)
    out = fs.create(p, True)
    try:
        out.write(bytearray(data))
    finally:
        out.close()


def read_bytes(spark: SparkSession, path: str) -> bytes:
    """Read a file written by :func:`write_bytes`."""
    fs, p = _fs_path(spark, path)
    if not fs.exists(p):
        raise FileNotFoundError(f"no file at {path}")
    stream = fs.open(p)
    try:
        return bytes(spark._jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
    finally:
        stream.close()


def write_text(spark: SparkSession, path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path``, replacing it."""
    write_bytes(spark, path, text.encode("utf-8"))


def read_text(spark: SparkSession, path: str) -> str:
    """Read a UTF-8 text file written by :func:`write_text`."""
    return read_bytes(spark, path).decode("utf-8")
