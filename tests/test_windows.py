import datetime as dt
import itertools
from zoneinfo import ZoneInfo

import pytest

from fetcher import dates as windows
from fetcher.dates import (
    END_OF_DAY,
    MAX_SLICES,
    Slice,
    day_end,
    day_start,
    parse_slice,
    resolve_window,
    split_window,
)

UTC = dt.UTC
LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")
SANTIAGO = ZoneInfo("America/Santiago")
APIA = ZoneInfo("Pacific/Apia")
ONE_MS = dt.timedelta(milliseconds=1)

#: A Wednesday, midday UTC: far from any midnight or DST change.
NOW = dt.datetime(2024, 5, 15, 12, 0, tzinfo=UTC)

Window = tuple[dt.datetime, dt.datetime]


def iso(window: Window) -> tuple[str, str]:
    return (
        window[0].isoformat(timespec="milliseconds"),
        window[1].isoformat(timespec="milliseconds"),
    )


def isos(slices: list[Window]) -> list[tuple[str, str]]:
    return [iso(window) for window in slices]


def at(zone: dt.tzinfo, year: int, month: int, day: int, *clock: int) -> dt.datetime:
    hour, minute, second, micro = (*clock, 0, 0, 0, 0)[:4]
    return dt.datetime(year, month, day, hour, minute, second, micro, tzinfo=zone)


def whole_days(first: dt.date, last: dt.date, zone: dt.tzinfo) -> Window:
    return day_start(first, zone), day_end(last, zone)


def duration(window: Window) -> dt.timedelta:
    # Subtracting datetimes that share a tzinfo gives wall-clock time; DST needs real time.
    return window[1].astimezone(UTC) - window[0].astimezone(UTC)


def assert_contiguous(slices: list[Window]) -> None:
    for (_, end), (start, _) in itertools.pairwise(slices):
        assert start.astimezone(UTC) - end.astimezone(UTC) == ONE_MS, (end, start)
    for start, end in slices:
        assert start.astimezone(UTC) <= end.astimezone(UTC)


# --- days -----------------------------------------------------------------


def test_day_runs_from_midnight_to_last_millisecond() -> None:
    """A day is 00:00:00.000 to 23:59:59.999 local, END_OF_DAY being that last millisecond."""
    day = dt.date(2024, 1, 1)
    assert iso((day_start(day, UTC), day_end(day, UTC))) == (
        "2024-01-01T00:00:00.000+00:00",
        "2024-01-01T23:59:59.999+00:00",
    )
    assert day_end(day, LONDON).timetz().replace(tzinfo=None) == END_OF_DAY


def test_day_bounds_carry_the_offset_in_force_at_each_instant() -> None:
    """On a DST-change day the start and end carry different offsets (23 h and 25 h days)."""
    spring = whole_days(dt.date(2024, 3, 31), dt.date(2024, 3, 31), LONDON)
    autumn = whole_days(dt.date(2024, 10, 27), dt.date(2024, 10, 27), LONDON)
    assert iso(spring) == ("2024-03-31T00:00:00.000+00:00", "2024-03-31T23:59:59.999+01:00")
    assert iso(autumn) == ("2024-10-27T00:00:00.000+01:00", "2024-10-27T23:59:59.999+00:00")
    assert duration(spring) == dt.timedelta(hours=23) - ONE_MS
    assert duration(autumn) == dt.timedelta(hours=25) - ONE_MS


def test_day_ends_at_second_midnight_hour_where_clocks_go_back_at_midnight() -> None:
    """Where 23:00-24:00 happens twice (Santiago), the day ends at the later 23:59:59.999."""
    saturday = dt.date(2024, 4, 6)
    end = day_end(saturday, SANTIAGO)
    assert end.isoformat(timespec="milliseconds") == "2024-04-06T23:59:59.999-04:00"
    assert day_start(saturday + dt.timedelta(days=1), SANTIAGO) - end == ONE_MS


