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
* Pages are delivered as they arrive, and a query keeps one row per user
  with the set of user ids it has delivered (:meth:`QueryPlan.admit`): the
  first answer for a user wins and a repeat is dropped. Counts move while a
  report is paged, so a user can slide from page 3 to page 2 and be served
  twice while another is skipped. Once every page is back the query is
  *finished* and the schedule hands out one more job for it, ``(plan, None)``:
  compare the users delivered with the total the API reported and re-read the
  missing ones (:attr:`QueryPlan.shortfall`, :meth:`QueryPlan.missing_users_now`).
  What is kept per query is that set of user ids, bounded by the users per
  query (``--user-batch-size``), never its pages.

:class:`Schedule` interleaves many queries over one pool of workers: it
prefers pages of queries already started (so they finish, and memory and
checkpoints stay small) and starts the next query when none of those has a
page to hand out, but no more queries waiting for their first page than
``max_opening`` (the requests allowed in flight: more would only queue for a
request slot). A slow sink sets the pace through the bounded stream between
the workers and the writer, not here.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final

from fetcher import defaults
from fetcher.errors import FetcherError, ResponseError
from fetcher.models import missing_user_id

if TYPE_CHECKING:
    from fetcher.models import Page
    from fetcher.spec import QuerySpec

__all__ = ["DEFAULT_MAX_PAGES", "Job", "QueryPlan", "Resume", "Schedule"]

#: Pages one query may have before fetcher refuses to believe it (a hostile or
#: broken ``totalPages`` must not turn into a billion requests).
DEFAULT_MAX_PAGES: Final = defaults.MAX_PAGES


@dataclass(frozen=True, slots=True)
class Resume:
    """What an earlier, interrupted run durably did of one query (from its checkpoint)."""

    done: frozenset[int] = frozenset()
    end: int | None = None
    total_pages: int | None = None
    total_items: int | None = None
    written: frozenset[Any] = frozenset()
    rows: int = 0
    finalized: bool = False


