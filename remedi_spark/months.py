"""Month arithmetic on the project's month keys (``'YYYY-MM'`` strings).

Every table is keyed by a month string; models and window functions need an
integer index instead, so both directions live here.
"""
from __future__ import annotations

import re

# ASCII digits and no trailing newline: exactly what the tables' Spark check (schemas.MONTH_PATTERN) accepts
_MONTH_RE = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])")


def parse_month(month: str) -> int:
    """Return the month index ``year * 12 + (month - 1)`` of ``'YYYY-MM'``.

    Raises ``ValueError`` naming the bad value when it is not a valid month key.
    """
    m = _MONTH_RE.fullmatch(str(month))
    if not m:
        raise ValueError(f"invalid month {month!r}: expected 'YYYY-MM'")
    return int(m.group(1)) * 12 + int(m.group(2)) - 1


def format_month(index: int) -> str:
    """Inverse of :func:`parse_month`."""
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def add_months(month: str, n: int) -> str:
    """``month`` shifted by ``n`` months (``n`` may be negative)."""
    return format_month(parse_month(month) + n)


def month_range(start: str, end: str) -> list[str]:
    """All months from ``start`` to ``end`` inclusive; error if ``end`` precedes ``start``."""
    a, b = parse_month(start), parse_month(end)
    if b < a:
        raise ValueError(f"month range {start}..{end} is empty: end precedes start")
    return [format_month(i) for i in range(a, b + 1)]


def parse_month_spec(spec: str) -> list[str]:
    """Parse ``'2024-06'``, ``'2024-06..2025-01'`` or ``'2024-06,2024-08'`` into a month list."""
    months: list[str] = []
    for part in str(spec).split(","):
        part = part.strip()
        if ".." in part:
            start, end = part.split("..", 1)
            months.extend(month_range(start.strip(), end.strip()))
        elif part:
            parse_month(part)
            months.append(part)
    if not months:
        raise ValueError(f"no month in {spec!r}")
    return sorted(set(months))
