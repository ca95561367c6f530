"""Property-based tests of the input validators (hypothesis): a clean random ``monthly_activity``
frame passes; the same frame with one corruption fails, naming exactly the corrupted column and
counting exactly the corrupted rows; nothing else is reported. The month check in Python
(``parse_month``) and in Spark (``MONTH_PATTERN``) accept the same strings."""
import math
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remedi_spark.io.schemas import MONTH_PATTERN, DataValidationError, load_schema, validate
from remedi_spark.months import parse_month

pytestmark = pytest.mark.reliability

SCHEMA = load_schema("monthly_activity")
INTS = [c.name for c in SCHEMA.columns if c.type == "integer"]
DOUBLES = [c.name for c in SCHEMA.columns if c.type == "double"]
MONTH = "2024-06"
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])


@st.composite
def clean_rows(draw):
    """1–5 owners of one month; the first row has every value (so no column is entirely null)."""
    n = draw(st.integers(1, 5))
    ids = draw(st.lists(st.integers(1, 10**9), min_size=n, max_size=n, unique=True))
    rows = []
    for i, uid in enumerate(ids):
        row = {"user_id": uid, "month": MONTH}
        for c in INTS:
            row[c] = draw(st.integers(0, 10**6) if i == 0 else st.one_of(st.none(), st.integers(0, 10**6)))
        for c in DOUBLES:
            finite = st.floats(0, 1e9, allow_nan=False, allow_infinity=False)
            row[c] = draw(finite if i == 0 else st.one_of(st.none(), finite))
        rows.append(row)
    return rows


CORRUPTIONS = ["negative", "nan", "inf", "null_key", "bad_month", "duplicate", "drop", "extra", "mistype"]


@st.composite
def corrupted(draw):
    """(rows, corruption, column, how many bad rows, keep column types as strings?)."""
    rows = [dict(r) for r in draw(clean_rows())]
    kind = draw(st.sampled_from(CORRUPTIONS))
    hit = draw(st.lists(st.integers(0, len(rows) - 1), min_size=1, max_size=len(rows), unique=True))
    if kind == "negative":
        col = draw(st.sampled_from(INTS))
        for i in hit:
            rows[i][col] = -draw(st.integers(1, 10**6))
    elif kind in ("nan", "inf"):
        col = draw(st.sampled_from(DOUBLES))
        for i in hit:
            rows[i][col] = math.nan if kind == "nan" else draw(st.sampled_from([math.inf, -math.inf]))
    elif kind == "null_key":
        col = "user_id"
        for i in hit:
            rows[i][col] = None
    elif kind == "bad_month":
        col = "month"
        bad = draw(st.text(min_size=0, max_size=9).filter(lambda t: not re.fullmatch(MONTH_PATTERN[1:-1], t)))
        for i in hit:
            rows[i][col] = bad
    elif kind == "duplicate":
        col = "user_id,month"
        rows += [dict(rows[i]) for i in hit]
    else:
        col = draw(st.sampled_from(INTS + DOUBLES)) if kind != "extra" else "shoe_size"
    return rows, kind, col, len(hit)


def _frame(spark, rows, kind="", col=""):
    import pyspark.sql.functions as F
    import pyspark.sql.types as T

    # an extract's schema says nothing about nulls: every field nullable, so bad keys get through to validate
    struct = T.StructType([T.StructField(f.name, f.dataType, True) for f in SCHEMA.struct().fields])
    df = spark.createDataFrame([tuple(r[f.name] for f in struct.fields) for r in rows], struct)
    if kind == "drop":
        df = df.drop(col)
    elif kind == "extra":
        df = df.withColumn(col, F.lit(42))
    elif kind == "mistype":
        df = df.withColumn(col, F.col(col).cast("string"))
    return df


@SETTINGS
@given(rows=clean_rows())
def test_clean_frames_pass(spark, rows):
    validate(_frame(spark, rows), "monthly_activity", partitions=[MONTH])


@SETTINGS
@given(case=corrupted())
def test_each_corruption_is_named_and_counted(spark, case):
    rows, kind, col, n_bad = case
    with pytest.raises(DataValidationError) as info:
        validate(_frame(spark, rows, kind, col), "monthly_activity")
    problems = info.value.problems
    assert info.value.table == "monthly_activity"
    assert [c for c, _ in problems] == [col], problems
    message = problems[0][1]
    if kind in ("negative", "nan", "inf", "null_key", "bad_month", "duplicate"):
        assert message.startswith(f"{n_bad} "), message
        assert "e.g. (" in message
    else:
        assert {"drop": "missing", "extra": "not in the schema", "mistype": "expected type"}[kind] in message


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
