"""Rows of a report: deterministic counts, sorted once per query, served by slicing.

Counts model
    Each (user, metric) has a *cumulative* count ``C(t)``, and a window's count is
    ``C(end) - C(start)``. The funnel's root metric (``prospectAdded`` or
    ``emailSent``) grows linearly, ``C(t) = floor(rate * days_since_epoch + phase)``,
    with a per-user rate and phase drawn from the seed; every other metric is a
    fixed fraction of its parent's cumulative count, ``floor(fraction * C_parent(t))``.
    This is cheap (no per-day loop), and it buys three properties a test can rely on:

    - counts are never negative and never exceed their parent's (opened <= sent,
      clicked <= opened, ...);
    - windows are additive: ``[a, b]`` plus ``[b, c]`` equals ``[a, c]`` exactly, so
      an exporter that splits a window can be checked against one that does not;
    - ties are common: about 15% of users are inactive (all zeros) and rates are
      skewed towards small numbers, so the ``userId`` tie-break is exercised.

    ``countBy: "relative"`` (events of prospects added in the window) scales the
    root rate by a per-user factor below 1 and shifts its phase, so it differs
    from ``"absolute"``.

Caching
    Computing and sorting a 2,000-user report takes milliseconds; serving a page
    must take microseconds. :class:`ReportEngine` caches each query's sorted rows
    and their pre-encoded JSON (bounded LRU), so a page is a slice and a join.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from fetcher.simulator._team import Member, stable_unit
from fetcher.simulator._validation import Query
from fetcher.simulator._vocab import METRICS_BY_TYPE

__all__ = ["ReportEngine", "Result"]

_ROOT: Final[dict[str, str]] = {"prospect": "prospectAdded", "email": "emailSent"}

#: metric -> (parent, lowest fraction, highest fraction) of the parent's count.
_FUNNEL: Final[dict[str, dict[str, tuple[str, float, float]]]] = {
    "prospect": {
        "prospectContacted": ("prospectAdded", 0.6, 0.95),
        "opened": ("prospectContacted", 0.3, 0.75),
        "clicked": ("opened", 0.0, 0.25),
        "replied": ("opened", 0.05, 0.3),
        "unSubscribed": ("opened", 0.0, 0.05),
        "bounced": ("prospectContacted", 0.0, 0.08),
        # Reply categories: the upper bounds sum to 1, so they never outnumber replies.
        "Uncategorized": ("replied", 0.0, 0.1),
        "Interested": ("replied", 0.0, 0.25),
        "Not Interested": ("replied", 0.0, 0.2),
        "Meeting Booked": ("replied", 0.0, 0.1),
        "Out of Office": ("replied", 0.0, 0.15),
        "Closed": ("replied", 0.0, 0.05),
        "Not Now": ("replied", 0.0, 0.1),
        "Do Not Contact": ("replied", 0.0, 0.05),
    },
    "email": {
        # One prospect usually gets several emails of a sequence.
        "prospectContacted": ("emailSent", 0.3, 0.6),
        "opened": ("emailSent", 0.3, 0.7),
        "clicked": ("opened", 0.0, 0.2),
        "replied": ("opened", 0.03, 0.25),
        "bounced": ("emailSent", 0.0, 0.05),
    },
}
#: A metric the funnel does not know (should the reference grow one) is a small share of the root.
_DEFAULT_LINK: Final = (0.0, 0.1)
_INACTIVE_SHARE: Final = 0.15
_MAX_DAILY_RATE: Final = 40.0
_SECONDS_PER_DAY: Final = 86_400.0


def _evaluation_order(report_type: str) -> tuple[tuple[str, str | None, float, float], ...]:
    """The type's metrics with their parent links, parents before children."""
    metrics = METRICS_BY_TYPE[report_type]
    root = _ROOT[report_type]
    links: dict[str, tuple[str | None, float, float]] = {}
    for metric in metrics:
        if metric == root:
            links[metric] = (None, 0.0, 0.0)
        elif metric in _FUNNEL[report_type]:
            links[metric] = _FUNNEL[report_type][metric]
        else:
            links[metric] = (root, *_DEFAULT_LINK)
    ordered: dict[str, tuple[str | None, float, float]] = {}

    def visit(metric: str) -> None:
        if metric not in ordered:
            parent = links[metric][0]
            if parent is not None:
                visit(parent)
            ordered[metric] = links[metric]

    for metric in metrics:
        visit(metric)
    return tuple((metric, *link) for metric, link in ordered.items())


