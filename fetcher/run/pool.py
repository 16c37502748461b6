"""The run: a pool of workers, one memory stream, one writer.

::

    Schedule ──► workers (2 x concurrency) ──► memory stream (bounded) ──► writer ──► sink
      (plan)      client.fetch_page                                  (one task)

Every task lives in an anyio task group. Workers take (query, page) jobs from
the :class:`~fetcher.run.paging.Schedule`, fetch them through the client (limiter,
transport, retries), keep only the rows of users their query has not written
yet, and send each page into a bounded memory object stream as soon as it is
back. When a query's pages are all back, one more job checks it and asks for
the users it is missing (the repair pass). One writer drains the stream into
the sink, so sinks need no locks, and a slow sink fills the stream and then
holds the workers, instead of filling memory. There are twice as many workers as requests allowed in
flight (the limiter enforces ``concurrency``): a page waiting out a backoff
then does not keep a request slot idle.

A page that runs out of attempts is recorded and the run goes on, so every
other page is still fetched and written; the run then ends as incomplete and
the summary lists what is missing. Some errors stop the run at once: a
refused key, and a connection failure before anything has succeeded (a wrong
host or port would otherwise be retried for every page).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Self

import anyio
import structlog
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from fetcher import defaults
from fetcher.errors import (
    AuthError,
    ConfigError,
    ConnectError,
    FetcherError,
    IncompleteRunError,
    ShapeError,
    SinkError,
    TLSError,
)
from fetcher.http.client import PageClient
from fetcher.models import ShapeFindings, inspect_shape
from fetcher.run.paging import DEFAULT_MAX_PAGES, QueryPlan, Resume, Schedule
from fetcher.run.router import PageSource
from fetcher.spec import MAX_PAGE_SIZE, QuerySpec, format_api_datetime

if TYPE_CHECKING:
    from fetcher.models import Page
    from fetcher.run.checkpoint import Checkpointer
    from fetcher.sinks import Sink

__all__ = [
    "FailedPage",
    "PageStream",
    "Paginator",
    "QueryView",
    "RunSnapshot",
    "RunSummary",
    "Watcher",
    "export",
]

log = structlog.get_logger("fetcher.run.pool")

RunStatus = Literal["ok", "incomplete", "failed"]

#: Runs beside an export (a progress display): called once with a function that
#: returns the run's :class:`RunSnapshot` now, cancelled when the fetch ends.
Watcher = Callable[[Callable[[], "RunSnapshot"]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class FailedPage:
    """A page that was not fetched, with the last error it got."""

    query: str
    page: int
    error: str
    error_type: str
    status: int | None
    attempts: int

    @classmethod
    def of(cls, query: str, page: int, error: FetcherError) -> FailedPage:
        """Describe ``error`` for the report."""
        return cls(
            query=query,
            page=page,
            error=error.message,
            error_type=type(error).__name__,
            status=getattr(error, "status", None),
            attempts=error.attempts,
        )


@dataclass(slots=True)
class QueryResult:
    """What happened to one query."""

    query: str
    type: str
    window_start: str
    window_end: str
    users: int
    total_pages: int | None
    total_items: int | None
    pages: int
    records: int
    failed_pages: list[int]
    duplicates_dropped: int = 0
    repair_rounds: int = 0


@dataclass(frozen=True, slots=True)
class IncompleteQuery:
    """A query whose users did not all arrive, even after re-reading it."""

    query: str
    type: str
    window_start: str
    window_end: str
    expected_users: int | None
    received_users: int
    missing_users: list[str]
    repair_rounds: int


@dataclass(slots=True)
class RunSummary:
    """What a run did; returned by :func:`export` and written as the run report.

    ``status`` is ``"ok"`` only when every page of every query was fetched and
    written; ``"incomplete"`` when some pages are missing (listed in
    ``failed_pages``); ``"failed"`` when an error stopped the run (``error``).
    """

    status: RunStatus = "ok"
    pages: int = 0
    records: int = 0
    requests: int = 0
    retries: int = 0
    duration_s: float = 0.0
    queries: int = 0
    failed_pages: list[FailedPage] = field(default_factory=list)
    failed_queries: list[str] = field(default_factory=list)
    discarded_pages: int = 0
    resumed_pages: int = 0
    resumed_records: int = 0
    duplicates_dropped: int = 0
    repair_requests: int = 0
    incomplete_queries: list[IncompleteQuery] = field(default_factory=list)
    shape: dict[str, Any] = field(default_factory=dict)
    rate_limit_refusals: int = 0
    rate_limit_waits: int = 0
    rate_limit_wait_s: float = 0.0
    error: str | None = None
    error_type: str | None = None
    started_at: str = ""
    finished_at: str = ""
    query_results: list[QueryResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every page was fetched and written."""
        return self.status == "ok"

    def raise_for_status(self) -> Self:
        """Raise :class:`~fetcher.errors.IncompleteRunError` unless the run is ok.

        Returns:
            The summary itself, for chaining.
        """
        if not self.ok:
            raise IncompleteRunError(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the run report."""
        return {
            "status": self.status,
            "pages": self.pages,
            "records": self.records,
            "requests": self.requests,
            "retries": self.retries,
            "duration_s": round(self.duration_s, 3),
            "queries": self.queries,
            "failed_pages": [_asdict(f) for f in self.failed_pages],
            "failed_queries": self.failed_queries,
            "discarded_pages": self.discarded_pages,
            "resumed": {"pages": self.resumed_pages, "records": self.resumed_records},
            "duplicates_dropped": self.duplicates_dropped,
            "repair_requests": self.repair_requests,
            "incomplete_queries": [_asdict(q) for q in self.incomplete_queries],
            "shape": self.shape,
            "rate_limit": {
                "refusals": self.rate_limit_refusals,
                "waits": self.rate_limit_waits,
                "wait_s": round(self.rate_limit_wait_s, 3),
            },
            "error": self.error,
            "error_type": self.error_type,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "query_results": [_asdict(q) for q in self.query_results],
        }


@dataclass(frozen=True, slots=True)
class QueryView:
    """One query's progress, as a progress display shows it."""

    key: str
    type: str
    window_start: dt.datetime
    window_end: dt.datetime
    pages_done: int
    pages_total: int | None
    failed_pages: int


@dataclass(frozen=True, slots=True)
class RunSnapshot:
    """The run's progress at one instant (see :meth:`Paginator.snapshot`).

    ``pages_total`` counts the pages of queries whose size is known (from
    page 1's meta, or their last page); ``queries_unsized`` are those whose
    size is not known yet. ``waiting_until`` is the epoch time the limiter
    holds every worker until (a rate-limit pause), or ``None``.
    """

    elapsed_s: float
    queries_total: int
    queries_finished: int
    queries_unsized: int
    pages_done: int
    pages_total: int
    records: int
    requests: int
    retries: int
    failed_pages: int
    waiting_until: float | None
    interval_s: float
    resumed_pages: int
    active: tuple[QueryView, ...]


def _asdict(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


class Paginator:
    """Fetches every page of a set of queries with a pool of workers.

    Args:
        client: fetches single pages (limiter, transport, retries).
        queries: the queries of the run; they share the client's limiter.
        max_pages: the most pages one query may have.
        concurrency: requests in flight; the client's concurrency by default.
            Twice as many workers run, so pages in backoff leave slots to others.
        resume: per query key, what an earlier, interrupted run durably did.
        repair_rounds: re-reads of a query that came back short before it fails.
        expected_path: where the records must be (configured, or the last run's).
    """

    def __init__(
        self,
        client: PageSource,
        queries: Iterable[QuerySpec],
        *,
        max_pages: int = DEFAULT_MAX_PAGES,
        concurrency: int | None = None,
        resume: Mapping[str, Resume] | None = None,
        repair_rounds: int = defaults.REPAIR_ROUNDS,
        expected_path: str | None = None,
    ) -> None:
        resume = resume or {}
        self.client = client
        self.concurrency = concurrency or client.concurrency
        # Twice the requests in flight (a page waiting out a backoff holds a worker),
        # and at least as many as the limiter may let go at once.
        self.workers = (
            2 * self.concurrency if concurrency else max(2 * self.concurrency, client.max_in_flight)
        )
        plans = [
            QueryPlan.resuming(spec, resume.get(spec.key), max_pages=max_pages) for spec in queries
        ]
        self.plans_by_key = {plan.key: plan for plan in plans}
        self.schedule = Schedule.of(plans, max_opening=self.concurrency)
        self.fatal: FetcherError | None = None
        self.requests = 0
        self.pages_ok = 0
        self._changed = anyio.Event()
        self._started = time.monotonic()
        self._started_at = _now_iso()
        self._cancel: Callable[[], None] | None = None
        self._done_callbacks: list[Callable[[], None]] = []
        self.pages_written = 0
        self.records_written = 0
        self.resumed_pages = 0
        self.resumed_records = 0
        self.repair_requests = 0
        self.retries = 0
        self.repair_rounds = repair_rounds
        #: where the records are; fixed by the run's first page (or the last run's)
        self.expected_path = expected_path
        #: what the first page of each report type looked like
        self.shapes: dict[str, ShapeFindings] = {}

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def stop(self, error: FetcherError) -> None:
        """Stop the run with ``error`` (the first one wins)."""
        if self.fatal is None:
            self.fatal = error
        if self._cancel is not None:
            self._cancel()

    async def run(self, send: MemoryObjectSendStream[Page]) -> None:
        """Fetch every page and send each finished one into ``send``; then close it.

        Never raises (but for cancellation): a fatal error is kept in :attr:`fatal`.
        """
        async with send:
            try:
                async with anyio.create_task_group() as tg:
                    self._cancel = tg.cancel_scope.cancel
                    for _ in range(self.workers):
                        tg.start_soon(self._worker, send, tg)
            except Exception as exc:
                self.fatal = self.fatal or _as_fetcher_error(exc)
            finally:
                self._cancel = None
                for callback in self._done_callbacks:
                    callback()

    def on_done(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when :meth:`run` ends, however it ends."""
        self._done_callbacks.append(callback)

    def _is_fatal(self, error: FetcherError) -> bool:
        if isinstance(error, AuthError | ConfigError | TLSError):
            return True
        # Nothing has worked yet and we cannot connect: a wrong host or port.
        return isinstance(error, ConnectError) and self.pages_ok == 0

    async def _worker(self, send: MemoryObjectSendStream[Page], tg: TaskGroup) -> None:
        schedule = self.schedule
        try:
            while True:
                job = schedule.take()
                if job is None:
                    if schedule.finished:
                        self._notify()
                        return
                    await self._changed.wait()
                    continue
                plan, number = job
                if number is None:
                    await self._finish_query(plan, send)
                elif not await self._fetch(plan, number, send):
                    return
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            # The reader went away (the iterator was closed): stop quietly.
            tg.cancel_scope.cancel()

    async def _fetch(
        self, plan: QueryPlan, number: int, send: MemoryObjectSendStream[Page]
    ) -> bool:
        """Fetch one page and hand it to the writer; ``False`` when the run must stop."""
        try:
            page = await self.client.fetch_page(plan.spec, number)
        except FetcherError as error:
            self._count(max(error.attempts, 1))
            plan.fail(number, error)
            self._notify()
            if self._is_fatal(error):
                self.stop(error)
                return False
            log.error(  # noqa: TRY400  (the error says it all; no traceback)
                "page.failed",
                query=plan.key,
                page=number,
                attempts=error.attempts,
                error=str(error),
            )
            return True
        self._count(page.attempts)
        self.pages_ok += 1
        try:
            self._check_shape(page)
            if plan.complete(page):
                await self._deliver(plan, plan.admit(page, user_id_field=self._user_id_field), send)
        except ShapeError as error:
            self.stop(error)
            return False
        finally:
            self._notify()
        return True

    @property
    def _user_id_field(self) -> str:
        return self.client.shape.user_id_field

    @staticmethod
    async def _deliver(plan: QueryPlan, page: Page, send: MemoryObjectSendStream[Page]) -> None:
        """Hand a page to the writer (waits while the stream is full: a slow sink sets the pace)."""
        plan.unwritten += 1
        try:
            await send.send(page)
        except BaseException:
            plan.unwritten -= 1
            raise

    def _check_shape(self, page: Page) -> None:
        """Hold every page to the shape of the run's first one (and of the last run).

        Raises:
            ShapeError: the record list moved (the envelope changed).
        """
        expected = self.expected_path
        if expected is not None and page.records_path != expected:
            raise ShapeError(
                f"the response shape changed: records were at {expected!r}, now at "
                f"{page.records_path!r}. Check the API's changelog; if the new shape is "
                f"right, pass --records-path {page.records_path} (or --fresh to accept it)",
                page=page.ref,
                found=page.records_path,
            )
        if expected is None:
            self.expected_path = page.records_path
        report_type = page.query.type
        if report_type not in self.shapes and page.records:
            findings = inspect_shape(page, user_id_field=self.client.shape.user_id_field)
            self.shapes[report_type] = findings
            if findings.new_fields:
                log.warning(
                    "shape.new_fields",
                    type=report_type,
                    fields=list(findings.new_fields),
                    note="kept (JSONL as is; tables in the extra column)",
                )
            if findings.missing_metrics:
                log.warning(
                    "shape.missing_metrics",
                    type=report_type,
                    metrics=list(findings.missing_metrics),
                )

    async def _finish_query(self, plan: QueryPlan, send: MemoryObjectSendStream[Page]) -> None:
        """Every page of ``plan`` is back: re-read the users it is missing, then close it."""
        try:
            while plan.users_short() and plan.repair_rounds < self.repair_rounds:
                plan.repair_rounds += 1
                for page in await self._repair_read(plan):
                    await self._deliver(
                        plan, plan.admit(page, user_id_field=self._user_id_field), send
                    )
        except ShapeError as error:
            self.stop(error)
            return
        except FetcherError as error:
            log.error("query.repair_failed", query=plan.key, error=str(error))  # noqa: TRY400
        plan.shortfall = plan.users_short()
        plan.missing_users = plan.missing_users_now() if plan.shortfall else ()
        plan.finalized = True
        # Nothing of it is admitted any more: the user ids it delivered, kept to drop
        # repeats, would stay for the run (200,000 of them: +15 MB over 20,000 pages).
        plan.written = set()
        self._notify()
        if plan.duplicates or plan.repair_rounds:
            log.warning(
                "query.consolidated",
                query=plan.key,
                duplicates_dropped=plan.duplicates,
                repair_rounds=plan.repair_rounds,
                shortfall=plan.shortfall,
            )

    async def _repair_read(self, plan: QueryPlan) -> list[Page]:
        """Ask for exactly the users ``plan`` is missing, in as few pages as the API allows.

        One page of up to 1,000 rows is one consistent snapshot. If every
        requested user is in already (the API counts users it was not asked
        for), the whole query is read again instead.
        """
        missing = plan.missing_users_now()
        if missing:
            spec = plan.spec.model_copy(update={"user_ids": missing, "page_size": MAX_PAGE_SIZE})
            wanted = len(missing)
        else:
            spec = plan.spec.model_copy(update={"page_size": MAX_PAGE_SIZE})
            wanted = plan.expected or 1
        pages = []
        for number in range(1, max(1, -(-wanted // MAX_PAGE_SIZE)) + 1):
            page = await self.client.fetch_page(spec, number)
            self._count(page.attempts)
            self.repair_requests += page.attempts
            plan.repair_pages += 1
            pages.append(
                replace(
                    page,
                    query=plan.spec,
                    number=(plan.end or 0) + plan.repair_pages,
                    repair=True,
                )
            )
            if len(page.records) < MAX_PAGE_SIZE:
                break
        return pages

    def _count(self, attempts: int) -> None:
        """Count one page's requests: its first attempt and each retry."""
        self.requests += attempts
        self.retries += max(attempts - 1, 0)

    def snapshot(self) -> RunSnapshot:
        """The run's progress right now; cheap enough to poll a few times a second."""
        plans = self.schedule.plans
        pages_done = pages_total = unsized = finished = failed = 0
        active = []
        for plan in plans:
            done = len(plan.done)
            pages_done += done
            missing = len(plan.missing)
            failed += missing
            if plan.finalized:
                finished += 1
            total = plan.end if plan.end is not None else plan.total_pages
            if total is None:
                unsized += 1
            else:
                pages_total += max(total - len(plan.skip), 0)
            if plan.started and not plan.finished:
                active.append(
                    QueryView(
                        key=plan.key,
                        type=plan.spec.type,
                        window_start=plan.spec.start,
                        window_end=plan.spec.end,
                        pages_done=done,
                        pages_total=total,
                        failed_pages=missing,
                    )
                )
        limiter = self.client.limiter
        until = limiter.waiting_until
        wall_until = None if until is None else time.time() + (until - time.monotonic())
        return RunSnapshot(
            elapsed_s=time.monotonic() - self._started,
            queries_total=len(plans),
            queries_finished=finished,
            queries_unsized=unsized,
            pages_done=pages_done,
            pages_total=pages_total,
            records=sum(plan.records for plan in plans),
            requests=self.requests,
            retries=self.retries,
            failed_pages=failed,
            waiting_until=wall_until,
            interval_s=limiter.interval_s,
            resumed_pages=self.resumed_pages,
            active=tuple(active),
        )

    def summary(self) -> RunSummary:
        """The run's summary so far (complete once :meth:`run` has returned)."""
        plans = self.schedule.plans
        failed_pages = [
            FailedPage.of(plan.key, number, error)
            for plan in plans
            for number, error in plan.missing.items()
        ]
        failed_queries = [plan.key for plan in plans if plan.query_failed]
        unfinished = [plan.key for plan in plans if not plan.finalized]
        incomplete = [
            IncompleteQuery(
                query=plan.key,
                type=plan.spec.type,
                window_start=format_api_datetime(plan.spec.start),
                window_end=format_api_datetime(plan.spec.end),
                expected_users=plan.total_items,
                received_users=(plan.total_items or 0) - plan.shortfall,
                missing_users=list(plan.missing_users[:100]),
                repair_rounds=plan.repair_rounds,
            )
            for plan in plans
            if plan.shortfall
        ]
        stats = self.client.limiter.stats
        if self.fatal is not None:
            status: RunStatus = "failed"
        elif failed_pages or failed_queries or unfinished or incomplete:
            status = "incomplete"
        else:
            status = "ok"
        return RunSummary(
            status=status,
            pages=self.pages_written,
            records=self.records_written,
            requests=self.requests,
            retries=self.retries,
            duration_s=time.monotonic() - self._started,
            queries=len(plans),
            failed_pages=failed_pages,
            failed_queries=failed_queries,
            discarded_pages=sum(plan.discarded for plan in plans),
            resumed_pages=self.resumed_pages,
            resumed_records=self.resumed_records,
            duplicates_dropped=sum(plan.duplicates for plan in plans),
            repair_requests=self.repair_requests,
            incomplete_queries=incomplete,
            shape={
                "records_path": self.expected_path,
                "new_fields": sorted({f for s in self.shapes.values() for f in s.new_fields}),
                "missing_metrics": {
                    t: list(s.missing_metrics) for t, s in self.shapes.items() if s.missing_metrics
                },
            },
            rate_limit_refusals=stats.refusals,
            rate_limit_waits=stats.waits,
            rate_limit_wait_s=stats.waited_s,
            error=str(self.fatal) if self.fatal else None,
            error_type=type(self.fatal).__name__ if self.fatal else None,
            started_at=self._started_at,
            finished_at=_now_iso(),
            query_results=[
                QueryResult(
                    query=plan.key,
                    type=plan.spec.type,
                    window_start=format_api_datetime(plan.spec.start),
                    window_end=format_api_datetime(plan.spec.end),
                    users=len(plan.spec.user_ids),
                    total_pages=plan.total_pages,
                    total_items=plan.total_items,
                    pages=len(plan.done),
                    records=plan.records,
                    failed_pages=sorted(plan.missing),
                    duplicates_dropped=plan.duplicates,
                    repair_rounds=plan.repair_rounds,
                )
                for plan in plans
            ],
        )

    def written(self, page: Page) -> None:
        """Count a page the sink has written (re-read pages count as requests, not pages)."""
        plan = self.plans_by_key.get(page.query.key)
        if plan is not None:
            plan.unwritten -= 1
        if not page.repair:
            self.pages_written += 1
        self.records_written += len(page.records)


def _as_fetcher_error(exc: Exception) -> FetcherError:
    if isinstance(exc, FetcherError):
        return exc
    if isinstance(exc, ExceptionGroup):
        first = exc.exceptions[0]
        if isinstance(first, Exception):
            return _as_fetcher_error(first)
    error = FetcherError(f"unexpected error: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


class PageStream:
    """The pages of a run, as an async iterator (see :meth:`fetcher.Client.pages`).

    Iteration ends when every page has been delivered. If pages are missing
    it then raises :class:`~fetcher.errors.IncompleteRunError` (whose
    ``summary`` lists them); an error that stopped the run is raised as is.
    Leaving the loop early, or :meth:`aclose`, stops the fetching.
    """

    def __init__(self, receive: MemoryObjectReceiveStream[Page], paginator: Paginator) -> None:
        self._receive = receive
        self._paginator = paginator

    @classmethod
    def start(cls, task_group: TaskGroup, paginator: Paginator, *, buffer: int) -> PageStream:
        """Start ``paginator`` in ``task_group`` and stream its pages."""
        send, receive = anyio.create_memory_object_stream["Page"](max_buffer_size=buffer)
        task_group.start_soon(paginator.run, send)
        return cls(receive, paginator)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Page:
        try:
            page = await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            await self._receive.aclose()
            paginator = self._paginator
            if paginator.fatal is not None:
                paginator.fatal.summary = paginator.summary()
                raise paginator.fatal from None
            summary = paginator.summary()
            if not summary.ok:
                raise IncompleteRunError(summary) from None
            raise StopAsyncIteration from None
        self._paginator.written(page)
        return page

    async def aclose(self) -> None:
        """Stop fetching and release the stream."""
        await self._receive.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def summary(self) -> RunSummary:
        """The run's summary so far."""
        return self._paginator.summary()


async def export(
    queries: QuerySpec | Iterable[QuerySpec],
    sink: Sink,
    *,
    client: PageSource | None = None,
    queue_size: int | None = None,
    max_pages: int = DEFAULT_MAX_PAGES,
    checkpoint: Checkpointer | None = None,
    on_page: Callable[[Page], None] | None = None,
    watch: Watcher | None = None,
    expected_path: str | None = None,
    repair_rounds: int = 3,
    **client_options: Any,
) -> RunSummary:
    """Fetch every page of ``queries`` and write each into ``sink`` as it arrives.

    Args:
        queries: one query or several (they run concurrently, sharing one limiter).
        sink: where pages go; see :class:`~fetcher.sinks.Sink`.
        client: a client to use; otherwise one is made from ``client_options``
            (``api_key``, ``base_url``, ``concurrency``, ...) and closed after.
        queue_size: pages buffered between the workers and the sink
            (default: the concurrency).
        max_pages: the most pages one query may have.
        checkpoint: records durable progress and resumes an interrupted run
            (see :mod:`fetcher.run.checkpoint`); needs a sink with ``checkpoint`` and
            ``resume_from`` (:class:`~fetcher.sinks.ResumableSink`).
        on_page: called after the sink has written each page.
        watch: run alongside the export with its paginator (e.g. a progress
            display polling :meth:`Paginator.snapshot`); cancelled at the end.
        expected_path: where the records must be (e.g. the last run's); a run
            whose responses put them elsewhere stops with a ShapeError.
        repair_rounds: how often a query whose users did not all arrive is
            read again before it counts as incomplete.
        **client_options: arguments for :class:`~fetcher.http.client.PageClient`.

    Returns:
        The run summary. When pages are missing its ``status`` is
        ``"incomplete"``, and the sink was closed as failed (its output is not
        completed), so nothing looks complete that is not.

    Raises:
        AuthError: the key was refused; nothing more was sent.
        FetcherError: another error stopped the run; its ``summary``
            attribute holds the summary up to then.
    """
    specs = [queries] if isinstance(queries, QuerySpec) else list(queries)
    async with AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(PageClient(**client_options))
        elif client_options:
            raise TypeError("pass either client or client options, not both")
        if checkpoint is not None:
            _prepare_resume(checkpoint, sink)
        paginator = Paginator(
            client,
            specs,
            max_pages=max_pages,
            resume=checkpoint.resume() if checkpoint else None,
            expected_path=expected_path or client.shape.records_path,
            repair_rounds=repair_rounds,
        )
        if checkpoint is not None:
            paginator.resumed_pages = checkpoint.resumed_pages
            paginator.resumed_records = checkpoint.resumed_records
        buffer = queue_size if queue_size is not None else paginator.concurrency
        try:
            await _export(
                paginator, sink, buffer, on_page=on_page, checkpoint=checkpoint, watch=watch
            )
        except IncompleteRunError as exc:
            summary = exc.summary
            assert isinstance(summary, RunSummary)
            return summary
        except FetcherError as exc:
            summary = paginator.summary()
            if summary.status != "failed":  # e.g. the sink could not even be opened
                summary.status = "failed"
                summary.error, summary.error_type = str(exc), type(exc).__name__
            exc.summary = summary
            raise
        if checkpoint is not None:
            await checkpoint.finish("complete")
    return paginator.summary()


def _prepare_resume(checkpoint: Checkpointer, sink: Sink) -> None:
    """Point the sink at the interrupted run's output, or start over if it cannot go on."""
    if not checkpoint.resumed:
        return
    resume_from = getattr(sink, "resume_from", None)
    reason = None
    if resume_from is None or checkpoint.state.sink is None:
        reason = f"{type(sink).__name__} cannot resume"
    else:
        try:
            resume_from(checkpoint.state.sink)
        except FetcherError as exc:
            reason = str(exc)
    if reason is not None:
        log.warning("run.restarting", reason=reason)
        checkpoint.restart()


async def _watch(watch: Watcher, paginator: Paginator) -> None:
    """Run the watcher until the fetch is over (it must not outlive the run)."""
    with anyio.CancelScope() as scope:
        paginator.on_done(scope.cancel)
        try:
            await watch(paginator.snapshot)
        except Exception:  # a display must never break an export
            log.exception("watch.failed")


async def _write(
    sink: Sink, page: Page, paginator: Paginator, checkpoint: Checkpointer | None
) -> FetcherError | None:
    """Write one page (and checkpoint when due); return the error that stops the run, if any."""
    try:
        await sink.write(page)
        paginator.written(page)
        if checkpoint is not None:
            checkpoint.written(page, user_id_field=paginator.client.shape.user_id_field)
            if checkpoint.due():
                await checkpoint.commit(sink, paginator.schedule.plans)
    except FetcherError as exc:
        return exc
    except Exception as exc:  # any sink failure stops the run
        error = SinkError(f"{type(exc).__name__}: {exc}", page=page.ref)
        error.__cause__ = exc
        return error
    return None


async def _export(
    paginator: Paginator,
    sink: Sink,
    buffer: int,
    *,
    on_page: Callable[[Page], None] | None,
    checkpoint: Checkpointer | None,
    watch: Watcher | None = None,
) -> None:
    send, receive = anyio.create_memory_object_stream["Page"](max_buffer_size=buffer)
    sink_error: FetcherError | None = None
    plans = paginator.schedule.plans
    if checkpoint is not None:
        await checkpoint.start()
    # The sink is opened before anything is fetched (a bad path fails first)
    # and exits with an exception whenever the run is not complete, so that it
    # does not finalise its output.
    async with sink:
        async with anyio.create_task_group() as tg:
            tg.start_soon(paginator.run, send)
            if watch is not None:
                tg.start_soon(_watch, watch, paginator)
            async with receive:
                async for page in receive:
                    sink_error = await _write(sink, page, paginator, checkpoint)
                    if sink_error is not None:
                        paginator.stop(sink_error)
                        break
                    log.info(
                        "page.written",
                        query=page.query.key,
                        page=page.number,
                        records=len(page.records),
                        attempts=page.attempts,
                        elapsed_ms=round(page.elapsed_s * 1000, 1),
                    )
                    if on_page is not None:
                        on_page(page)
        summary = paginator.summary()
        if checkpoint is not None:
            if sink_error is None:
                # Keep what was written, so a re-run fetches only what is missing.
                await checkpoint.commit(sink, plans)
            if not summary.ok:
                await checkpoint.finish("failed" if summary.status == "failed" else "incomplete")
        if paginator.fatal is not None:
            raise paginator.fatal
        if not summary.ok:
            raise IncompleteRunError(summary)