@dataclass(slots=True)
class QueryPlan:
    """The paging state of one query.

    Args:
        spec: the query.
        max_pages: the most pages this query may have.
        skip: pages already written in an earlier run (resume); not fetched again.
        written: user ids an earlier run wrote for this query (resume).
        rows: records its pages held in that earlier run, repeats included.
        finalized: the earlier run checked and completed this query already.
    """

    spec: QuerySpec
    max_pages: int = DEFAULT_MAX_PAGES
    skip: frozenset[int] = frozenset()
    #: the last page, once known (from meta or from the first short page)
    end: int | None = None
    #: the total the API reported on page 1, if it did
    total_pages: int | None = None
    total_items: int | None = None
    #: user ids delivered for this query (first answer wins); seeds a resumed run
    written: set[Any] = field(default_factory=set)
    #: records the query's own pages held, repeats included (repair pages not)
    rows: int = 0
    #: every page is back and the query was checked (and repaired) at its end
    finalized: bool = False
    done: set[int] = field(default_factory=set)
    failed: dict[int, FetcherError] = field(default_factory=dict)
    discarded: int = 0
    #: records delivered in this run (repeats dropped)
    records: int = 0
    #: records dropped because their user had been delivered already
    duplicates: int = 0
    #: set when the query is finalized: users still missing after the repair pass
    shortfall: int = 0
    missing_users: tuple[str, ...] = ()
    repair_rounds: int = 0
    repair_pages: int = 0
    #: pages handed to the writer and not yet written (the checkpoint waits for them)
    unwritten: int = 0
    _next: int = 1
    _in_flight: set[int] = field(default_factory=set)
    _page_one_back: bool = False
    _finishing: bool = False

    @classmethod
    def resuming(
        cls, spec: QuerySpec, resume: Resume | None, *, max_pages: int = DEFAULT_MAX_PAGES
    ) -> QueryPlan:
        """The plan of ``spec``, carrying on where an earlier run stopped (if it did)."""
        if resume is None or not resume.done:
            return cls(spec, max_pages=max_pages)
        return cls(
            spec,
            max_pages=max_pages,
            skip=resume.done,
            end=resume.end,
            total_pages=resume.total_pages,
            total_items=resume.total_items,
            written=set(resume.written),
            rows=resume.rows,
            finalized=resume.finalized,
        )

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
        return self.finalized or (
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

    @property
    def expected(self) -> int | None:
        """How many users the query has: the API's total, else the rows its pages held.

        ``None`` while pages are missing: the shortfall is theirs, not paging's.
        Without a total, a repeated row means another user slid past unseen.
        """
        if self.missing:
            return None
        return self.total_items if self.total_items is not None else self.rows

    def users_short(self) -> int:
        """Users expected and not delivered yet."""
        expected = self.expected
        return max(expected - len(self.written), 0) if expected is not None else 0

    def missing_users_now(self) -> tuple[str, ...]:
        """The requested user ids not delivered yet (what a repair pass asks for)."""
        written = self.written
        return tuple(user for user in self.spec.user_ids if user not in written)

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

    def take_finish(self) -> bool:
        """Whether to hand out the query's end-of-query check now (once, when finished)."""
        if self.finalized or self._finishing or not self.finished:
            return False
        self._finishing = True
        return True

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
        """Record a fetched page; return whether to deliver it (see :meth:`admit`)."""
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
        self.rows += count
        return True

    def admit(self, page: Page, *, user_id_field: str = "userId") -> Page:
        """The page with only the rows of users not delivered yet; they count as delivered.

        The first answer for a user wins: a later one is a repeat that paging
        over moving counts served twice (and it pushed another user out of
        sight, which the end-of-query check finds).

        Raises:
            ShapeError: a record has no user id, so rows cannot be told apart.
        """
        written = self.written
        kept = []
        for record in page.records:
            user = record.get(user_id_field)
            if user is None:
                raise missing_user_id(record, user_id_field, page.ref)
            if user not in written:
                written.add(user)
                kept.append(record)
        dropped = len(page.records) - len(kept)
        self.records += len(kept)
        if not page.repair:
            self.duplicates += dropped
        return page if not dropped else replace(page, records=kept, dropped=dropped)

    def fail(self, number: int, error: FetcherError) -> None:
        """Record that a page ran out of attempts."""
        self._in_flight.discard(number)
        if number == 1:
            self._page_one_back = True
            self._set_end(1)
        self.failed[number] = error


#: A worker's job: fetch page ``number`` of the query, or (``None``) check the
#: finished query and re-read the users it is missing.
Job = tuple[QueryPlan, int | None]


@dataclass(slots=True)
class Schedule:
    """Hands out jobs (see :data:`Job`) across many queries to one pool of workers."""

    pending: deque[QueryPlan]
    active: list[QueryPlan] = field(default_factory=list)
    finished_plans: list[QueryPlan] = field(default_factory=list)
    #: the most queries waiting for their first page at once (``None``: no limit)
    max_opening: int | None = None

    @classmethod
    def of(cls, plans: Iterable[QueryPlan], *, max_opening: int | None = None) -> Schedule:
        """A schedule over ``plans``, started in the given order."""
        return cls(pending=deque(plans), max_opening=max_opening)

    @property
    def plans(self) -> list[QueryPlan]:
        """Every plan: finished, active and pending."""
        return [*self.finished_plans, *self.active, *self.pending]

    @property
    def finished(self) -> bool:
        """Nothing pending and nothing active."""
        return not self.pending and not self.active

    def take(self) -> Job | None:
        """The next job, or ``None`` when there is none to hand out now.

        That is: every page is handed out, or the started queries wait on page 1
        and no other may start yet.
        """
        self._retire()
        for plan in self.active:
            job = self._job_of(plan)
            if job is not None:
                return job
        while self.pending and self._may_open():
            plan = self.pending.popleft()
            self.active.append(plan)
            job = self._job_of(plan)
            if job is not None:
                return job
        self._retire()
        return None

    @staticmethod
    def _job_of(plan: QueryPlan) -> Job | None:
        number = plan.take()
        if number is not None:
            return plan, number
        return (plan, None) if plan.take_finish() else None

    def _may_open(self) -> bool:
        # More queries waiting for page 1 than requests allowed in flight would
        # only queue for a request slot, and each open query keeps its user set.
        if self.max_opening is None:
            return True
        return sum(plan.opening for plan in self.active) < self.max_opening

    def _retire(self) -> None:
        still: list[QueryPlan] = []
        for plan in self.active:
            (self.finished_plans if plan.finalized else still).append(plan)
        self.active = still