def test_day_starts_at_first_real_time_where_midnight_does_not_exist() -> None:
    """Where clocks jump from 24:00 to 01:00 (Santiago), the day starts at 01:00, not at 00:00."""
    start = day_start(dt.date(2024, 9, 8), SANTIAGO)
    assert start.isoformat(timespec="milliseconds") == "2024-09-08T01:00:00.000-03:00"
    assert start.astimezone(UTC) - day_end(dt.date(2024, 9, 7), SANTIAGO).astimezone(UTC) == ONE_MS


# --- resolve_window: every form -------------------------------------------


@pytest.mark.parametrize(
    ("expr", "start", "end"),
    [
        ("today", "2024-05-15T00:00:00.000+00:00", "2024-05-15T23:59:59.999+00:00"),
        ("yesterday", "2024-05-14T00:00:00.000+00:00", "2024-05-14T23:59:59.999+00:00"),
        ("last 7 days", "2024-05-08T00:00:00.000+00:00", "2024-05-14T23:59:59.999+00:00"),
        ("last 1 day", "2024-05-14T00:00:00.000+00:00", "2024-05-14T23:59:59.999+00:00"),
        ("last 30 days", "2024-04-15T00:00:00.000+00:00", "2024-05-14T23:59:59.999+00:00"),
        ("this week", "2024-05-13T00:00:00.000+00:00", "2024-05-15T23:59:59.999+00:00"),
        ("week to date", "2024-05-13T00:00:00.000+00:00", "2024-05-15T23:59:59.999+00:00"),
        ("last week", "2024-05-06T00:00:00.000+00:00", "2024-05-12T23:59:59.999+00:00"),
        ("this month", "2024-05-01T00:00:00.000+00:00", "2024-05-15T23:59:59.999+00:00"),
        ("month to date", "2024-05-01T00:00:00.000+00:00", "2024-05-15T23:59:59.999+00:00"),
        ("last month", "2024-04-01T00:00:00.000+00:00", "2024-04-30T23:59:59.999+00:00"),
        ("last 1 month", "2024-04-01T00:00:00.000+00:00", "2024-04-30T23:59:59.999+00:00"),
        ("last 3 months", "2024-02-01T00:00:00.000+00:00", "2024-04-30T23:59:59.999+00:00"),
        ("this year", "2024-01-01T00:00:00.000+00:00", "2024-05-15T23:59:59.999+00:00"),
        ("year to date", "2024-01-01T00:00:00.000+00:00", "2024-05-15T23:59:59.999+00:00"),
        ("last year", "2023-01-01T00:00:00.000+00:00", "2023-12-31T23:59:59.999+00:00"),
    ],
)
def test_every_relative_form(expr: str, start: str, end: str) -> None:
    """Each accepted form resolves to its exact start and end on a fixed Wednesday."""
    assert iso(resolve_window(expr, zone=UTC, now=NOW)) == (start, end)


@pytest.mark.parametrize(
    "expr",
    [
        "last 7 days",
        "last-7-days",
        "LAST_7_DAYS",
        "  Last  7\tDays ",
        "last__7--days",
        "last 7 day",
    ],
)
def test_spellings_of_one_window_agree(expr: str) -> None:
    """Case, spaces, dashes, underscores and a singular unit do not change the window."""
    assert iso(resolve_window(expr, zone=UTC, now=NOW)) == (
        "2024-05-08T00:00:00.000+00:00",
        "2024-05-14T23:59:59.999+00:00",
    )


def test_to_date_windows_end_at_end_of_today_not_now() -> None:
    """This month ends at today's 23:59:59.999 whatever time it is now."""
    early = resolve_window("this month", zone=UTC, now=at(UTC, 2024, 5, 15, 0, 0, 1))
    late = resolve_window("this month", zone=UTC, now=at(UTC, 2024, 5, 15, 23, 59, 59))
    assert early == late
    assert iso(early)[1] == "2024-05-15T23:59:59.999+00:00"


