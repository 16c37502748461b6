"""``fetcher plan``: what an export would fetch, and how long it must take at least.

It resolves everything an export resolves (the config, the window, its
slices, the report types, the users and their batches) into the same
queries, and then estimates, per query, how many pages the export will
request:

* **probed** (the default): page 1 of each query is fetched once, and its
  ``meta`` gives the exact number of pages. That is the only request per
  query; a probe is never retried (a probe that fails falls back to the
  estimate below), and no page past the first is ever requested.
* **not probed** (``--no-probe``): ``ceil(users / page size)`` per query. The
  API returns at most one row per user and window, so this is an upper bound;
  no request at all is sent, except the team member list for ``--all-users``
  (without it there is nothing to count).

From the pages it derives the least time the export can take: under the
configured ``--rate-limit`` (requests x interval), under the limit the server
advertises in its ``x-ratelimit-*`` headers (when the probes saw them), and
at the probed latency with ``--concurrency`` requests in flight. Retries come
on top of every figure.

The headers and latencies are read by :class:`fetcher.app.connect.RecordingTransport`;
:func:`fetcher.app.connect.open_api` (shared with ``fetcher export`` and ``fetcher
check``) opens the client, starting the built-in simulator for
``base_url = "simulator"``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from fetcher.app.connect import ApiSession, Observed, open_api
from fetcher.app.resolve import preflight, resolve_run
from fetcher.app.settings import ExportSettings, resolve_workspace_key
from fetcher.errors import AuthError, ConfigError, ConnectError, FetcherError
from fetcher.http.retry import RetryPolicy
from fetcher.run.client import Client
from fetcher.spec import format_api_datetime

if TYPE_CHECKING:
    from pydantic import SecretStr

    from fetcher.app.resolve import CatchUp
    from fetcher.http.limiter import Rate
    from fetcher.spec import QuerySpec

__all__ = ["JobPlan", "QueryEstimate", "RunPlan", "ServerLimit", "make_job_plan", "make_plan"]

log = structlog.get_logger("fetcher.app.plan")


@dataclass(frozen=True, slots=True)
class QueryEstimate:
    """One query's pages: exact from page 1's meta, or estimated from its users."""

    key: str
    type: str
    window_start: dt.datetime
    window_end: dt.datetime
    users: int
    pages: int
    exact: bool
    records: int | None = None
    probe_error: str | None = None


@dataclass(frozen=True, slots=True)
class ServerLimit:
    """The rate limit the server advertised: ``limit`` requests per ``window_s``."""

    limit: int
    window_s: float

    def min_run_s(self, requests: int) -> float:
        """The least time ``requests`` take: every full window but the last is waited out."""
        if requests <= self.limit:
            return 0.0
        return (math.ceil(requests / self.limit) - 1) * self.window_s


@dataclass(frozen=True, slots=True)
class RunPlan:
    """What an export of the same settings would do; see the module docstring.

    Attributes:
        base_url: the API (``simulator`` for the built-in one).
        queries: per query, its pages.
        window: the first slice's start and the last slice's end, if any.
        slice_unit: ``day``, ``week``, ``month`` or ``None``.
        timezone: the zone of days and slices.
        types: the report types.
        users: how many users.
        batch_size: users per query at most.
        team_list: whether the export fetches the team member list (one request).
        probed: whether page 1 of each query was fetched.
        requests_sent: requests this plan sent (probes and the team list).
        rate: the configured ``--rate-limit``, if any.
        concurrency: requests in flight.
        server_limit: the limit the server advertised, if the responses said.
        latency_s: the median response time seen, if any request was sent.
        catch_up_after: with ``--catch-up``, the end of the last completed window.
    """

    base_url: str
    queries: tuple[QueryEstimate, ...]
    window: tuple[dt.datetime, dt.datetime] | None
    slice_unit: str | None
    timezone: str
    types: tuple[str, ...]
    users: int
    batch_size: int
    team_list: bool
    probed: bool
    requests_sent: int = 0
    rate: Rate | None = None
    concurrency: int = 1
    server_limit: ServerLimit | None = None
    latency_s: float | None = None
    catch_up_after: dt.datetime | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def slices(self) -> int:
        """Distinct windows among the queries."""
        return len({(q.window_start, q.window_end) for q in self.queries})

    @property
    def user_batches(self) -> int:
        """Queries per window and type: the users split into batches."""
        return math.ceil(self.users / self.batch_size) if self.users else 0

    @property
    def pages(self) -> int:
        """Pages the export will request (each at least once)."""
        return sum(q.pages for q in self.queries)

    @property
    def exact_queries(self) -> int:
        """Queries whose pages are known from page 1's meta."""
        return sum(q.exact for q in self.queries)

    @property
    def requests(self) -> int:
        """Requests the export will send without retries: its pages, and the team list."""
        return self.pages + int(self.team_list)

    @property
    def min_run_s_configured(self) -> float | None:
        """The least time under the configured rate.

        The limiter allows ``n`` requests in any span (a sliding window, see
        :attr:`fetcher.http.limiter.Rate.window`), so the first ``n`` go at once and
        each later group of ``n`` a span after the last.
        """
        if self.rate is None:
            return None
        n, span = self.rate.window
        return max(math.ceil(self.requests / n) - 1, 0) * span

    @property
    def min_run_s_server(self) -> float | None:
        """The least time under the server's advertised limit."""
        return None if self.server_limit is None else self.server_limit.min_run_s(self.requests)

    @property
    def min_run_s_latency(self) -> float | None:
        """The least time at the probed latency with ``concurrency`` requests in flight."""
        if self.latency_s is None:
            return None
        return math.ceil(self.requests / self.concurrency) * self.latency_s

    @property
    def min_run_s(self) -> float | None:
        """The largest of the bounds known: the export cannot be faster."""
        bounds = [
            b
            for b in (self.min_run_s_configured, self.min_run_s_server, self.min_run_s_latency)
            if b is not None
        ]
        return max(bounds) if bounds else None

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready data (``fetcher plan --json``)."""
        window = self.window
        return {
            "base_url": self.base_url,
            "window": [format_api_datetime(w) for w in window] if window else None,
            "slice": self.slice_unit,
            "timezone": self.timezone,
            "types": list(self.types),
            "users": self.users,
            "user_batches": self.user_batches,
            "slices": self.slices,
            "queries": len(self.queries),
            "pages": self.pages,
            "exact_queries": self.exact_queries,
            "requests": self.requests,
            "team_list": self.team_list,
            "probed": self.probed,
            "requests_sent": self.requests_sent,
            "catch_up_after": (
                format_api_datetime(self.catch_up_after) if self.catch_up_after else None
            ),
            "min_run_s": _round(self.min_run_s),
            "min_run_s_configured": _round(self.min_run_s_configured),
            "min_run_s_server": _round(self.min_run_s_server),
            "min_run_s_latency": _round(self.min_run_s_latency),
            "rate_interval_s": self.rate.interval_s if self.rate else None,
            "rate_window": (
                {"requests": self.rate.window[0], "seconds": self.rate.window[1]}
                if self.rate
                else None
            ),
            "server_limit": (
                {"limit": self.server_limit.limit, "window_s": self.server_limit.window_s}
                if self.server_limit
                else None
            ),
            "latency_s": _round(self.latency_s),
            "concurrency": self.concurrency,
            "notes": list(self.notes),
            "query_estimates": [
                {
                    "query": q.key,
                    "type": q.type,
                    "window_start": format_api_datetime(q.window_start),
                    "window_end": format_api_datetime(q.window_end),
                    "users": q.users,
                    "pages": q.pages,
                    "exact": q.exact,
                    "records": q.records,
                    "probe_error": q.probe_error,
                }
                for q in self.queries
            ],
        }

    def lines(self) -> Iterator[str]:
        """The plan as text, for people."""
        yield f"fetcher plan for {self.base_url}"
        if self.window is not None:
            start, end = self.window
            unit = f", one query per {self.slice_unit}" if self.slice_unit else ""
            yield (
                f"  window    {_local(start)} .. {_local(end)} ({self.timezone}){unit}: "
                f"{self.slices} slice(s)"
            )
        if self.catch_up_after is not None:
            yield f"  catch-up  after {format_api_datetime(self.catch_up_after)}"
        yield f"  reports   {', '.join(self.types)}"
        team = " (the team member list)" if self.team_list else ""
        yield (
            f"  users     {self.users}{team}, in {self.user_batches} batch(es) of up to "
            f"{self.batch_size}"
        )
        yield (
            f"  queries   {len(self.queries)} = {self.slices} slice(s) x {len(self.types)} "
            f"type(s) x {self.user_batches} batch(es)"
        )
        exact = self.exact_queries
        how = (
            "exact, from page 1's meta"
            if exact == len(self.queries)
            else f"{exact} of {len(self.queries)} exact from page 1's meta; the rest "
            "estimated as users / page size (an upper bound)"
        )
        yield f"  pages     {self.pages:,} ({how})"
        team_req = " + the team member list" if self.team_list else ""
        yield f"  requests  {self.requests:,} (pages{team_req}), plus any retries"
        yield from self._time_lines()
        probe = "page 1 of each query, once" if self.probed else "none (--no-probe)"
        yield f"  probes    {probe}; this plan sent {self.requests_sent} request(s)"
        for note in self.notes:
            yield f"  note: {note}"

    def _time_lines(self) -> Iterator[str]:
        bounds = []
        if self.rate is not None and self.min_run_s_configured is not None:
            bounds.append(
                f"{_seconds(self.min_run_s_configured)} at the configured rate limit "
                f"({self.rate.per_second:g} requests/s)"
            )
        if self.server_limit is not None and self.min_run_s_server is not None:
            bounds.append(
                f"{_seconds(self.min_run_s_server)} at the server's limit "
                f"({self.server_limit.limit} requests per {self.server_limit.window_s:g} s)"
            )
        if self.min_run_s_latency is not None and self.latency_s is not None:
            bounds.append(
                f"{_seconds(self.min_run_s_latency)} at {self.concurrency} in flight x "
                f"{self.latency_s * 1000:.0f} ms per request"
            )
        if self.min_run_s is None:
            yield "  min time  unknown (no rate limit configured and nothing probed)"
            return
        yield f"  min time  {_seconds(self.min_run_s)}: the largest of"
        for bound in bounds:
            yield f"              {bound}"


@dataclass(frozen=True, slots=True)
class JobPlan:
    """With ``[[workspaces]]``: one plan per workspace (its key, its limit), and the job's.

    A job's units (one per workspace x slice x type x user batch) run side by side
    only across keys: every worker shares each key's window, so the job can use at
    most one worker thread per key with work at once (a unit's pages already go
    concurrently); more threads only wait. The job cannot end before its busiest key.
    """

    workspaces: tuple[tuple[str, RunPlan], ...]

    @property
    def units(self) -> int:
        """Units of the job: its queries, over every workspace."""
        return sum(len(plan.queries) for _, plan in self.workspaces)

    @property
    def useful_workers(self) -> int:
        """Worker threads the job can keep busy at once: one per key with work."""
        return sum(1 for _, plan in self.workspaces if plan.queries)

    @property
    def min_run_s(self) -> float | None:
        """The busiest key's least time (the keys run side by side)."""
        bounds = [plan.min_run_s for _, plan in self.workspaces if plan.min_run_s is not None]
        return max(bounds) if bounds else None

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready data (``fetcher plan --json``)."""
        return {
            "workspaces": {name: plan.to_dict() for name, plan in self.workspaces},
            "units": self.units,
            "pages": sum(plan.pages for _, plan in self.workspaces),
            "requests": sum(plan.requests for _, plan in self.workspaces),
            "useful_workers": self.useful_workers,
            "min_run_s": _round(self.min_run_s),
        }

    def lines(self) -> Iterator[str]:
        """The plan as text, for people: each workspace's, then the job's."""
        for name, plan in self.workspaces:
            yield f"workspace {name}:"
            for line in plan.lines():
                yield "  " + line
        pages = sum(plan.pages for _, plan in self.workspaces)
        yield (
            f"job: {self.units} unit(s) (workspace x slice x type x user batch), {pages:,} "
            f"page(s) over {len(self.workspaces)} key(s)"
        )
        if self.min_run_s is not None:
            yield f"  min time  {_seconds(self.min_run_s)}: the busiest key's"
        yield (
            f"  workers   at most {self.useful_workers} worker thread(s) at once are useful "
            "(one unit per key: every worker shares each key's window; more only wait)"
        )


async def make_job_plan(
    settings: ExportSettings, *, probe: bool = True, now: dt.datetime | None = None
) -> JobPlan:
    """:func:`make_plan` for each workspace, with its own key, URL, users and rate.

    Raises:
        ConfigError: a workspace's key cannot be found (before any request).
        AuthError: a key was refused.
    """
    workspaces = settings.workspaces or []
    keys = {w.name: resolve_workspace_key(w) for w in workspaces}
    listed = preflight(settings, now=now)  # what needs no request fails before any
    catch_up: CatchUp | None = None
    if settings.catch_up:
        # The export keeps one catch-up position for the whole job, under the
        # identity of all its workspaces together: the plan reads the same one,
        # resolved as the export resolves it (each team list asked for once).
        async with contextlib.AsyncExitStack() as stack:
            clients: dict[str | None, Client] = {
                w.name: (
                    await stack.enter_async_context(
                        open_api(settings.for_workspace(w), key=keys[w.name])
                    )
                ).client
                for w in workspaces
                if listed[w.name] is None
            }
            run = await resolve_run(settings, listed, clients=clients, now=now)
        listed = dict(run.users_of)
        after = run.after

        def catch_up(_identity: str) -> dt.datetime | None:
            return after

    plans = [
        (
            w.name,
            await make_plan(
                settings.for_workspace(w),
                probe=probe,
                now=now,
                key=keys[w.name],
                users=listed[w.name],
                catch_up=catch_up,
            ),
        )
        for w in workspaces
    ]
    return JobPlan(tuple(plans))


def _local(when: dt.datetime) -> str:
    """A window bound in its own zone, to the millisecond, without the offset."""
    return when.replace(tzinfo=None).isoformat(sep=" ", timespec="milliseconds")


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _seconds(value: float) -> str:
    if value < 90:
        return f"{value:.1f} s"
    minutes, seconds = divmod(round(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def _estimate(
    spec: QuerySpec,
    *,
    pages: int | None = None,
    records: int | None = None,
    error: str | None = None,
) -> QueryEstimate:
    """``spec``'s estimate: ``pages`` known from page 1, or guessed as users / page size."""
    exact = pages is not None
    if pages is None:
        pages = math.ceil(len(spec.user_ids) / spec.page_size)
    return QueryEstimate(
        key=spec.key,
        type=spec.type,
        window_start=spec.start,
        window_end=spec.end,
        users=len(spec.user_ids),
        pages=max(pages, 1),  # an empty result is still one request
        exact=exact,
        records=records,
        probe_error=error,
    )


