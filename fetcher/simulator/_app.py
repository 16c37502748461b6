"""The aiohttp application: routes, the per-request pipeline, and :func:`serve`.

Each API request goes through the same steps, in the order the real backend
applies them: auth, rate limit, validation, fault injection, latency, answer.
The pipeline first *decides* the reply (cheap, synchronous), then waits out the
latency, then sends it, so a benchmark's CPU cost per page is a dict lookup, a
slice and a join. With ``rate_count_on="answer"`` the rate limit's hit is counted
at the send, after the latency.

With ``foreign_share`` set, a background task spends that share of the first key's
budget for the life of the app (see :meth:`_Simulator.foreign_client`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from aiohttp import web

from fetcher.simulator._config import FaultKind, SimulatorConfig
from fetcher.simulator._faults import choose_fault
from fetcher.simulator._ratelimit import Decision, RateLimiter
from fetcher.simulator._report import ReportEngine, Result
from fetcher.simulator._stats import EventKind, RequestEvent, SimulatorStats
from fetcher.simulator._team import Member, build_team, stable_unit
from fetcher.simulator._validation import (
    InvalidBodyError,
    Query,
    check_page,
    is_int,
    parse_body,
)

__all__ = [
    "STATS_PATH",
    "TEAM_MEMBERS_PATH",
    "TEAM_STATS_PATH",
    "RunningSimulator",
    "create_app",
    "serve",
]

TEAM_STATS_PATH: Final = "/v1/analytics/team/stats"
TEAM_MEMBERS_PATH: Final = "/v1/user/team-member-list"
STATS_PATH: Final = "/_simulator/stats"
RESET_PATH: Final = "/_simulator/reset"

_API_KEY_HEADER: Final = "x-api-key"
_STATS_MESSAGE: Final = "Team stats fetched successfully"
_MEMBERS_MESSAGE: Final = "Team members fetched successfully"
_AUTH_BODY: Final = orjson.dumps({"type": "auth", "message": "Invalid token"})
_THROTTLED_BODY: Final = orjson.dumps({"message": "ThrottlerException: Too Many Requests"})
_RATE_LIMIT_400_BODY: Final = orjson.dumps(
    {"message": "Rate Limit exceeded, please try again later"}
)
_SERVER_ERROR_BODY: Final = orjson.dumps(
    {"message": "5001: Internal server error, please try again later"}
)
_GATEWAY_REASONS: Final = {
    502: "Bad Gateway",
    503: "Service Temporarily Unavailable",
    504: "Gateway Time-out",
}
# Cached validated queries (by query key); a benchmark's many pages share one entry.
_QUERY_CACHE_SIZE: Final = 1024
# A stalled handler is woken at shutdown; this only bounds a handler that ignores that.
_SHUTDOWN_TIMEOUT_S: Final = 5.0
_JSON: Final = "application/json"


def _gateway_page(status: int) -> bytes:
    title = f"{status} {_GATEWAY_REASONS[status]}"
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    ).encode()


@dataclass(slots=True)
class _Reply:
    """A decided answer; ``status=None`` means: drop the connection instead."""

    status: int | None
    body: bytes = b""
    content_type: str = _JSON
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class _Trace:
    """What is known about a request so far, for its :class:`RequestEvent`."""

    kind: EventKind = "ok"
    page: int | None = None
    query: str | None = None
    status: int | None = None
    success: bool = False
    # The rate limit's decision and the key it was for; the send reports the answer.
    decision: Decision | None = None
    api_key: str = ""


def _query_key(body: dict[str, Any]) -> str:
    """A short hash of the body without ``page``: one key per query, shared by its pages."""
    rest = {key: value for key, value in body.items() if key != "page"}
    canonical = orjson.dumps(rest, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(canonical, digest_size=6).hexdigest()


def _drop_connection(request: web.BaseRequest) -> web.Response:
    # Abort without a byte of response: the client sees a connection error, never a status.
    # aiohttp then fails to write the returned placeholder and treats it as a client
    # disconnect, which it ignores silently.
    transport = request.transport
    if transport is not None:
        transport.abort()
    return web.Response()


class _Simulator:
    """State and handlers of one simulated server."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.team = build_team(config.seed, config.team_size)
        self.limiter = RateLimiter.from_config(config) if config.rate_limit is not None else None
        self.stats = SimulatorStats(rate=self.limiter)
        self.engine = ReportEngine(
            config.seed,
            self.team,
            string_counts=config.string_counts,
            hidden_users=config.hidden_users,
            drop_fields=config.drop_fields,
            extra_fields=config.extra_fields,
        )
        if config.warm:
            self.engine.warm(member.user_id for member in self.team)
        # Requests served per query, the clock of the drift switch.
        self._query_ticks: Counter[str] = Counter()
        self.closing = asyncio.Event()
        self._keys = frozenset(config.api_keys)
        self._queries: OrderedDict[str, Query] = OrderedDict()
        self._served: Counter[tuple[str, int]] = Counter()
        self._sequence = 0
        self._members_body = orjson.dumps(
            {
                "message": _MEMBERS_MESSAGE,
                "payload": [
                    {
                        "id": m.user_id,
                        "firstName": m.first_name,
                        "lastName": m.last_name,
                        "email": m.email,
                        "role": "member",
                    }
                    for m in self.team
                ],
            }
        )

    def reset(self) -> None:
        """Zero the stats, the fault attempt counters and the rate-limit windows.

        The foreign client keeps running: it is another tool, not this server's state.
        """
        self.stats.reset()
        self._served.clear()
        self._query_ticks.clear()
        if self.limiter is not None:
            self.limiter.reset()

    # -- handlers ------------------------------------------------------------------------------

    async def team_stats(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/analytics/team/stats``."""
        return await self._tracked(request, self._team_stats)

    async def team_members(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/user/team-member-list``."""
        return await self._tracked(request, self._team_members)

    async def stats_snapshot(self, request: web.Request) -> web.StreamResponse:
        """``GET /_simulator/stats`` (``?events=1`` lists every event too)."""
        include_events = request.query.get("events", "") not in ("", "0", "false")
        body = orjson.dumps(self.stats.snapshot(include_events=include_events))
        return web.Response(body=body, content_type=_JSON)

    async def stats_reset(self, request: web.Request) -> web.StreamResponse:
        """``POST /_simulator/reset``."""
        del request
        self.reset()
        return web.Response(body=b'{"message":"reset"}', content_type=_JSON)

    async def on_shutdown(self, app: web.Application) -> None:
        """Wake every stalled or delayed handler so shutdown does not wait for them."""
        del app
        self.closing.set()

    async def foreign_client(self, app: web.Application) -> AsyncIterator[None]:
        """A cleanup context: run the foreign client (if configured) while the app runs.

        aiohttp owns the event loop of the app, so its cleanup context is the structured
        lifetime here: the task starts with the app and is cancelled and awaited when
        the app is cleaned up (it also stops by itself at shutdown, see ``_pause``).
        """
        del app
        if self.config.foreign_share <= 0 or self.limiter is None:
            yield
            return
        task = asyncio.create_task(self._spend_foreign_share(self.limiter))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _spend_foreign_share(self, limiter: RateLimiter) -> None:
        """Hit the first key's limit ``share * limit`` times per window, evenly spaced.

        Each hit is answered at once (checked and counted in one step, whatever
        ``rate_count_on`` says). The next hit is due one interval after this one
        *was made*, never earlier, so hits are at least W / (share * limit) apart and
        no span of W ever holds more than ``ceil(share * limit)`` of them: a late
        timer makes the foreign client spend a little less, never more.
        """
        config = self.config
        assert config.rate_limit is not None  # checked by SimulatorConfig
        interval = config.rate_window_s / (config.foreign_share * config.rate_limit)
        key = config.api_keys[0]
        while True:
            decision = limiter.hit(key)
            self.stats.rate_decided(allowed=decision.allowed, foreign=True)
            # Read after the hit, so due is at least one interval past the limiter's reading.
            due = time.monotonic() + interval
            # The event loop may wake a timer a hair early; wait out the rest.
            while (left := due - time.monotonic()) > 0:
                if not await self._pause(left):
                    return

    # -- pipeline ------------------------------------------------------------------------------

    async def _tracked(
        self,
        request: web.Request,
        decide: Callable[[web.Request, _Trace], Awaitable[_Reply]],
    ) -> web.StreamResponse:
        arrival = time.monotonic()
        self.stats.started()
        trace = _Trace()
        # The finally runs on cancellation too (client gone, handler_cancellation on).
        try:
            reply = await decide(request, trace)
            return await self._send(request, trace, reply)
        finally:
            event = RequestEvent(arrival, trace.page, trace.status, trace.kind, trace.query)
            self.stats.finished(event, success=trace.success)

    def _authorize(self, request: web.Request) -> bool:
        return request.headers.get(_API_KEY_HEADER) in self._keys

    def _limit(self, request: web.Request, trace: _Trace) -> tuple[Decision | None, dict[str, str]]:
        if self.limiter is None:
            return None, {}
        trace.api_key = request.headers[_API_KEY_HEADER]
        decision = trace.decision = self.limiter.check(trace.api_key)
        self.stats.rate_decided(allowed=decision.allowed)
        return decision, decision.headers(self.config.reset_format)

    def _throttled(self, decision: Decision, headers: dict[str, str]) -> _Reply:
        if self.config.rate_retry_after:
            headers["retry-after"] = str(decision.retry_after)
        if self.config.rate_limit_status == 429:
            return _Reply(429, _THROTTLED_BODY, headers=headers)
        return _Reply(400, _RATE_LIMIT_400_BODY, headers=headers)

    async def _team_members(self, request: web.Request, trace: _Trace) -> _Reply:
        if not self._authorize(request):
            trace.kind = "auth"
            return _Reply(400, _AUTH_BODY)
        decision, headers = self._limit(request, trace)
        if decision is not None and not decision.allowed:
            trace.kind = "rate_limited"
            return self._throttled(decision, headers)
        return _Reply(200, self._members_body, headers=headers)

    async def _team_stats(self, request: web.Request, trace: _Trace) -> _Reply:
        if not self._authorize(request):
            trace.kind = "auth"
            return _Reply(400, _AUTH_BODY)
        raw = await request.read()
        try:
            body: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        if isinstance(body, dict):
            trace.query = _query_key(body)
            if is_int(body.get("page")):
                trace.page = body["page"]
                self.stats.page_requested(trace.query, body["page"])
        decision, headers = self._limit(request, trace)
        if decision is not None and not decision.allowed:
            trace.kind = "rate_limited"
            return self._throttled(decision, headers)
        try:
            query, page = self._validate(body, trace.query)
        except InvalidBodyError as exc:
            trace.kind = "invalid"
            problem = {"statusCode": 400, "message": str(exc), "error": "Bad Request"}
            return _Reply(400, orjson.dumps(problem), headers=headers)
        assert trace.query is not None  # a valid body is a JSON object
        attempt = self._served[(trace.query, page)]
        self._served[(trace.query, page)] = attempt + 1
        fault = choose_fault(self.config, trace.query, page, attempt)
        if self.config.drift > 0:
            tick = self._query_ticks[trace.query]
            self._query_ticks[trace.query] = tick + 1
            result = self.engine.drifted(query, self.config.drift, tick)
        else:
            result = self.engine.result(query)
        page_body = self._render(query, page, result)
        if fault is None:
            return _Reply(200, page_body, headers=headers)
        self.stats.fault_injected(fault)
        trace.kind = fault
        return self._fault_reply(fault, page_body, headers)

    def _validate(self, body: Any, query_key: str | None) -> tuple[Query, int]:
        if query_key is not None and "page" in body:
            cached = self._queries.get(query_key)
            if cached is not None:
                # Same body but the page: the rest was valid when cached, only page can fail.
                self._queries.move_to_end(query_key)
                return cached, check_page(body["page"])
        query, page = parse_body(body, max_page_size=self.config.max_page_size)
        if query_key is not None:
            self._queries[query_key] = query
            if len(self._queries) > _QUERY_CACHE_SIZE:
                self._queries.popitem(last=False)
        return query, page

    def _fault_reply(self, fault: FaultKind, page_body: bytes, headers: dict[str, str]) -> _Reply:
        match fault:
            case "500":
                return _Reply(500, _SERVER_ERROR_BODY, headers=headers)
            case "502" | "503" | "504":
                status = int(fault)
                return _Reply(status, _gateway_page(status), "text/html", headers)
            case "503-retry-after":
                headers["retry-after"] = "1"
                return _Reply(503, _gateway_page(503), "text/html", headers)
            case "reset":
                return _Reply(None)
            case "truncated":
                return _Reply(200, page_body[: len(page_body) // 2], headers=headers)
            case "stall":
                return _Reply(200, page_body, headers=headers)

    def _render(self, query: Query, page: int, result: Result) -> bytes:
        total = len(result.encoded) + result.hidden
        limit = query.limit
        first = (page - 1) * limit
        encoded = result.encoded[first : first + limit]
        # Rows are pre-encoded once per query; a page only joins its slice.
        rows = orjson.Fragment(b"[" + b",".join(encoded) + b"]")
        meta: dict[str, int | str] = {
            "totalItems": total,
            "itemCount": len(encoded),
            "itemsPerPage": limit,
            "totalPages": -(-total // limit),
            "currentPage": page,
        }
        if self.config.string_counts:
            meta = {key: str(value) for key, value in meta.items()}
        payload: object
        match self.config.envelope:
            case "data":
                payload = {"data": rows, "meta": meta}
            case "items":
                payload = {"items": rows, "meta": meta}
            case "array":
                payload = rows
            case "nested":
                payload = {"payload": rows, "meta": meta}
            case "named":
                payload = {"teamStats": rows, "meta": meta}
        return orjson.dumps({"message": _STATS_MESSAGE, "payload": payload})

    def _latency_s(self) -> float:
        config = self.config
        delay_ms = config.latency_ms
        if config.latency_jitter_ms > 0:
            self._sequence += 1
            delay_ms += config.latency_jitter_ms * stable_unit(
                config.seed, "jitter", self._sequence
            )
        return delay_ms / 1000.0

    async def _pause(self, seconds: float) -> bool:
        """Sleep ``seconds``; ``False`` if woken early because the server is shutting down."""
        if self.closing.is_set():
            return False
        try:
            async with asyncio.timeout(seconds):
                await self.closing.wait()
        except TimeoutError:
            return True
        return False

    async def _send(self, request: web.Request, trace: _Trace, reply: _Reply) -> web.StreamResponse:
        delay = self._latency_s()
        if trace.kind == "stall":
            delay += self.config.stall_s
        if delay > 0 and not await self._pause(delay):
            # Shutting down: drop the connection rather than hold the shutdown up.
            return _drop_connection(request)
        if reply.status is None:
            return _drop_connection(request)
        if trace.decision is not None and self.limiter is not None:
            # An answer goes out: with rate_count_on="answer" its hit counts now. A
            # request that never gets an answer (dropped, client gone) never counts.
            self.limiter.answered(trace.api_key, trace.decision)
        trace.status = reply.status
        trace.success = reply.status == 200 and trace.kind in ("ok", "stall")
        return web.Response(
            status=reply.status,
            body=reply.body,
            content_type=reply.content_type,
            headers=reply.headers,
        )


_SIMULATOR: Final = web.AppKey("fetcher.simulator", _Simulator)


def create_app(config: SimulatorConfig) -> web.Application:
    """Build the simulator's aiohttp application.

    Args:
        config: the behaviour of the simulated server.

    Returns:
        An application serving ``POST /v1/analytics/team/stats``,
        ``GET /v1/user/team-member-list``, ``GET /_simulator/stats`` and
        ``POST /_simulator/reset``.
    """
    # Member lists of 2,000+ ids are far below this; it only guards against runaway bodies.
    app = web.Application(client_max_size=16 * 1024 * 1024)
    simulator = _Simulator(config)
    app[_SIMULATOR] = simulator
    app.router.add_post(TEAM_STATS_PATH, simulator.team_stats)
    app.router.add_get(TEAM_MEMBERS_PATH, simulator.team_members)
    app.router.add_get(STATS_PATH, simulator.stats_snapshot)
    app.router.add_post(RESET_PATH, simulator.stats_reset)
    app.on_shutdown.append(simulator.on_shutdown)
    app.cleanup_ctx.append(simulator.foreign_client)
    return app


class RunningSimulator:
    """A simulator listening on a real port (yielded by :func:`serve`).

    Attributes:
        base_url: e.g. ``http://127.0.0.1:43121`` (no trailing slash).
        config: the configuration it runs with.
        team: its members.
        stats: its live counters.
    """

    def __init__(self, base_url: str, app: web.Application) -> None:
        self._simulator = app[_SIMULATOR]
        self.base_url = base_url
        self.config = self._simulator.config
        self.team: tuple[Member, ...] = self._simulator.team
        self.stats: SimulatorStats = self._simulator.stats

    def __repr__(self) -> str:
        return f"RunningSimulator(base_url={self.base_url!r}, team_size={len(self.team)})"

    @property
    def user_ids(self) -> list[str]:
        """Every member's user id, in team order."""
        return [member.user_id for member in self.team]

    @staticmethod
    def query_key(body: Mapping[str, Any]) -> str:
        """The key events and page counters use for the query of ``body`` (``page`` ignored)."""
        return _query_key(dict(body))

    def expected_rows(self, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The full sorted result of a query, as the API would page through it.

        Args:
            body: a request body (``page`` and ``limit`` are ignored and may be absent).

        Returns:
            Every matching row in served order, with integer counts even when the
            server renders them as strings; fresh dicts the caller may mutate.

        Raises:
            ValueError: if the rest of the body is invalid (the API would answer 400).
        """
        query, _ = parse_body({**body, "page": 1, "limit": 1}, max_page_size=1)
        return [dict(row) for row in self._simulator.engine.result(query).rows]

    @property
    def rate_window_phase_s(self) -> float | None:
        """Where aligned rate-limit windows start: they are ``[phase + k*W, phase + (k+1)*W)``.

        In epoch seconds modulo W (``rate_window_s``): the configured phase, or the one
        drawn from the seed. ``None`` without a rate limit or in another window mode.
        """
        limiter = self._simulator.limiter
        return limiter.phase_s if limiter is not None else None

    def reset(self) -> None:
        """Zero the stats, the fault attempt counters and the rate-limit windows.

        The foreign client, if any, keeps running.
        """
        self._simulator.reset()


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - mapping wildcard binds to a dialable address
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


@contextlib.asynccontextmanager
async def serve(
    config: SimulatorConfig, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningSimulator]:
    """Run the simulator on a real port for the duration of an ``async with`` block.

    Args:
        config: the behaviour of the simulated server.
        host: the address to bind.
        port: the port to bind; 0 picks a free one (see ``base_url``).

    Yields:
        The running simulator. On exit, requests still stalled or delayed have their
        connections dropped, so shutdown is prompt and clean.
    """
    app = create_app(config)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        # A client that gives up cancels its handler, so stalls do not pile up.
        handler_cancellation=True,
        shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = runner.addresses[0][1]
        yield RunningSimulator(f"http://{_url_host(host)}:{bound_port}", app)
    finally:
        await runner.cleanup()
