"""Date windows: relative expressions ("last 7 days") and calendar slices of a window.

Pure functions, no I/O and no clock of their own: the caller passes ``now`` and
the time zone, so every result here is reproducible in tests.

The API reads a window as two aware datetimes, and its reference page's example
is a whole day: ``00:00:00.000`` to ``23:59:59.999`` local time. Choices made
here:

* **Days are built from wall times, never by adding to aware datetimes.** A
  day's start is ``datetime.combine(day, 00:00, tzinfo=zone)``; moving to the
  next day is date arithmetic on the :class:`~datetime.date`, before any time
  zone is attached. Python adds a ``timedelta`` to an aware datetime on the
  wall clock without re-checking the offset or ``fold``, so such sums can land
  on a time that never happened or happened twice, and differences between
  datetimes of one zone are wall-clock differences (a 23-hour day "lasts" 24).
* **A day ends one millisecond before the next one starts.** :func:`day_end`
  is the next day's :func:`day_start` minus 1 ms, computed on the UTC instant.
  On every ordinary day, and on the 23- and 25-hour days of a DST change, that
  is ``23:59:59.999`` local, with the offset in force at that moment. It also
  stays right where ``combine(day, 23:59:59.999)`` alone would not: where
  clocks go back at midnight (e.g. America/Santiago) the hour from 23:00 to
  midnight happens twice, and the day must end at the *second* 23:59:59.999,
  or an hour of records falls between two slices. So consecutive days are
  contiguous by construction: no gap, no overlap.
* **A start that does not exist on the clock is moved to the real one.** Where
  clocks jump forward at midnight, 00:00 never happens; :func:`day_start`
  then returns the first real instant of the day (e.g. ``01:00-03:00``)
  instead of the nonexistent ``00:00-04:00`` (the same instant, written as a
  wall time no clock showed).
* **Instants are compared in UTC.** Two aware datetimes with the same
  ``tzinfo`` compare by wall clock and ignore ``fold``, so the two 01:30s of
  a fall-back night would compare equal; clipping compares UTC instants.
* **"To date" windows end at the end of today** (``23:59:59.999``), not at
  ``now``: the result does not depend on the minute the export ran, and rows
  the API dates later today are not cut off.
* **Today is never in "last N days".** "last 7 days" is the seven whole days
  ending yesterday, so it covers complete days only; "this week" and friends
  are the windows that include today.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Final, Literal

__all__ = [
    "END_OF_DAY",
    "MAX_SLICES",
    "Slice",
    "day_end",
    "day_start",
    "parse_slice",
    "resolve_window",
    "split_window",
]

#: The last millisecond of a day on the wall clock, as in the reference page's example window.
END_OF_DAY: Final = dt.time(23, 59, 59, 999000)

#: The most slices :func:`split_window` will make. A century of days is about
#: 36,500; anything beyond this is a typo in a date, not a report.
MAX_SLICES: Final = 100_000

#: How to cut a window: into days, ISO weeks (Monday to Sunday) or calendar months.
Slice = Literal["day", "week", "month"]

_ONE_DAY: Final = dt.timedelta(days=1)
_ONE_MS: Final = dt.timedelta(milliseconds=1)
_MIDNIGHT: Final = dt.time(0)

#: The accepted window expressions, as shown to users when one cannot be read.
_WINDOW_FORMS: Final = (
    "today, yesterday, last N days, this week (or week to date), last week, "
    "this month (or month to date), last month, last N months, "
    "this year (or year to date), last year"
)

#: The accepted slice names, as shown to users when one cannot be read.
_SLICE_FORMS: Final = "day (or daily), week (or weekly), month (or monthly), none (or empty)"

#: Every spelling :func:`parse_slice` accepts.
_SLICE_NAMES: Final[dict[str, Slice | None]] = {
    "day": "day",
    "daily": "day",
    "week": "week",
    "weekly": "week",
    "month": "month",
    "monthly": "month",
    "none": None,
    "": None,
}

# ASCII digits only: \d would also accept e.g. Arabic-Indic digits.
_LAST_N = re.compile(r"last ([0-9]+) (day|month)s?", re.ASCII)
# Spaces and underscores separate words anywhere; a dash only between two letters
# or digits, so "last -3 days" is an error, not quietly "last 3 days".
_SEPARATORS = re.compile(r"(?:[\s_]|(?<=[^\W_])-+(?=[^\W_]))+")


def day_start(day: dt.date, zone: dt.tzinfo) -> dt.datetime:
    """The first instant of ``day`` in ``zone``: ``00:00:00.000`` local.

    Args:
        day: the calendar day.
        zone: the time zone the day is counted in.

    Returns:
        An aware datetime in ``zone``. Where midnight does not exist (clocks
        jump forward at 00:00) it is the first wall time that does.
    """
    # fold=0 (the default): if midnight happens twice, the day starts at the first one.
    midnight = dt.datetime.combine(day, _MIDNIGHT, tzinfo=zone)
    # The round trip through UTC turns a nonexistent wall time into the real one.
    return midnight.astimezone(dt.UTC).astimezone(zone)


def day_end(day: dt.date, zone: dt.tzinfo) -> dt.datetime:
    """The last millisecond of ``day`` in ``zone``: ``23:59:59.999`` local.

    It is exactly 1 ms before :func:`day_start` of the next day, so consecutive
    days never leave a gap or overlap, even where clocks go back at midnight.

    Args:
        day: the calendar day.
        zone: the time zone the day is counted in.

    Returns:
        An aware datetime in ``zone``, with the offset in force at that instant.
    """
    following = day_start(day + _ONE_DAY, zone)
    # Step back on the UTC instant, not on the wall clock: 1 ms of real time.
    return (following.astimezone(dt.UTC) - _ONE_MS).astimezone(zone)


def resolve_window(
    expr: str, *, zone: dt.tzinfo, now: dt.datetime
) -> tuple[dt.datetime, dt.datetime]:
    """Turn a relative window such as ``"last 7 days"`` into its start and end.

    Words may be separated by spaces, dashes or underscores, in any case:
    ``"last 7 days"``, ``"last-7-days"`` and ``"LAST_7_DAYS"`` are the same.

    Accepted forms (days in ``zone``, each from ``00:00:00.000`` on its first
    day to ``23:59:59.999`` on its last):

    * ``today``; ``yesterday``;
    * ``last N days`` (N >= 1): the N whole days ending yesterday (today is
      not included);
    * ``this week`` or ``week to date``: Monday of this ISO week to today;
      ``last week``: the previous Monday to Sunday;
    * ``this month`` or ``month to date``: the 1st to today; ``last month``:
      the whole previous calendar month; ``last N months`` (N >= 1): the N
      whole calendar months before this one;
    * ``this year`` or ``year to date``: January 1st to today; ``last year``:
      the whole previous calendar year.

    The "this ..." / "... to date" windows end at the end of today
    (``23:59:59.999``), not at ``now``.

    Args:
        expr: the expression.
        zone: the time zone that decides what "today" is and where days begin.
        now: the current time, time-zone aware (in any zone; it is converted
            to ``zone`` first, so 02:00 UTC on July 2nd is July 1st in New York).

    Returns:
        ``(start, end)``, aware datetimes in ``zone``.

    Raises:
        ValueError: if ``now`` is naive, if ``expr`` is not one of the forms
            above (the message lists them), if N is 0, or if the window reaches
            outside the years 1 to 9999.
    """
    if now.utcoffset() is None:
        raise ValueError("now must be time-zone aware")
    words = _SEPARATORS.sub(" ", expr.strip().lower())
    today = now.astimezone(zone).date()
    try:
        days = _window_days(words, today)
        if days is None:
            raise ValueError(f"cannot read window {expr!r}; use one of: {_WINDOW_FORMS}")
        return day_start(days[0], zone), day_end(days[1], zone)
    except OverflowError:
        raise ValueError(
            f"window {expr!r} reaches outside the years 1 to 9999; use a smaller N"
        ) from None


# One return per accepted form: the match reads as the table of forms it is.
def _window_days(words: str, today: dt.date) -> tuple[dt.date, dt.date] | None:  # noqa: PLR0911
    """The first and last calendar day of the normalized expression ``words``.

    Returns:
        ``(first, last)``, or ``None`` if ``words`` is not a known form.

    Raises:
        ValueError: if N is 0.
        OverflowError: if a day falls outside ``date.min``..``date.max``.
    """
    this_month = today.replace(day=1)
    this_year = today.replace(month=1, day=1)
    monday = today - dt.timedelta(days=today.weekday())
    match words:
        case "today":
            return today, today
        case "yesterday":
            return today - _ONE_DAY, today - _ONE_DAY
        case "this week" | "week to date":
            return monday, today
        case "last week":
            return monday - dt.timedelta(days=7), monday - _ONE_DAY
        case "this month" | "month to date":
            return this_month, today
        case "last month":
            return _add_months(this_month, -1), this_month - _ONE_DAY
        case "this year" | "year to date":
            return this_year, today
        case "last year":
            return _add_months(this_year, -12), this_year - _ONE_DAY
    found = _LAST_N.fullmatch(words)
    if found is None:
        return None
    count = int(found.group(1))
    if count < 1:
        raise ValueError(f"window {words!r} is empty; N must be at least 1")
    if found.group(2) == "day":
        return today - dt.timedelta(days=count), today - _ONE_DAY
    return _add_months(this_month, -count), this_month - _ONE_DAY


def _add_months(first: dt.date, count: int) -> dt.date:
    """The 1st of the month ``count`` months after (or, if negative, before) ``first``'s.

    Raises:
        OverflowError: outside years 1 to 9999.
    """
    year, month = divmod(first.year * 12 + first.month - 1 + count, 12)
    if not dt.MINYEAR <= year <= dt.MAXYEAR:
        raise OverflowError(f"year {year} is out of range")
    return dt.date(year, month + 1, 1)


def split_window(
    start: dt.datetime, end: dt.datetime, unit: Slice | None, zone: dt.tzinfo
) -> list[tuple[dt.datetime, dt.datetime]]:
    """Cut a window into calendar days, ISO weeks or calendar months of ``zone``.

    Each slice runs from ``00:00:00.000`` local on its first day to
    ``23:59:59.999`` local on its last (see :func:`day_start` and
    :func:`day_end`), except that the first slice starts at ``start`` and the
    last ends at ``end``. Slices are in order and contiguous: each starts 1 ms
    after the previous one ends.

    Args:
        start: start of the window, aware, in any zone.
        end: end of the window, aware, in any zone; not before ``start``.
        unit: ``"day"``, ``"week"`` (Monday to Sunday), ``"month"``, or
            ``None`` for the window as given, as one slice.
        zone: the time zone whose calendar decides where days begin.

    Returns:
        ``(start, end)`` pairs in ``zone``; for ``unit=None``, ``[(start, end)]``
        exactly as passed in.

    Raises:
        ValueError: if a bound is naive, ``start`` is after ``end``, the window
            would make more than :data:`MAX_SLICES` slices, or it reaches
            outside the years 1 to 9999.
    """
    if start.utcoffset() is None or end.utcoffset() is None:
        raise ValueError("start and end must be time-zone aware")
    if _instant(start) > _instant(end):
        raise ValueError(
            f"start ({start.isoformat(timespec='milliseconds')}) is after end "
            f"({end.isoformat(timespec='milliseconds')}); swap them"
        )
    if unit is None:
        return [(start, end)]
    try:
        return _calendar_slices(start.astimezone(zone), end.astimezone(zone), unit, zone)
    except OverflowError:
        raise ValueError(
            "window reaches outside the years 1 to 9999; check start and end"
        ) from None


def _calendar_slices(
    start: dt.datetime, end: dt.datetime, unit: Slice, zone: dt.tzinfo
) -> list[tuple[dt.datetime, dt.datetime]]:
    """The slices of a window already converted to ``zone`` (see :func:`split_window`)."""
    first = _period_first_day(start.date(), unit)
    last = _period_first_day(end.date(), unit)
    count = _periods_between(first, last, unit)
    if count > MAX_SLICES:
        raise ValueError(
            f"splitting this window by {unit} makes {count:,} slices, more than "
            f"{MAX_SLICES:,}; check the dates or use a longer slice"
        )
    slices = []
    period = first
    for _ in range(count):
        following = _next_period(period, unit)
        low = max(start, day_start(period, zone), key=_instant)
        high = min(end, day_end(following - _ONE_DAY, zone), key=_instant)
        # Only a day the calendar skipped (Pacific/Apia, 2011-12-30) can be empty.
        if _instant(low) <= _instant(high):
            slices.append((low, high))
        period = following
    return slices


def _instant(value: dt.datetime) -> dt.datetime:
    """``value`` in UTC, so comparisons see instants, not wall clocks (and ``fold``)."""
    return value.astimezone(dt.UTC)


def _period_first_day(day: dt.date, unit: Slice) -> dt.date:
    """The first day of the day, ISO week or month that contains ``day``."""
    if unit == "week":
        return day - dt.timedelta(days=day.weekday())
    if unit == "month":
        return day.replace(day=1)
    return day


def _next_period(first: dt.date, unit: Slice) -> dt.date:
    """The first day of the period after the one starting on ``first``.

    Raises:
        OverflowError: past ``date.max``.
    """
    if unit == "week":
        return first + dt.timedelta(days=7)
    if unit == "month":
        return _add_months(first, 1)
    return first + _ONE_DAY


def _periods_between(first: dt.date, last: dt.date, unit: Slice) -> int:
    """How many periods from the one starting on ``first`` to the one on ``last``, inclusive."""
    if unit == "month":
        return (last.year - first.year) * 12 + last.month - first.month + 1
    days = (last - first).days
    return (days // 7 if unit == "week" else days) + 1


def parse_slice(text: str) -> Slice | None:
    """Read a slice unit as a user writes it.

    Args:
        text: ``day``/``daily``, ``week``/``weekly``, ``month``/``monthly``,
            or ``none`` or empty for no slicing; any case, spaces ignored.

    Returns:
        The unit, or ``None`` for no slicing.

    Raises:
        ValueError: listing the accepted values.
    """
    key = text.strip().lower()
    if key not in _SLICE_NAMES:
        raise ValueError(f"cannot read slice {text!r}; use one of: {_SLICE_FORMS}")
    return _SLICE_NAMES[key]