async def _probe(client: Client, spec: QuerySpec) -> QueryEstimate:
    """Page 1 of ``spec``, once; its meta gives the pages. Only fatal errors are raised."""
    try:
        page = await client.fetch_page(spec, 1)
    except (AuthError, ConnectError, ConfigError):
        raise
    except FetcherError as exc:
        log.warning("plan.probe_failed", query=spec.key, error=str(exc))
        return _estimate(spec, error=str(exc))
    total = page.meta.pages_for(spec.page_size) if page.meta is not None else None
    if total is None and len(page.records) < spec.page_size:
        total = 1  # no meta, but a short page 1 is the last one
    if total is None:
        return _estimate(spec)
    records = page.meta.total_items if page.meta is not None else len(page.records)
    return _estimate(spec, pages=total, records=records)


async def _probe_all(client: Client, specs: list[QuerySpec]) -> list[QueryEstimate]:
    """Probe every query with a pool of ``client.concurrency`` workers; stop on a fatal error."""
    results: dict[str, QueryEstimate] = {}
    pending = iter(specs)
    fatal: list[FetcherError] = []

    async def worker(scope: anyio.CancelScope) -> None:
        for spec in pending:  # one shared iterator: each query is taken once
            try:
                results[spec.key] = await _probe(client, spec)
            except FetcherError as exc:
                fatal.append(exc)
                scope.cancel()
                return

    async with anyio.create_task_group() as tg:
        for _ in range(min(client.concurrency, len(specs))):
            tg.start_soon(worker, tg.cancel_scope)
    if fatal:
        raise fatal[0]
    return [results[spec.key] for spec in specs]


