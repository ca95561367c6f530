import pytest

from remedi_spark.months import add_months, format_month, month_range, parse_month, parse_month_spec


def test_round_trip_and_arithmetic():
    assert format_month(parse_month("2024-12")) == "2024-12"
    assert add_months("2024-11", 3) == "2025-02"
    assert add_months("2025-01", -7) == "2024-06"
    assert month_range("2024-11", "2025-02") == ["2024-11", "2024-12", "2025-01", "2025-02"]


def test_specs():
    assert parse_month_spec("2024-06..2024-08") == ["2024-06", "2024-07", "2024-08"]
    assert parse_month_spec("2024-08,2024-06") == ["2024-06", "2024-08"]


@pytest.mark.parametrize("bad", ["2024-13", "2024-6", "24-06", "2024/06", ""])
def test_bad_months_rejected(bad):
    with pytest.raises(ValueError):
        parse_month(bad)


def test_empty_range_rejected():
    with pytest.raises(ValueError, match="end precedes start"):
        month_range("2025-01", "2024-06")
