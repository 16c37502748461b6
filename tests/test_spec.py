import datetime as dt

import pytest
from pydantic import ValidationError

from fetcher.errors import ConfigError, FetcherError
from fetcher.spec import (
    EMAIL_METRICS,
    MAX_PAGE_SIZE,
    PROSPECT_METRICS,
    QuerySpec,
    SpecError,
    format_api_datetime,
)

UTC = dt.UTC


def make(**overrides: object) -> QuerySpec:
    fields: dict[str, object] = {
        "user_ids": ("abc123xyz", "def456uvw"),
        "start": dt.datetime(2024, 1, 1, tzinfo=UTC),
        "end": dt.datetime(2024, 1, 31, 23, 59, 59, 999000, tzinfo=UTC),
        "type": "prospect",
    }
    fields.update(overrides)
    return QuerySpec(**fields)  # type: ignore[arg-type]


def test_body_matches_reference_page_example() -> None:
    """The rendered body is byte-for-byte the reference page's example (camelCase, ms dates)."""
    spec = make(count_by="absolute", page_size=10, order_by="prospectAdded")
    assert spec.body(1) == {
        "userIds": ["abc123xyz", "def456uvw"],
        "startDate": "2024-01-01T00:00:00.000+00:00",
        "endDate": "2024-01-31T23:59:59.999+00:00",
        "countBy": "absolute",
        "limit": 10,
        "page": 1,
        "sortOrder": "desc",
        "orderBy": "prospectAdded",
        "type": "prospect",
    }


def test_offsets_other_than_utc_are_rendered_with_colon() -> None:
    """A non-UTC offset is kept as +HH:MM, not converted."""
    tz = dt.timezone(dt.timedelta(hours=5, minutes=30))
    assert format_api_datetime(dt.datetime(2024, 3, 1, 9, tzinfo=tz)) == (
        "2024-03-01T09:00:00.000+05:30"
    )


def test_naive_datetime_cannot_be_formatted() -> None:
    """Formatting refuses naive datetimes instead of guessing a zone."""
    with pytest.raises(ValueError, match="aware"):
        format_api_datetime(dt.datetime(2024, 1, 1))  # noqa: DTZ001


def test_default_order_by_depends_on_type() -> None:
    """Without orderBy, prospect sorts by prospectAdded and email by emailSent."""
    assert make().sort_field == "prospectAdded"
    assert make(type="email").sort_field == "emailSent"


def test_metric_sets_per_type() -> None:
    """The two report types have the metric sets the reference page lists."""
    assert make().metrics == PROSPECT_METRICS
    assert make(type="email").metrics == EMAIL_METRICS
    assert "Meeting Booked" in PROSPECT_METRICS
    assert "emailSent" not in PROSPECT_METRICS


@pytest.mark.parametrize(
    ("overrides", "field", "fragment"),
    [
        ({"user_ids": ()}, "user_ids", "at least 1"),
        ({"user_ids": ("a", " ")}, "user_ids", "blank"),
        ({"user_ids": ("a", "b", "a")}, "user_ids", "more than once"),
        ({"start": dt.datetime(2024, 1, 1)}, "start", "timezone"),  # noqa: DTZ001
        ({"end": "not a date"}, "end", "datetime"),
        (
            {
                "start": dt.datetime(2024, 2, 1, tzinfo=UTC),
                "end": dt.datetime(2024, 1, 1, tzinfo=UTC),
            },
            "",
            "after end",
        ),
        ({"type": "calls"}, "type", "prospect"),
        ({"count_by": "total"}, "count_by", "relative"),
        ({"sort_order": "up"}, "sort_order", "asc"),
        ({"order_by": "emailSent"}, "", "not a prospect metric"),
        ({"type": "email", "order_by": "Interested"}, "", "not a email metric"),
        ({"page_size": 0}, "page_size", "greater than or equal to 1"),
        ({"page_size": MAX_PAGE_SIZE + 1}, "page_size", "less than or equal"),
        ({"colour": "red"}, "colour", "Extra inputs"),
    ],
)
def test_invalid_specs_name_the_field(
    overrides: dict[str, object], field: str, fragment: str
) -> None:
    """Each invalid field is rejected with an error that names it and says why."""
    with pytest.raises(SpecError) as info:
        make(**overrides)
    error = info.value.errors()[0]
    assert (info.value.field or "").startswith(field)
    assert ".".join(map(str, error["loc"])).startswith(field)
    assert fragment in error["msg"]


def test_spec_is_frozen() -> None:
    """A spec cannot be changed after validation."""
    spec = make()
    with pytest.raises(ValidationError):
        spec.page_size = 5  # type: ignore[misc]


def test_user_ids_are_stripped() -> None:
    """Surrounding whitespace is not part of a user id."""
    assert make(user_ids=(" a ", "b")).user_ids == ("a", "b")


def test_key_is_stable_and_distinguishes_queries() -> None:
    """Equal specs share a key; a different window or type gets another."""
    assert make().key == make().key
    assert make().key != make(type="email").key
    assert make().key != make(start=dt.datetime(2024, 1, 2, tzinfo=UTC)).key
    assert make().key.startswith("prospect:2024-01-01..2024-01-31:")


def test_key_is_recomputed_for_a_changed_copy() -> None:
    """A copy with another page size has its own key, not the original's cached one."""
    spec = make()
    original = spec.key
    copy = spec.model_copy(update={"page_size": 1000})
    assert copy.key != original
    assert copy.key == make(page_size=1000).key
    assert spec.key == original
    assert "key" not in spec.model_dump()


def test_an_invalid_spec_is_a_fetcher_error_and_a_value_error() -> None:
    """One ``except FetcherError`` catches a bad query too, and so does ``except ValueError``."""
    with pytest.raises(SpecError) as info:
        make(page_size=0)
    assert isinstance(info.value, FetcherError)
    assert isinstance(info.value, ConfigError)
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith("page_size: ")
    assert isinstance(info.value.validation, ValidationError)