def test_this_week_on_monday_and_sunday() -> None:
    """On a Monday this week is that one day; on a Sunday it is the six days before and today."""
    monday = resolve_window("this week", zone=UTC, now=at(UTC, 2024, 5, 13, 9))
    sunday = resolve_window("this week", zone=UTC, now=at(UTC, 2024, 5, 19, 9))
    assert iso(monday) == ("2024-05-13T00:00:00.000+00:00", "2024-05-13T23:59:59.999+00:00")
    assert iso(sunday) == ("2024-05-13T00:00:00.000+00:00", "2024-05-19T23:59:59.999+00:00")


def test_month_windows_cross_the_year_boundary() -> None:
    """In January, last month is December and last 3 months start in October of last year."""
    now = at(UTC, 2024, 1, 10, 12)
    assert iso(resolve_window("last month", zone=UTC, now=now)) == (
        "2023-12-01T00:00:00.000+00:00",
        "2023-12-31T23:59:59.999+00:00",
    )
    assert iso(resolve_window("last 3 months", zone=UTC, now=now)) == (
        "2023-10-01T00:00:00.000+00:00",
        "2023-12-31T23:59:59.999+00:00",
    )


def test_last_week_crosses_the_year_boundary() -> None:
    """On Wednesday 2025-01-08, last week is Monday 2024-12-30 to Sunday 2025-01-05."""
    assert iso(resolve_window("last week", zone=UTC, now=at(UTC, 2025, 1, 8, 12))) == (
        "2024-12-30T00:00:00.000+00:00",
        "2025-01-05T23:59:59.999+00:00",
    )


def test_last_month_in_march_of_a_leap_year_ends_on_february_29() -> None:
    """Last month in March 2024 is all 29 days of February."""
    assert iso(resolve_window("last month", zone=UTC, now=at(UTC, 2024, 3, 1, 12))) == (
        "2024-02-01T00:00:00.000+00:00",
        "2024-02-29T23:59:59.999+00:00",
    )


# --- resolve_window: time zones and DST -----------------------------------


def test_today_is_the_date_in_the_zone_not_in_utc() -> None:
    """At 02:00 UTC on July 2nd it is still July 1st in New York, so today is July 1st there."""
    now = at(UTC, 2024, 7, 2, 2)
    assert iso(resolve_window("today", zone=NEW_YORK, now=now)) == (
        "2024-07-01T00:00:00.000-04:00",
        "2024-07-01T23:59:59.999-04:00",
    )
    assert iso(resolve_window("today", zone=UTC, now=now))[0] == "2024-07-02T00:00:00.000+00:00"


def test_now_in_another_offset_is_converted_to_the_zone() -> None:
    """A now given in Tokyo time is read as the New York date at that instant."""
    tokyo_morning = dt.datetime(2024, 7, 2, 9, tzinfo=ZoneInfo("Asia/Tokyo"))  # 00:00 UTC
    assert iso(resolve_window("today", zone=NEW_YORK, now=tokyo_morning))[0] == (
        "2024-07-01T00:00:00.000-04:00"
    )


@pytest.mark.parametrize(
    ("zone", "now", "start", "end"),
    [
        (
            LONDON,
            dt.datetime(2024, 4, 1, 9, tzinfo=LONDON),
            "2024-03-31T00:00:00.000+00:00",
            "2024-03-31T23:59:59.999+01:00",
        ),
        (
            LONDON,
            dt.datetime(2024, 10, 28, 9, tzinfo=LONDON),
            "2024-10-27T00:00:00.000+01:00",
            "2024-10-27T23:59:59.999+00:00",
        ),
        (
            NEW_YORK,
            dt.datetime(2024, 3, 11, 9, tzinfo=NEW_YORK),
            "2024-03-10T00:00:00.000-05:00",
            "2024-03-10T23:59:59.999-04:00",
        ),
        (
            NEW_YORK,
            dt.datetime(2024, 11, 4, 9, tzinfo=NEW_YORK),
            "2024-11-03T00:00:00.000-04:00",
            "2024-11-03T23:59:59.999-05:00",
        ),
    ],
)
def test_yesterday_after_a_dst_change(
    zone: ZoneInfo, now: dt.datetime, start: str, end: str
) -> None:
    """Yesterday on the day after a DST change is 00:00 to 23:59:59.999 with each offset right."""
    assert iso(resolve_window("yesterday", zone=zone, now=now)) == (start, end)


