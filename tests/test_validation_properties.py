"""Property-based tests of the input validators (hypothesis), for every entry table: a clean
random frame built from the table's schema passes; the same frame with one corruption fails,
naming exactly the corrupted column and counting exactly the corrupted rows. The month check in
Python (``parse_month``) and in Spark (``MONTH_PATTERN``) accept the same strings."""
import datetime as dt
import math
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remedi_spark.io.schemas import MONTH_PATTERN, DataValidationError, load_schema, validate
from remedi_spark.months import parse_month

pytestmark = pytest.mark.reliability
TABLES = ("monthly_activity", "owners", "purchases")
MONTH = "2024-06"
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])


def _value(column, draw):
    """A valid value of one schema column."""
    if column.allowed is not None:
        return draw(st.sampled_from(column.allowed))
    if column.format == "month":
        return MONTH if column.name == "month" else draw(st.sampled_from(["2019-01", "2021-07", "2023-12"]))
    if column.type in ("integer", "long"):
        return draw(st.integers(0 if column.nonnegative else -10**6, 10**6))
    if column.type == "double":
        return draw(st.floats(0 if column.nonnegative else -1e9, 1e9, allow_nan=False, allow_infinity=False))
    if column.type == "boolean":
        return draw(st.booleans())
    if column.type == "date":
        return draw(st.dates(dt.date(2020, 1, 1), dt.date(2025, 12, 31)))
    return draw(st.text(alphabet="abcdefghij", min_size=1, max_size=6))


@st.composite
def clean_rows(draw, table):
    """1–5 rows with distinct keys; the first row has every value (so no column is entirely null)."""
    schema = load_schema(table)
    n = draw(st.integers(1, 5))
    ids = draw(st.lists(st.integers(1, 10**9), min_size=n, max_size=n, unique=True))
    rows = []
    for i, uid in enumerate(ids):
        row = {}
        for c in schema.columns:
            if c.name == "user_id":
                row[c.name] = uid
            elif c.nullable and i > 0 and draw(st.booleans()):
                row[c.name] = None
            else:
                row[c.name] = _value(c, draw)
        rows.append(row)
    return rows


def _corruptions(table):
    schema = load_schema(table)
    kinds = ["null_key", "duplicate", "drop", "extra", "mistype"]
    kinds += ["negative"] if any(c.nonnegative for c in schema.columns) else []
    kinds += ["nan", "inf"] if any(c.type == "double" for c in schema.columns) else []
    kinds += ["outside"] if any(c.allowed for c in schema.columns) else []
    kinds += ["bad_month"] if any(c.format == "month" for c in schema.columns) else []
    return kinds


@st.composite
def corrupted(draw, table):
    """(rows, corruption, column, how many rows are bad) for ``table``."""
    schema = load_schema(table)
    rows = [dict(r) for r in draw(clean_rows(table))]
    kind = draw(st.sampled_from(_corruptions(table)))
    hit = draw(st.lists(st.integers(0, len(rows) - 1), min_size=1, max_size=len(rows), unique=True))
    pick = lambda rule: draw(st.sampled_from([c for c in schema.columns if rule(c)]))  # noqa: E731
    if kind == "negative":
        col = pick(lambda c: c.nonnegative)
        for i in hit:
            rows[i][col.name] = -draw(st.integers(1, 10**6)) if col.type != "double" else -draw(st.floats(1e-3, 1e9))
    elif kind in ("nan", "inf"):
        col = pick(lambda c: c.type == "double")
        for i in hit:
            rows[i][col.name] = math.nan if kind == "nan" else draw(st.sampled_from([math.inf, -math.inf]))
    elif kind == "outside":
        col = pick(lambda c: c.allowed)
        for i in hit:
            rows[i][col.name] = draw(st.sampled_from([99, -1]) if col.type == "integer" else st.just("zzz"))
    elif kind == "bad_month":
        col = pick(lambda c: c.format == "month")
        bad = draw(st.text(max_size=9).filter(lambda t: not re.fullmatch(MONTH_PATTERN[1:-1], t)))
        for i in hit:
            rows[i][col.name] = bad
    elif kind == "null_key":
        col = pick(lambda c: c.name in schema.keys)
        for i in hit:
            rows[i][col.name] = None
    elif kind == "duplicate":
        col = None
        rows += [dict(rows[i]) for i in hit]
    else:
        col = pick(lambda c: c.name not in schema.keys) if kind != "extra" else None
    name = ",".join(schema.keys) if kind == "duplicate" else "shoe_size" if kind == "extra" else col.name
    return rows, kind, name, len(hit)


def _frame(spark, table, rows, kind="", col=""):
    import pyspark.sql.functions as F
    import pyspark.sql.types as T

    # an extract's schema says nothing about nulls: every field nullable, so bad keys get through to validate
    struct = T.StructType([T.StructField(f.name, f.dataType, True) for f in load_schema(table).struct().fields])
    df = spark.createDataFrame([tuple(r[f.name] for f in struct.fields) for r in rows], struct)
    if kind == "drop":
        df = df.drop(col)
    elif kind == "extra":
        df = df.withColumn(col, F.lit(42))
    elif kind == "mistype":
        df = df.withColumn(col, F.array(F.col(col)))
    return df


@pytest.mark.parametrize("table", TABLES)
def test_clean_frames_pass(spark, table):
    @SETTINGS
    @given(rows=clean_rows(table))
    def check(rows):
        validate(_frame(spark, table, rows), table)
    check()


@pytest.mark.parametrize("table", TABLES)
def test_each_corruption_is_named_and_counted(spark, table):
    @SETTINGS
    @given(case=corrupted(table))
    def check(case):
        rows, kind, col, n_bad = case
        with pytest.raises(DataValidationError) as info:
            validate(_frame(spark, table, rows, kind, col), table)
        problems = info.value.problems
        assert info.value.table == table
        assert [c for c, _ in problems] == [col], (kind, problems)
        message = problems[0][1]
        if kind in ("drop", "extra", "mistype"):
            assert {"drop": "missing", "extra": "not in the schema", "mistype": "expected type"}[kind] in message
        else:
            assert message.startswith(f"{n_bad} "), (kind, message)
            assert "e.g. (" in message
    check()


@settings(max_examples=300)
@given(text=st.one_of(st.text(max_size=9), st.from_regex(MONTH_PATTERN[1:-1], fullmatch=True)))
def test_python_and_spark_month_checks_agree(text):
    spark_accepts = re.fullmatch(MONTH_PATTERN[1:-1], text) is not None  # the same regex Spark's rlike runs
    try:
        parse_month(text)
        python_accepts = True
    except ValueError:
        python_accepts = False
    assert python_accepts == spark_accepts, text