async def make_plan(
    settings: ExportSettings,
    *,
    probe: bool = True,
    now: dt.datetime | None = None,
    key: SecretStr | None = None,
    users: list[str] | None = None,
    catch_up: CatchUp | None = None,
) -> RunPlan:
    """Resolve the settings into queries and estimate the export's pages and time.

    Args:
        settings: the export's settings (the output is not touched).
        probe: fetch page 1 of each query (once, never retried) for exact sizes.
        now: the moment relative windows are evaluated at (default: now).
        key: the API key, if the caller resolved it (default: the settings').
        users: the users, if the caller has them (a workspace's team, listed once).
        catch_up: where ``catch_up = true`` starts (default: the state file's ledger).

    Raises:
        ConfigError: invalid settings, found before any request.
        AuthError: the key was refused.
        ConnectError: the API cannot be reached.
        FetcherError: the team member list could not be fetched.
    """
    listed = preflight(settings, now=now)  # what needs no request fails before any
    if users is not None:
        listed = {None: users}
    notes: list[str] = []
    if not probe and None not in listed.values():
        run = await resolve_run(settings, listed, now=now, catch_up=catch_up)
        estimated = [_estimate(spec) for spec in run.specs]
        return _plan(settings, run.specs, estimated, run.users, after=run.after, notes=notes)
    # The team list is retried like in an export (open_api's default policy);
    # probes are not (see below).
    async with open_api(settings, key=key) as api:
        run = await resolve_run(
            settings, listed, clients={None: api.client}, now=now, catch_up=catch_up
        )
        specs, users, after = run.specs, run.users, run.after
        if probe:
            # One request per query, never more: a probe that fails is estimated instead.
            api.client.retry = RetryPolicy(attempts=1, max_retry_after_s=settings.max_retry_after)
            estimates = await _probe_all(api.client, specs)
        else:
            estimates = [_estimate(spec) for spec in specs]
        failed = sum(q.probe_error is not None for q in estimates)
        if failed:
            notes.append(f"{failed} probe(s) failed; those queries are estimated")
        return _plan(
            settings,
            specs,
            estimates,
            users,
            api=api,
            probed=probe,
            after=after,
            notes=notes,
        )