def test_last_7_days_across_spring_forward_in_london() -> None:
    """A week spanning the March change starts in GMT and ends in BST."""
    now = dt.datetime(2024, 4, 3, 9, tzinfo=LONDON)
    assert iso(resolve_window("last 7 days", zone=LONDON, now=now)) == (
        "2024-03-27T00:00:00.000+00:00",
        "2024-04-02T23:59:59.999+01:00",
    )


def test_last_7_days_across_fall_back_in_new_york() -> None:
    """A week spanning the November change starts in EDT and ends in EST."""
    now = dt.datetime(2024, 11, 6, 9, tzinfo=NEW_YORK)
    assert iso(resolve_window("last 7 days", zone=NEW_YORK, now=now)) == (
        "2024-10-30T00:00:00.000-04:00",
        "2024-11-05T23:59:59.999-05:00",
    )


# --- resolve_window: errors -----------------------------------------------


@pytest.mark.parametrize(
    "expr",
    ["fortnight", "", "last days", "last -3 days", "last 7 weeks", "next week", "last 7", "7 days"],
)
def test_unknown_window_lists_the_accepted_forms(expr: str) -> None:
    """An unreadable expression is rejected with the user's text and every accepted form."""
    with pytest.raises(ValueError, match="use one of: today, yesterday, last N days") as info:
        resolve_window(expr, zone=UTC, now=NOW)
    message = str(info.value)
    assert f"cannot read window {expr!r}" in message
    for form in ("this week", "week to date", "last N months", "year to date", "last year"):
        assert form in message


@pytest.mark.parametrize("expr", ["last 0 days", "last 0 months", "last 000 days"])
def test_zero_length_window_is_rejected(expr: str) -> None:
    """N must be at least 1: "last 0 days" would be an empty window."""
    with pytest.raises(ValueError, match="at least 1"):
        resolve_window(expr, zone=UTC, now=NOW)


@pytest.mark.parametrize(
    "expr", ["last 99999999999 days", "last 3000000 days", "last 30000 months"]
)
def test_window_before_year_one_is_a_value_error(expr: str) -> None:
    """A window reaching before year 1 is a ValueError saying so, not an OverflowError."""
    with pytest.raises(ValueError, match="years 1 to 9999"):
        resolve_window(expr, zone=UTC, now=NOW)


def test_non_ascii_digits_are_not_a_count() -> None:
    """Only ASCII digits count as N (Arabic-Indic seven is not read as 7)."""
    with pytest.raises(ValueError, match="cannot read window"):
        resolve_window("last \u0667 days", zone=UTC, now=NOW)


def test_naive_now_is_rejected() -> None:
    """A naive now is refused rather than guessed to be in some zone."""
    with pytest.raises(ValueError, match="aware"):
        resolve_window("today", zone=UTC, now=dt.datetime(2024, 5, 15, 12))  # noqa: DTZ001


# --- split_window ---------------------------------------------------------


def test_no_unit_returns_the_window_unchanged() -> None:
    """unit=None gives back the very datetimes passed in, not converted to the zone."""
    start = at(UTC, 2024, 1, 1)
    end = at(dt.timezone(dt.timedelta(hours=5, minutes=30)), 2024, 3, 1, 9)
    [(got_start, got_end)] = split_window(start, end, None, NEW_YORK)
    assert got_start is start
    assert got_end is end


