"""Which page to fetch next: the pagination plan of each query, as pure state.

No I/O here, so the paging rules are tested without a server or an event loop.

Rules of one query (:class:`QueryPlan`):

* Page 1 goes first; nothing else of the query is handed out until it is back.
* If page 1 carries a total (``meta.totalPages``, or ``totalItems`` and the
  page size), the query's last page is known and pages 2..N are handed out
  as fast as workers ask for them.
* Without a total, pages are handed out one after another, so at most as
  many pages run ahead as there are workers; the first short page is the
  last one, an empty page ends the query before itself, and any page past
  the end is discarded, not delivered.
* A page is accepted at most once. A page that failed is recorded with its
  error; the others go on. If page 1 fails the query's size is unknown and
  the whole query counts as failed.
* A query is delivered whole: its pages are held until the last one is back,
  then :func:`consolidate` keeps one row per user (the later answer wins:
  counts move while a report is paged, so a user can slide from page 3 to
  page 2 and be served twice while another is skipped) and compares the users
  received with the total the API reported. Queries are one row per user, so
  what is held is bounded by the users per query (``--user-batch-size``).

:class:`Schedule` interleaves many queries over one pool of workers: it
prefers pages of queries already started (so they finish, and memory and
checkpoints stay small) and starts the next query when none of those has a
page to hand out, but no more queries waiting for their first page than
``max_opening`` (the requests allowed in flight: more would only queue for a
request slot). It hands out nothing while finished queries hold ``max_held``
pages that the writer has not taken yet: a slow sink sets the pace instead of
filling memory.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from itertools import repeat
from typing import TYPE_CHECKING, Any, Final

from fetcher.errors import FetcherError, ResponseError
from fetcher.models import missing_user_id

if TYPE_CHECKING:
    from fetcher.models import Page
    from fetcher.spec import QuerySpec

__all__ = [
    "DEFAULT_MAX_PAGES",
    "Consolidation",
    "QueryPlan",
    "Schedule",
    "consolidate",
    "deliverable",
]

#: Pages one query may have before fetcher refuses to believe it (a hostile or
#: broken ``totalPages`` must not turn into a billion requests).
DEFAULT_MAX_PAGES: Final = 10_000


@dataclass(slots=True)
class QueryPlan:
    """The paging state of one query.

    Args:
        spec: the query.
        max_pages: the most pages this query may have.
        skip: pages already written in an earlier run (resume); not fetched again.
    """

    spec: QuerySpec
    max_pages: int = DEFAULT_MAX_PAGES
    skip: frozenset[int] = frozenset()
    #: the last page, once known (from meta or from the first short page)
    end: int | None = None
    #: the total the API reported on page 1, if it did
    total_pages: int | None = None
    total_items: int | None = None
    done: set[int] = field(default_factory=set)
    failed: dict[int, FetcherError] = field(default_factory=dict)
    discarded: int = 0
    records: int = 0
    #: accepted pages, held until the query is consolidated, in the order their
    #: answers arrived (a page is accepted once, so insertion order is arrival order)
    pages: dict[int, Page] = field(default_factory=dict)
    finalized: bool = False
    #: consolidation: records dropped as repeats, users still missing, repairs made
    duplicates: int = 0
    shortfall: int = 0
    missing_users: tuple[str, ...] = ()
    repair_rounds: int = 0
    repair_pages: int = 0
    _next: int = 1
    _in_flight: set[int] = field(default_factory=set)
    _page_one_back: bool = False

    def __post_init__(self) -> None:
        if 1 in self.skip:
            # Resuming: page 1 was written by an earlier run, which also recorded
            # the end if it knew it; carry on from page 2.
            self._page_one_back = True
            self._next = 2

    @property
    def key(self) -> str:
        """The query's key (see :attr:`QuerySpec.key`, computed once per spec)."""
        return self.spec.key

    @property
    def started(self) -> bool:
        """Whether any page of this query has been handed out."""
        return self._next > 1

    @property
    def opening(self) -> bool:
        """Page 1 is out and not back yet: the query's size is unknown."""
        return self._next > 1 and not self._page_one_back

    @property
    def finished(self) -> bool:
        """Every page up to the end is done or failed, and nothing is in flight."""
        return (
            self._page_one_back
            and self.end is not None
            and self._next > self.end
            and not self._in_flight
        )

    @property
    def missing(self) -> dict[int, FetcherError]:
        """Failed pages that are within the query (pages past the end don't count)."""
        end = self.end if self.end is not None else math.inf
        return {n: e for n, e in sorted(self.failed.items()) if n <= end}

    @property
    def query_failed(self) -> bool:
        """Page 1 failed, so the size of the query is unknown."""
        return 1 in self.failed

    def take(self) -> int | None:
        """The next page number to fetch, or ``None`` if there is none right now."""
        if self._next == 1:
            return self._hand_out()
        if not self._page_one_back:
            return None  # page 1 first: it tells how many pages there are
        while self._next in self.skip:
            self._next += 1
        limit = self.end if self.end is not None else self.max_pages
        if self._next > limit:
            if self.end is None and not self._in_flight:
                # No end in sight after max_pages: stop rather than page forever.
                self._fail_open_ended()
            return None
        return self._hand_out()

    def _hand_out(self) -> int:
        number = self._next
        self._next += 1
        self._in_flight.add(number)
        return number

    def _fail_open_ended(self) -> None:
        # Record the page past the cap as missing, and hand out nothing more.
        self.end = self.max_pages + 1
        self._next = self.end + 1
        self.failed[self.end] = ResponseError(
            f"no last page after {self.max_pages} pages; the API never returned a short "
            "page. Raise max_pages if the report really is this large"
        )

    def _set_end(self, end: int) -> None:
        self.end = end if self.end is None else min(self.end, end)

    def complete(self, page: Page) -> bool:
        """Record a fetched page; return whether to deliver it."""
        number = page.number
        count = len(page.records)
        self._in_flight.discard(number)
        size = self.spec.page_size
        if number == 1:
            self._page_one_back = True
            total = page.meta.pages_for(size) if page.meta is not None else None
            if total is not None:
                self.total_pages = total
                self.total_items = page.meta.total_items if page.meta else None
                if total > self.max_pages:
                    self.end = 1
                    self.failed[1] = ResponseError(
                        f"the API reports {total:,} pages, more than max_pages "
                        f"({self.max_pages:,}); refusing. Narrow the query or raise max_pages",
                        page=page.ref,
                    )
                    return False
                self._set_end(max(total, 1))
        if self.total_pages is None:
            if count == 0:
                self._set_end(max(number - 1, 1))
            elif count < size:
                self._set_end(number)
        if number in self.done or number in self.skip:
            self.discarded += 1
            return False
        if self.end is not None and number > self.end:
            self.discarded += 1
            return False
        self.done.add(number)
        self.records += count
        self.pages[number] = page
        return True

    def fail(self, number: int, error: FetcherError) -> None:
        """Record that a page ran out of attempts."""
        self._in_flight.discard(number)
        if number == 1:
            self._page_one_back = True
            self._set_end(1)
        self.failed[number] = error