def _plan(
    settings: ExportSettings,
    specs: list[QuerySpec],
    estimates: list[QueryEstimate],
    users: list[str],
    *,
    api: ApiSession | None = None,
    probed: bool = False,
    after: dt.datetime | None = None,
    notes: list[str],
) -> RunPlan:
    observed = api.transport.observed if api is not None and api.transport else []
    sent = api.transport.sent if api is not None and api.transport else 0
    window = (min(s.start for s in specs), max(s.end for s in specs)) if specs else None
    if not specs:
        notes.append("nothing to fetch: up to date")
    ok = [o.elapsed_s for o in observed if 200 <= o.status < 300]
    return RunPlan(
        base_url=settings.base_url,
        queries=tuple(estimates),
        window=window,
        slice_unit=settings.slice,
        timezone=settings.timezone,
        types=tuple(settings.type),
        users=len(users),
        batch_size=settings.user_batch_size,
        team_list=settings.needs_team_list,
        probed=probed,
        requests_sent=sent,
        rate=settings.rate,
        concurrency=settings.concurrency,
        server_limit=_server_limit(observed),
        latency_s=statistics.median(ok) if ok else None,
        catch_up_after=after,
        notes=tuple(notes),
    )


def _server_limit(observed: list[Observed]) -> ServerLimit | None:
    """The advertised limit, and its window: the longest time-to-reset seen.

    The headers give the limit and the time until the current window resets,
    not the window's length; the first response of a window sees nearly all of
    it, so the longest time-to-reset seen is the best estimate (rounded up to
    a tenth of a second: resets are sent with millisecond slack).
    """
    limits = [o.limit for o in observed if o.limit]
    resets = [o.reset_in_s for o in observed if o.reset_in_s is not None and o.reset_in_s > 0]
    if not limits or not resets:
        return None
    return ServerLimit(limit=limits[-1], window_s=math.ceil(max(resets) * 10) / 10)