def test_daily_slices_of_whole_days() -> None:
    """Three whole days make three slices, each 00:00:00.000 to 23:59:59.999."""
    slices = split_window(*whole_days(dt.date(2024, 1, 1), dt.date(2024, 1, 3), UTC), "day", UTC)
    assert isos(slices) == [
        ("2024-01-01T00:00:00.000+00:00", "2024-01-01T23:59:59.999+00:00"),
        ("2024-01-02T00:00:00.000+00:00", "2024-01-02T23:59:59.999+00:00"),
        ("2024-01-03T00:00:00.000+00:00", "2024-01-03T23:59:59.999+00:00"),
    ]


def test_daily_slices_are_clipped_to_the_window() -> None:
    """The first day starts at the window's start and the last ends at the window's end."""
    slices = split_window(at(UTC, 2024, 1, 1, 10), at(UTC, 2024, 1, 3, 15, 30), "day", UTC)
    assert isos(slices) == [
        ("2024-01-01T10:00:00.000+00:00", "2024-01-01T23:59:59.999+00:00"),
        ("2024-01-02T00:00:00.000+00:00", "2024-01-02T23:59:59.999+00:00"),
        ("2024-01-03T00:00:00.000+00:00", "2024-01-03T15:30:00.000+00:00"),
    ]


@pytest.mark.parametrize("unit", ["day", "week", "month"])
def test_window_inside_one_day_is_one_slice(unit: Slice) -> None:
    """A window within a single day is one slice, exactly the window, whatever the unit."""
    start, end = at(UTC, 2024, 5, 15, 9), at(UTC, 2024, 5, 15, 17, 0, 0, 500)
    assert isos(split_window(start, end, unit, UTC)) == [
        ("2024-05-15T09:00:00.000+00:00", "2024-05-15T17:00:00.000+00:00")
    ]


def test_single_instant_window_is_one_slice() -> None:
    """A window with start == end is a valid, one-slice window, not an error and not empty."""
    moment = at(UTC, 2024, 5, 15, 9)
    assert split_window(moment, moment, "day", UTC) == [(moment, moment)]


def test_weekly_slices_are_iso_weeks_clipped_at_both_ends() -> None:
    """Weeks run Monday to Sunday; the first and last are cut to the window."""
    slices = split_window(at(UTC, 2024, 1, 3, 10), at(UTC, 2024, 1, 17, 15, 30), "week", UTC)
    assert isos(slices) == [
        ("2024-01-03T10:00:00.000+00:00", "2024-01-07T23:59:59.999+00:00"),
        ("2024-01-08T00:00:00.000+00:00", "2024-01-14T23:59:59.999+00:00"),
        ("2024-01-15T00:00:00.000+00:00", "2024-01-17T15:30:00.000+00:00"),
    ]


def test_weekly_slices_across_the_new_year() -> None:
    """The week of Monday 2024-12-30 runs into 2025 as one slice."""
    window = whole_days(dt.date(2024, 12, 25), dt.date(2025, 1, 8), UTC)
    assert isos(split_window(*window, "week", UTC)) == [
        ("2024-12-25T00:00:00.000+00:00", "2024-12-29T23:59:59.999+00:00"),
        ("2024-12-30T00:00:00.000+00:00", "2025-01-05T23:59:59.999+00:00"),
        ("2025-01-06T00:00:00.000+00:00", "2025-01-08T23:59:59.999+00:00"),
    ]


def test_monthly_slices_clipped_at_both_ends_with_leap_february() -> None:
    """Months are calendar months (February 2024 has 29 days), cut to the window at both ends."""
    slices = split_window(at(UTC, 2024, 1, 15, 8), at(UTC, 2024, 3, 10, 12), "month", UTC)
    assert isos(slices) == [
        ("2024-01-15T08:00:00.000+00:00", "2024-01-31T23:59:59.999+00:00"),
        ("2024-02-01T00:00:00.000+00:00", "2024-02-29T23:59:59.999+00:00"),
        ("2024-03-01T00:00:00.000+00:00", "2024-03-10T12:00:00.000+00:00"),
    ]