@dataclass(frozen=True, slots=True)
class Consolidation:
    """One query's pages reduced to one row per user, and what is missing.

    Attributes:
        winners: per user id, the record kept (the latest answer) and its page.
        duplicates: records on the query's pages that repeated a user (dropped).
        expected: how many users the API said the query has (meta), else the
            rows its pages held; ``None`` when pages failed (the shortfall is theirs).
        shortfall: users expected but not received.
        missing_requested: requested user ids that no page returned.
    """

    winners: dict[Any, tuple[int, dict[str, Any]]]
    duplicates: int
    expected: int | None
    shortfall: int
    missing_requested: tuple[str, ...]


def consolidate(
    plan: QueryPlan, *, user_id_field: str = "userId", extra: Iterable[Page] = ()
) -> Consolidation:
    """Keep one row per user of ``plan``'s pages (and ``extra`` repair pages, read later).

    Answers are taken in arrival order, so a later answer for a user replaces
    an earlier one.

    Raises:
        ShapeError: a record has no user id, so rows cannot be told apart.
    """
    end = plan.end if plan.end is not None else math.inf
    own = [page for number, page in plan.pages.items() if number <= end]
    winners: dict[Any, tuple[int, dict[str, Any]]] = {}
    rows = 0
    for page in own:
        # A page at a time, in C where it can be (this runs for every record).
        records = page.records
        users = [record.get(user_id_field) for record in records]
        if None in users:
            record = records[users.index(None)]
            raise missing_user_id(record, user_id_field, page.ref)
        winners.update(zip(users, zip(repeat(page.number), records), strict=True))
        rows += len(records)
    duplicates = rows - len(winners)
    for page in extra:
        for record in page.records:
            user = record.get(user_id_field)
            if user is not None:
                winners[user] = (page.number, record)
    if plan.missing:
        expected = None
    elif plan.total_items is not None:
        expected = plan.total_items
    else:
        expected = rows
    shortfall = max(expected - len(winners), 0) if expected is not None else 0
    missing = tuple(u for u in plan.spec.user_ids if u not in winners)
    return Consolidation(winners, duplicates, expected, shortfall, missing)


