"""Strict request-body validation, in the style of the vendor's NestJS backend.

The vendor marks all nine body fields as required and its backend rejects
unknown properties and bad enum values with HTTP 400, so the simulator does too:
a client that sends a sloppy body must find out here, not in production. Every
problem found is reported, each naming its field, joined with ``"; "`` into the
single ``message`` string of the 400 body.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Final, cast

from fetcher.simulator._vocab import METRICS_BY_TYPE, CountBy, ReportType, SortOrder

__all__ = ["FIELDS", "InvalidBodyError", "Query", "check_page", "is_int", "parse_body"]

#: The nine body fields, in the reference page's order.
FIELDS: Final = (
    "userIds",
    "startDate",
    "endDate",
    "countBy",
    "limit",
    "page",
    "sortOrder",
    "orderBy",
    "type",
)
_ENUMS: Final[dict[str, tuple[str, ...]]] = {
    "countBy": ("relative", "absolute"),
    "sortOrder": ("asc", "desc"),
    "type": ("prospect", "email"),
}
_ALL_METRICS: Final = tuple(dict.fromkeys(m for ms in METRICS_BY_TYPE.values() for m in ms))


class InvalidBodyError(ValueError):
    """The request body breaks the contract; ``problems`` each name a field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Query:
    """A validated request body without its ``page``: what one cached result answers."""

    user_ids: tuple[str, ...]
    start: dt.datetime
    end: dt.datetime
    count_by: CountBy
    order_by: str
    sort_order: SortOrder
    type: ReportType
    limit: int

    @property
    def result_key(self) -> tuple[object, ...]:
        """Everything the sorted rows depend on (``limit`` only slices them)."""
        return (
            self.user_ids,
            self.start,
            self.end,
            self.count_by,
            self.order_by,
            self.sort_order,
            self.type,
        )


def is_int(value: object) -> bool:
    # JSON true/false arrive as bool, a subclass of int, and must not pass as numbers.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_positive_int(
    name: str, value: object, problems: list[str], maximum: int | None = None
) -> None:
    if not is_int(value):
        problems.append(f"{name} must be an integer number")
    elif cast(int, value) < 1:
        problems.append(f"{name} must not be less than 1")
    elif maximum is not None and cast(int, value) > maximum:
        problems.append(f"{name} must not be greater than {maximum}")


def check_page(value: object) -> int:
    """Validate ``page`` alone (used when the rest of the body is known to be valid).

    Raises:
        InvalidBodyError: naming ``page``.
    """
    problems: list[str] = []
    _check_positive_int("page", value, problems)
    if problems:
        raise InvalidBodyError(problems)
    return cast(int, value)


def _parse_date(name: str, value: object, problems: list[str]) -> dt.datetime | None:
    if not isinstance(value, str):
        problems.append(f"{name} must be a valid ISO 8601 date string")
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        problems.append(f"{name} must be a valid ISO 8601 date string")
        return None
    if parsed.utcoffset() is None:
        problems.append(f"{name} must include a UTC offset, e.g. 2024-01-01T00:00:00.000+00:00")
        return None
    return parsed


def _check_user_ids(value: object, problems: list[str]) -> None:
    if not isinstance(value, list):
        problems.append("userIds must be an array")
    elif not value:
        problems.append("userIds should not be empty")
    elif not all(isinstance(item, str) and item for item in value):
        problems.append("each value in userIds must be a non-empty string")


def _check_order_by(value: object, report_type: object, problems: list[str]) -> None:
    if isinstance(report_type, str) and report_type in METRICS_BY_TYPE:
        allowed = METRICS_BY_TYPE[report_type]
        if value not in allowed:
            problems.append(
                f"orderBy must be one of the following values for type {report_type}: "
                + ", ".join(allowed)
            )
    elif value not in _ALL_METRICS:
        problems.append("orderBy must be one of the following values: " + ", ".join(_ALL_METRICS))


def parse_body(body: Any, *, max_page_size: int) -> tuple[Query, int]:
    """Validate a decoded request body.

    Args:
        body: the decoded JSON.
        max_page_size: the largest accepted ``limit``.

    Returns:
        The query (everything but the page) and the page number.

    Raises:
        InvalidBodyError: listing every problem, each naming its field.
    """
    if not isinstance(body, dict):
        raise InvalidBodyError(["body must be a JSON object"])
    problems = [f"property {key} should not exist" for key in body if key not in FIELDS]
    problems += [f"{key} is required" for key in FIELDS if key not in body]
    start = end = None
    if "userIds" in body:
        _check_user_ids(body["userIds"], problems)
    if "startDate" in body:
        start = _parse_date("startDate", body["startDate"], problems)
    if "endDate" in body:
        end = _parse_date("endDate", body["endDate"], problems)
    if start is not None and end is not None and start > end:
        problems.append("startDate must not be after endDate")
    for name, allowed in _ENUMS.items():
        if name in body and body[name] not in allowed:
            problems.append(f"{name} must be one of the following values: {', '.join(allowed)}")
    if "limit" in body:
        _check_positive_int("limit", body["limit"], problems, max_page_size)
    if "page" in body:
        _check_positive_int("page", body["page"], problems)
    if "orderBy" in body:
        _check_order_by(body["orderBy"], body.get("type"), problems)
    if problems:
        raise InvalidBodyError(problems)
    assert start is not None
    assert end is not None
    query = Query(
        user_ids=tuple(body["userIds"]),
        start=start,
        end=end,
        count_by=body["countBy"],
        order_by=body["orderBy"],
        sort_order=body["sortOrder"],
        type=body["type"],
        limit=body["limit"],
    )
    return query, body["page"]