def test_february_has_28_days_in_2023_and_29_in_2024() -> None:
    """Month slices end on the last day of February, which depends on the leap year."""
    for year, last in ((2023, 28), (2024, 29)):
        window = whole_days(dt.date(year, 1, 1), dt.date(year, 12, 31), UTC)
        months = split_window(*window, "month", UTC)
        assert len(months) == 12
        assert iso(months[1]) == (
            f"{year}-02-01T00:00:00.000+00:00",
            f"{year}-02-{last}T23:59:59.999+00:00",
        )
        february = whole_days(dt.date(year, 2, 1), dt.date(year, 2, last), UTC)
        assert len(split_window(*february, "day", UTC)) == last


def test_monthly_slices_across_the_new_year() -> None:
    """December and January are separate slices across the year boundary."""
    slices = split_window(at(UTC, 2023, 12, 15), at(UTC, 2024, 1, 15, 12), "month", UTC)
    assert isos(slices) == [
        ("2023-12-15T00:00:00.000+00:00", "2023-12-31T23:59:59.999+00:00"),
        ("2024-01-01T00:00:00.000+00:00", "2024-01-15T12:00:00.000+00:00"),
    ]


@pytest.mark.parametrize(("year", "days"), [(2023, 365), (2024, 366)])
def test_a_year_of_daily_slices(year: int, days: int) -> None:
    """A whole year is 365 daily slices, or 366 in a leap year, contiguous throughout."""
    slices = split_window(
        *whole_days(dt.date(year, 1, 1), dt.date(year, 12, 31), LONDON), "day", LONDON
    )
    assert len(slices) == days
    assert_contiguous(slices)
    for start, end in slices:
        assert start.isoformat(timespec="milliseconds")[10:] in (
            "T00:00:00.000+00:00",
            "T00:00:00.000+01:00",
        )
        assert end.isoformat(timespec="milliseconds")[10:19] == "T23:59:59"


def test_slices_are_contiguous_to_the_millisecond() -> None:
    """Each slice starts 1 ms after the previous one ends, for every unit."""
    window = (at(LONDON, 2023, 11, 20, 13, 45), at(LONDON, 2024, 11, 5, 6, 7))
    for unit in ("day", "week", "month"):
        slices = split_window(*window, unit, LONDON)
        assert_contiguous(slices)
        assert slices[0][0] == window[0]
        assert slices[-1][1] == window[1]


def test_daily_slices_across_spring_forward_in_london() -> None:
    """The 23-hour day is one slice; offsets switch from +00:00 to +01:00 within it."""
    slices = split_window(
        *whole_days(dt.date(2024, 3, 30), dt.date(2024, 4, 1), LONDON), "day", LONDON
    )
    assert isos(slices) == [
        ("2024-03-30T00:00:00.000+00:00", "2024-03-30T23:59:59.999+00:00"),
        ("2024-03-31T00:00:00.000+00:00", "2024-03-31T23:59:59.999+01:00"),
        ("2024-04-01T00:00:00.000+01:00", "2024-04-01T23:59:59.999+01:00"),
    ]
    assert_contiguous(slices)
    assert duration(slices[1]) == dt.timedelta(hours=23) - ONE_MS


def test_daily_slices_across_fall_back_in_london() -> None:
    """The 25-hour day is one slice; offsets switch from +01:00 to +00:00 within it."""
    slices = split_window(
        *whole_days(dt.date(2024, 10, 26), dt.date(2024, 10, 28), LONDON), "day", LONDON
    )
    assert isos(slices) == [
        ("2024-10-26T00:00:00.000+01:00", "2024-10-26T23:59:59.999+01:00"),
        ("2024-10-27T00:00:00.000+01:00", "2024-10-27T23:59:59.999+00:00"),
        ("2024-10-28T00:00:00.000+00:00", "2024-10-28T23:59:59.999+00:00"),
    ]
    assert_contiguous(slices)
    assert duration(slices[1]) == dt.timedelta(hours=25) - ONE_MS