def deliverable(plan: QueryPlan, outcome: Consolidation, extra: Iterable[Page] = ()) -> list[Page]:
    """The query's pages in order, each holding only the rows that won, ready to write."""
    end = plan.end if plan.end is not None else math.inf
    pages = [plan.pages[n] for n in sorted(plan.pages) if n <= end]
    repairs = list(extra)
    if not outcome.duplicates and not repairs:
        # No user twice on the query's pages and nothing re-read: every record won.
        return pages
    pages.extend(repairs)
    # The winners are the very record objects held in the pages: keep those.
    winning = {id(record) for _, record in outcome.winners.values()}
    out = []
    for page in pages:
        kept = [record for record in page.records if id(record) in winning]
        out.append(page if len(kept) == len(page.records) else replace(page, records=kept))
    return out


@dataclass(slots=True)
class Schedule:
    """Hands out (query, page) jobs across many queries to one pool of workers."""

    pending: deque[QueryPlan]
    active: list[QueryPlan] = field(default_factory=list)
    finished_plans: list[QueryPlan] = field(default_factory=list)
    #: the most queries waiting for their first page at once (``None``: no limit)
    max_opening: int | None = None
    #: pages of finished queries the writer has not taken yet (the runner counts them)
    held: int = 0
    #: no page is handed out while this many are held (``None``: no limit)
    max_held: int | None = None

    @classmethod
    def of(
        cls,
        plans: Iterable[QueryPlan],
        *,
        max_opening: int | None = None,
        max_held: int | None = None,
    ) -> Schedule:
        """A schedule over ``plans``, started in the given order."""
        return cls(pending=deque(plans), max_opening=max_opening, max_held=max_held)

    @property
    def plans(self) -> list[QueryPlan]:
        """Every plan: finished, active and pending."""
        return [*self.finished_plans, *self.active, *self.pending]

    @property
    def finished(self) -> bool:
        """Nothing pending and nothing active."""
        return not self.pending and not self.active

    def take(self) -> tuple[QueryPlan, int] | None:
        """The next job, or ``None`` when there is none to hand out now.

        That is: every page is handed out, or the started queries wait on page 1
        and no other may start yet, or the writer is behind (see ``max_held``).
        """
        self._retire()
        if self.max_held is not None and self.held >= self.max_held:
            return None  # the writer is behind: fetching more would only fill memory
        for plan in self.active:
            number = plan.take()
            if number is not None:
                return plan, number
        while self.pending and self._may_open():
            plan = self.pending.popleft()
            self.active.append(plan)
            number = plan.take()
            if number is not None:
                return plan, number
        self._retire()
        return None

    def _may_open(self) -> bool:
        # Each started query holds its pages until it is whole, so no more
        # start than can have their first page in flight at once: more would
        # only queue for a request slot.
        if self.max_opening is None:
            return True
        return sum(plan.opening for plan in self.active) < self.max_opening

    def _retire(self) -> None:
        still: list[QueryPlan] = []
        for plan in self.active:
            (self.finished_plans if plan.finished else still).append(plan)
        self.active = still