_ORDER: Final = {report_type: _evaluation_order(report_type) for report_type in METRICS_BY_TYPE}

# One step of a user's plan: (metric, parent's position or -1 for the root, a, b), where the
# root's cumulative count is floor(a * days + b) and a child's is floor(a * parent's count).
_Step = tuple[str, int, float, float]


@dataclass(frozen=True, slots=True)
class Result:
    """The full sorted answer to one query.

    Attributes:
        rows: rows with integer counts, in served order (never mutate: shared by pages).
        encoded: each row as served on the wire (counts as strings if so configured).
        hidden: matched users left out of ``rows`` but counted in the total.
        full: ``rows`` with every field, the dropped ones too (``rows`` itself
            when none are dropped): what drift grows from.
    """

    rows: tuple[dict[str, Any], ...]
    encoded: tuple[bytes, ...]
    hidden: int
    full: tuple[dict[str, Any], ...]

    @property
    def cached_rows(self) -> int:
        """Row dicts this result holds: twice its rows when fields are dropped."""
        return len(self.rows) if self.full is self.rows else 2 * len(self.rows)


class ReportEngine:
    """Computes, sorts and caches the rows of team-stats queries.

    Args:
        seed: seeds every count.
        team: the members; only they can appear in a report.
        string_counts: encode counts as JSON strings.
        cache_rows: how many rows (summed over queries) the cache keeps; the least
            recently used queries are dropped beyond it (about 2 KB per row).
        hidden_users: counted in the total, never served.
        drop_fields: left out of every row.
        extra_fields: added to every row with a count.
    """

    def __init__(
        self,
        seed: int,
        team: Sequence[Member],
        *,
        string_counts: bool = False,
        cache_rows: int = 100_000,
        hidden_users: frozenset[str] = frozenset(),
        drop_fields: frozenset[str] = frozenset(),
        extra_fields: tuple[str, ...] = (),
    ) -> None:
        self._seed = seed
        self._members = {member.user_id: member for member in team}
        self._hidden = hidden_users
        self._drop = drop_fields
        self._extra = extra_fields
        self._string_counts = string_counts
        self._cache_rows = cache_rows
        self._cached_rows = 0
        self._results: OrderedDict[tuple[object, ...], Result] = OrderedDict()
        self._plans: dict[tuple[str, str, str], tuple[_Step, ...]] = {}

    def result(self, query: Query) -> Result:
        """The sorted rows of ``query``, computed on first use and then cached."""
        key = query.result_key
        cached = self._results.get(key)
        if cached is not None:
            self._results.move_to_end(key)
            return cached
        result = self._compute(query)
        self._results[key] = result
        self._cached_rows += result.cached_rows
        # Keep the newest entry even if it alone exceeds the budget: it is about to be paged.
        while self._cached_rows > self._cache_rows and len(self._results) > 1:
            _, dropped = self._results.popitem(last=False)
            self._cached_rows -= dropped.cached_rows
        return result

    def warm(self, user_ids: Iterable[str]) -> None:
        """Compute the figures' plans of ``user_ids`` for every type and ``countBy`` now."""
        for user_id in user_ids:
            for report_type in _ORDER:
                for count_by in ("absolute", "relative"):
                    self._plan(user_id, report_type, count_by)

    def _plan(self, user_id: str, report_type: str, count_by: str) -> tuple[_Step, ...]:
        key = (user_id, report_type, count_by)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        seed = self._seed
        if stable_unit(seed, user_id, "active") < _INACTIVE_SHARE:
            rate = 0.0
        else:
            # Cubing skews rates towards small numbers: many low counts, hence ties.
            rate = _MAX_DAILY_RATE * stable_unit(seed, user_id, report_type, "rate") ** 3
        phase = stable_unit(seed, user_id, report_type, count_by, "phase")
        if count_by == "relative":
            rate *= 0.4 + 0.5 * stable_unit(seed, user_id, report_type, "relative")
        order = _ORDER[report_type]
        position = {metric: i for i, (metric, *_) in enumerate(order)}
        steps: list[_Step] = []
        for metric, parent, low, high in order:
            if parent is None:
                steps.append((metric, -1, rate, phase))
            else:
                fraction = low + (high - low) * stable_unit(seed, user_id, report_type, metric)
                steps.append((metric, position[parent], fraction, 0.0))
        plan = tuple(steps)
        self._plans[key] = plan
        return plan

    def counts(self, user_id: str, query: Query) -> dict[str, int]:
        """One user's counts for the query's window, in the type's metric order."""
        start_days = query.start.timestamp() / _SECONDS_PER_DAY
        end_days = query.end.timestamp() / _SECONDS_PER_DAY
        at_start: list[int] = []
        at_end: list[int] = []
        window: dict[str, int] = {}
        for metric, parent, a, b in self._plan(user_id, query.type, query.count_by):
            if parent < 0:
                at_start.append(math.floor(a * start_days + b))
                at_end.append(math.floor(a * end_days + b))
            else:
                at_start.append(math.floor(a * at_start[parent]))
                at_end.append(math.floor(a * at_end[parent]))
            window[metric] = at_end[-1] - at_start[-1]
        return {metric: window[metric] for metric in METRICS_BY_TYPE[query.type]}

    def drifted(self, query: Query, drift: float, served: int) -> Result:
        """The query's rows after ``served`` requests of growth (not cached: it moves).

        Every count of a user grows by ``floor(drift * served * r)``, ``r`` a per-user
        draw in [0, 1), so fast growers overtake slow ones between two pages.
        """
        base = self.result(query)
        rows = []
        for row in base.full:
            grow = math.floor(drift * served * stable_unit(self._seed, row["userId"], "drift"))
            rows.append(
                {k: (v + grow if k in METRICS_BY_TYPE[query.type] else v) for k, v in row.items()}
            )
        return self._finish(query, rows, base.hidden)

    def _compute(self, query: Query) -> Result:
        # Unknown ids are ignored and duplicates collapse, as an SQL `IN (...)` filter would.
        matched = [self._members[u] for u in dict.fromkeys(query.user_ids) if u in self._members]
        hidden = sum(1 for member in matched if member.user_id in self._hidden)
        rows: list[dict[str, Any]] = [
            {
                "userId": member.user_id,
                "firstName": member.first_name,
                "lastName": member.last_name,
                "email": member.email,
                **self.counts(member.user_id, query),
                **{name: self._extra_count(member.user_id, name) for name in self._extra},
            }
            for member in matched
            if member.user_id not in self._hidden
        ]
        return self._finish(query, rows, hidden)

    def _extra_count(self, user_id: str, name: str) -> int:
        return math.floor(20 * stable_unit(self._seed, user_id, name))

    def _finish(self, query: Query, rows: list[dict[str, Any]], hidden: int) -> Result:
        field = query.order_by
        # Ties break by userId ascending in both directions, so pages never overlap.
        if query.sort_order == "desc":
            rows.sort(key=lambda row: (-row[field], row["userId"]))
        else:
            rows.sort(key=lambda row: (row[field], row["userId"]))
        if self._drop:
            served = [{k: v for k, v in row.items() if k not in self._drop} for row in rows]
        else:
            served = rows
        counted = set(METRICS_BY_TYPE[query.type]) | set(self._extra)
        if self._string_counts:
            encoded = tuple(
                orjson.dumps({k: str(v) if k in counted else v for k, v in row.items()})
                for row in served
            )
        else:
            encoded = tuple(orjson.dumps(row) for row in served)
        full = tuple(rows)
        return Result(
            rows=full if served is rows else tuple(served),
            encoded=encoded,
            hidden=hidden,
            full=full,
        )