def test_daily_slices_across_spring_forward_in_new_york() -> None:
    """New York's 23-hour day (2024-03-10) is one slice from -05:00 to -04:00."""
    slices = split_window(
        *whole_days(dt.date(2024, 3, 9), dt.date(2024, 3, 11), NEW_YORK), "day", NEW_YORK
    )
    assert isos(slices) == [
        ("2024-03-09T00:00:00.000-05:00", "2024-03-09T23:59:59.999-05:00"),
        ("2024-03-10T00:00:00.000-05:00", "2024-03-10T23:59:59.999-04:00"),
        ("2024-03-11T00:00:00.000-04:00", "2024-03-11T23:59:59.999-04:00"),
    ]
    assert_contiguous(slices)


def test_daily_slices_across_fall_back_in_new_york() -> None:
    """New York's 25-hour day (2024-11-03) is one slice from -04:00 to -05:00."""
    slices = split_window(
        *whole_days(dt.date(2024, 11, 2), dt.date(2024, 11, 4), NEW_YORK), "day", NEW_YORK
    )
    assert isos(slices) == [
        ("2024-11-02T00:00:00.000-04:00", "2024-11-02T23:59:59.999-04:00"),
        ("2024-11-03T00:00:00.000-04:00", "2024-11-03T23:59:59.999-05:00"),
        ("2024-11-04T00:00:00.000-05:00", "2024-11-04T23:59:59.999-05:00"),
    ]
    assert_contiguous(slices)


def test_clipping_inside_the_repeated_hour_compares_instants() -> None:
    """A start in the second 01:30 of a fall-back night is kept as that instant, not the first."""
    second_half_past_one = dt.datetime(2024, 11, 3, 1, 30, tzinfo=NEW_YORK, fold=1)
    slices = split_window(second_half_past_one, at(NEW_YORK, 2024, 11, 4, 12), "day", NEW_YORK)
    assert isos(slices)[0] == ("2024-11-03T01:30:00.000-05:00", "2024-11-03T23:59:59.999-05:00")


def test_daily_slices_where_clocks_go_back_at_midnight() -> None:
    """In Santiago the Saturday before the change ends at the second 23:59:59.999: no lost hour."""
    window = whole_days(dt.date(2024, 4, 5), dt.date(2024, 4, 7), SANTIAGO)
    slices = split_window(*window, "day", SANTIAGO)
    assert isos(slices) == [
        ("2024-04-05T00:00:00.000-03:00", "2024-04-05T23:59:59.999-03:00"),
        ("2024-04-06T00:00:00.000-03:00", "2024-04-06T23:59:59.999-04:00"),
        ("2024-04-07T00:00:00.000-04:00", "2024-04-07T23:59:59.999-04:00"),
    ]
    assert_contiguous(slices)


def test_a_day_the_calendar_skipped_makes_no_slice() -> None:
    """Samoa skipped 2011-12-30; daily slices go from the 29th to the 31st with no empty slice."""
    window = whole_days(dt.date(2011, 12, 29), dt.date(2011, 12, 31), APIA)
    slices = split_window(*window, "day", APIA)
    assert isos(slices) == [
        ("2011-12-29T00:00:00.000-10:00", "2011-12-29T23:59:59.999-10:00"),
        ("2011-12-31T00:00:00.000+14:00", "2011-12-31T23:59:59.999+14:00"),
    ]
    assert_contiguous(slices)


def test_bounds_in_another_offset_are_sliced_on_the_zone_calendar() -> None:
    """UTC bounds are converted to the zone first, and slices come out in the zone."""
    start = at(UTC, 2024, 7, 1, 2)  # 2024-06-30 22:00 in New York
    end = at(UTC, 2024, 7, 2, 3)  # 2024-07-01 23:00 in New York
    slices = split_window(start, end, "day", NEW_YORK)
    assert isos(slices) == [
        ("2024-06-30T22:00:00.000-04:00", "2024-06-30T23:59:59.999-04:00"),
        ("2024-07-01T00:00:00.000-04:00", "2024-07-01T23:00:00.000-04:00"),
    ]
    assert all(s.tzinfo is NEW_YORK and e.tzinfo is NEW_YORK for s, e in slices)


# --- split_window: errors -------------------------------------------------


@pytest.mark.parametrize("unit", ["day", "week", "month", None])
def test_start_after_end_is_rejected(unit: Slice | None) -> None:
    """A window whose start is after its end is an error for every unit, naming both bounds."""
    with pytest.raises(ValueError, match=r"2024-01-02T00:00:00\.000\+00:00\) is after end"):
        split_window(at(UTC, 2024, 1, 2), at(UTC, 2024, 1, 1), unit, UTC)


def test_start_after_end_compares_instants_not_wall_clocks() -> None:
    """10:00 in New York is after 12:00 in London, though its wall clock reads earlier."""
    with pytest.raises(ValueError, match="is after end"):
        split_window(at(NEW_YORK, 2024, 1, 2, 10), at(LONDON, 2024, 1, 2, 12), "day", UTC)


def test_naive_bounds_are_rejected() -> None:
    """Naive bounds are refused rather than guessed to be in the zone."""
    with pytest.raises(ValueError, match="aware"):
        split_window(dt.datetime(2024, 1, 1), at(UTC, 2024, 1, 2), "day", UTC)  # noqa: DTZ001


def test_max_slices_is_allowed_and_one_more_is_not() -> None:
    """Exactly MAX_SLICES slices are made; one more is refused with the count in the message."""
    first = dt.date(2000, 1, 1)
    last = first + dt.timedelta(days=MAX_SLICES - 1)
    assert len(split_window(*whole_days(first, last, UTC), "day", UTC)) == MAX_SLICES
    too_long = whole_days(first, last + dt.timedelta(days=1), UTC)
    with pytest.raises(ValueError, match="makes 100,001 slices, more than 100,000"):
        split_window(*too_long, "day", UTC)


def test_absurd_window_is_refused_before_any_work() -> None:
    """Slicing year 1 to 9999 by day is refused at once with the count."""
    window = (at(UTC, 1, 1, 2), at(UTC, 9999, 12, 30))
    with pytest.raises(ValueError, match="makes 3,652,057 slices"):
        split_window(*window, "day", UTC)


def test_window_at_the_end_of_time_is_a_value_error() -> None:
    """A window touching date.max cannot be sliced and says so, not with an OverflowError."""
    with pytest.raises(ValueError, match="years 1 to 9999"):
        split_window(at(UTC, 9999, 12, 1), at(UTC, 9999, 12, 31, 12), "month", UTC)


# --- parse_slice ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "unit"),
    [
        ("day", "day"),
        ("daily", "day"),
        ("week", "week"),
        ("weekly", "week"),
        ("month", "month"),
        ("Monthly", "month"),
        (" WEEK ", "week"),
        ("none", None),
        ("None", None),
        ("", None),
        ("  ", None),
    ],
)
def test_parse_slice_accepts_units_and_adverbs(text: str, unit: Slice | None) -> None:
    """day/daily, week/weekly, month/monthly, none and empty are read in any case."""
    assert parse_slice(text) == unit


@pytest.mark.parametrize("text", ["hourly", "days", "year", "d", "quarter"])
def test_parse_slice_lists_the_accepted_values(text: str) -> None:
    """An unknown slice name is rejected with the accepted values."""
    with pytest.raises(
        ValueError,
        match=r"use one of: day \(or daily\), week \(or weekly\), month \(or monthly\), none",
    ):
        parse_slice(text)


def test_module_exports_are_sorted() -> None:
    """The module's __all__ is in ruff's order and every name exists."""
    names = windows.__all__
    assert names == sorted(names, key=lambda n: (not n.isupper(), not n[0].isupper(), n))
    assert all(hasattr(windows, name) for name in names)
