"""The page client: one page in, one :class:`~fetcher.models.Page` out.

:meth:`PageClient.fetch_page` is the whole life of one page: a turn from the
limiter, the transport, the status check, the parse, and the retry policy
around all of it. Every page of a query is the run's business: the library's
:class:`fetcher.Client` (:mod:`fetcher.run.client`) adds ``pages()``.

The API key is held as a :class:`pydantic.SecretStr`; it goes into the
``x-api-key`` header and nowhere else, and is scrubbed from any response text
quoted in an error.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import replace
from typing import Any, Final, Self

import anyio
import orjson
import structlog
from anyio.abc import TaskGroup
from pydantic import SecretStr

from fetcher import defaults
from fetcher._version import __version__
from fetcher.errors import (
    REDACTED,
    APIError,
    AuthError,
    ConfigError,
    FetcherError,
    PageRef,
    RateLimitedError,
    RequestRejectedError,
    RequestTimeoutError,
    ServerError,
    ShapeError,
)
from fetcher.http.defaults import (
    DEFAULT_BASE_URL,
    DEFAULT_CONCURRENCY,
    MAX_DEFAULT_CONCURRENCY,
    TEAM_MEMBERS_PATH,
    TEAM_STATS_PATH,
    default_concurrency,
    max_auto_in_flight,
)
from fetcher.http.limiter import Limiter, Rate
from fetcher.http.retry import RetryPolicy, parse_retry_after
from fetcher.http.shared import SharedWindow, shared_key
from fetcher.http.timeouts import AdaptiveTimeout
from fetcher.http.transport import (
    DEFAULT_MAX_BODY_BYTES,
    AiohttpTransport,
    Request,
    Response,
    Transport,
)
from fetcher.models import Page, ResponseShape, TeamMember, parse_page, parse_team_members
from fetcher.spec import QuerySpec

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_CONCURRENCY",
    "MAX_DEFAULT_CONCURRENCY",
    "TEAM_MEMBERS_PATH",
    "TEAM_STATS_PATH",
    "PageClient",
    "default_concurrency",
]

_USER_AGENT: Final = f"fetcher/{__version__}"

log = structlog.get_logger("fetcher.http.client")


def _snippet(content: bytes, secret: str, limit: int = 300) -> str:
    text = content[:limit].decode("utf-8", errors="replace")
    if secret:
        text = text.replace(secret, REDACTED)
    return text


def _api_message(content: bytes) -> str:
    """The ``message`` of an error body, whatever its shape."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return ""
    if isinstance(body, dict):
        message = body.get("message", "")
        if isinstance(message, list):
            return "; ".join(map(str, message))
        return str(message)
    return ""


class PageClient:
    """An async client for the team-stats endpoint: one page in, one :class:`Page` out.

    The library's :class:`fetcher.Client` is this plus ``pages()`` (in
    :mod:`fetcher.run.client`), which runs every page of a query.

    Args:
        api_key: the Saleshandy Open API key (``x-api-key``).
        base_url: the API's base URL; the simulator's for tests and demos.
        concurrency: pages fetched at once per run (and requests in flight);
            by default :func:`default_concurrency` of ``rate_limit``, which the
            limiter may raise (see :func:`max_auto_in_flight`) when the server's
            rate-limit headers advertise a window that allows more in one second.
        rate_limit: a ceiling such as ``"30/min"``; the limiter also follows
            the server's rate-limit headers and refusals.
        timeout: seconds for one request.
        retry: the retry policy; see :class:`~fetcher.http.retry.RetryPolicy`.
        shape: where the records are in a response; detected by default.
        transport: how requests are sent; aiohttp by default.
        limiter: share one limiter between clients; built from the above by default.
        ca_bundle: a CA certificate file to trust (a private CA); certificates
            are always verified.
        max_body_bytes: a larger response body is refused, not buffered.
        shared_limiter: ``redis://HOST:PORT/DB``: share one window budget with
            every process using this key against this host (see
            :mod:`fetcher.http.shared`); Redis must be reachable on entry.

    Raises:
        ConfigError: for a missing key or a malformed setting.
    """

    def __init__(
        self,
        *,
        api_key: str | SecretStr,
        base_url: str = DEFAULT_BASE_URL,
        concurrency: int | None = None,
        rate_limit: Rate | str | None = None,
        timeout: float = defaults.TIMEOUT_S,
        retry: RetryPolicy | None = None,
        shape: ResponseShape | None = None,
        transport: Transport | None = None,
        limiter: Limiter | None = None,
        ca_bundle: str | os.PathLike[str] | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        shared_limiter: str | None = None,
    ) -> None:
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        if not key or not key.strip():
            raise ConfigError(
                "no API key; set SALESHANDY_API_KEY or pass --api-key-file", field="api_key"
            )
        if isinstance(rate_limit, str):
            try:
                rate_limit = Rate.parse(rate_limit)
            except ValueError as exc:
                raise ConfigError(str(exc), field="rate_limit") from None
        # Not fixed by the caller (a configured rate fixes it too): the limiter may
        # raise it when the server's window allows (see max_auto_in_flight).
        auto = concurrency is None and rate_limit is None
        if concurrency is None:
            concurrency = default_concurrency(rate_limit)
        elif concurrency < 1:
            raise ConfigError("must be at least 1", field="concurrency")
        self._api_key = SecretStr(key.strip())
        self.base_url = base_url.rstrip("/")
        self.concurrency = concurrency
        self.retry = retry or RetryPolicy()
        self.shape = shape or ResponseShape()
        shared = (
            None
            if shared_limiter is None
            else SharedWindow(shared_limiter, shared_key(key.strip(), self.base_url))
        )
        self.limiter = limiter or Limiter(
            rate=rate_limit,
            max_in_flight=concurrency,
            max_auto_in_flight=max_auto_in_flight(concurrency) if auto else None,
            max_pause_s=self.retry.max_retry_after_s,
            shared=shared,
        )
        self.timeouts = AdaptiveTimeout(timeout)
        self._transport: Transport = transport or AiohttpTransport.for_client(
            timeout=timeout,
            concurrency=concurrency,
            max_in_flight=self.limiter.max_auto_in_flight,
            max_body_bytes=max_body_bytes,
            ca_bundle=ca_bundle,
        )
        self._rng = random.Random()  # noqa: S311  (backoff jitter)
        self._task_group: TaskGroup | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, concurrency={self.concurrency})"

    @property
    def max_in_flight(self) -> int:
        """The most in flight: ``concurrency``, or what the server's window raises it to."""
        return self.limiter.max_auto_in_flight

    async def __aenter__(self) -> Self:
        if self.limiter.shared is not None:
            await self.limiter.shared.connect()
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        task_group, self._task_group = self._task_group, None
        try:
            if task_group is not None:
                # Streams the caller abandoned are cancelled with the client. The
                # caller's own exception is not handed to the task group (it would
                # come back wrapped in an ExceptionGroup); it propagates unchanged.
                task_group.cancel_scope.cancel()
                await task_group.__aexit__(None, None, None)
        finally:
            await self._transport.aclose()
            await self.limiter.aclose()

    # -- one page ---------------------------------------------------------

    def _headers(self, **extra: str) -> dict[str, str]:
        """Every request's headers (the key only here, at the last moment), plus ``extra``."""
        return {
            "x-api-key": self._api_key.get_secret_value(),
            "accept": "application/json",
            "user-agent": _USER_AGENT,
            **extra,
        }

    def _request(self, spec: QuerySpec, number: int) -> Request:
        return Request(
            method="POST",
            url=self.base_url + TEAM_STATS_PATH,
            headers=self._headers(**{"content-type": "application/json"}),
            content=orjson.dumps(spec.body(number)),
            page=PageRef(spec.key, number),
        )

    def check_response(self, response: Response, ref: PageRef) -> None:
        """Raise the error class a non-2xx response stands for.

        Raises:
            AuthError: the key was refused (400 "Invalid token", 401, 403).
            RateLimitedError: 429, or a 400 whose message says "Rate Limit".
            ServerError: 5xx or 408.
            RequestRejectedError: any other non-2xx, including a redirect.
        """
        status = response.status
        if 200 <= status < 300:
            return
        secret = self._api_key.get_secret_value()
        message = _api_message(response.content).replace(secret, REDACTED)
        body = _snippet(response.content, secret)
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        said = f": {message}" if message else ""
        kwargs: dict[str, Any] = {
            "status": status,
            "page": ref,
            "retry_after": retry_after,
            "body": body,
        }
        lowered = message.lower()
        if status in (401, 403) or (status == 400 and _is_auth_body(response.content, lowered)):
            raise AuthError(
                f"the API refused the key (HTTP {status}{said}); check SALESHANDY_API_KEY "
                "or the key file, and that --base-url is the right API",
                **kwargs,
            )
        if status == 429 or (status == 400 and "rate limit" in lowered):
            raise RateLimitedError(f"rate limited (HTTP {status}{said})", **kwargs)
        if status >= 500 or status == 408:
            raise ServerError(f"server error (HTTP {status}{said})", **kwargs)
        if 300 <= status < 400:
            location = response.headers.get("location", "?")
            raise RequestRejectedError(
                f"redirected (HTTP {status}) to {location}; fetcher does not follow redirects "
                "with the API key. Set --base-url to the final address",
                **kwargs,
            )
        raise RequestRejectedError(f"request rejected (HTTP {status}{said})", **kwargs)

    async def fetch_page(self, spec: QuerySpec, number: int) -> Page:
        """Fetch and parse one page, retrying as the retry policy says.

        Args:
            spec: the query.
            number: 1-based page number.

        Raises:
            FetcherError: the last error once the page has run out of attempts,
                or at once for an error that is not retried (e.g. AuthError).
        """
        request = self._request(spec, number)
        ref = request.page
        assert ref is not None
        started = time.monotonic()
        attempts = 0
        timeouts = 0

        def on_retry(attempt: int, exc: BaseException, wait: float) -> None:
            # A probe of the window's end refused is the limiter's own doing.
            probe = isinstance(exc, RateLimitedError) and exc.probe
            (log.debug if probe else log.warning)(
                "page.retry",
                query=ref.query,
                page=ref.page,
                attempt=attempt,
                reason=_reason(exc),
                wait_s=round(wait, 3),
            )

        try:
            async for attempt in self.retry.retrying(rng=self._rng, on_retry=on_retry):
                with attempt:
                    attempts += 1
                    try:
                        page = await self._attempt(request, spec, number, ref, timeouts)
                    except RequestTimeoutError:
                        timeouts += 1
                        raise
        except FetcherError as exc:
            exc.attempts = attempts
            if isinstance(exc, APIError) and self.retry.asks_too_long(exc):
                too_long = type(exc)(
                    f"{exc.message}; the server asked to wait {exc.retry_after:,.0f} s "
                    f"(Retry-After), more than max_retry_after_s ({self.retry.max_retry_after_s:g}"
                    " s): giving up on this page instead of waiting",
                    status=exc.status,
                    page=exc.page,
                    retry_after=exc.retry_after,
                    body=exc.body,
                )
                too_long.attempts = attempts
                raise too_long from exc
            raise
        return replace(page, attempts=attempts, elapsed_s=time.monotonic() - started)

    async def _attempt(
        self, request: Request, spec: QuerySpec, number: int, ref: PageRef, timeouts: int
    ) -> Page:
        request = replace(request, timeout=self.timeouts.for_attempt(timeouts))
        response = await self._send(request, ref)
        return parse_page(response.content, query=spec, number=number, shape=self.shape)

    async def _send(self, request: Request, ref: PageRef, *, page: bool = True) -> Response:
        """One request through the limiter; what it says feeds the limiter and timeouts.

        Args:
            request: what to send.
            ref: the page it is for, for errors and logs.
            page: a team-stats page (``False``: the team member list, a key probe).

        Raises:
            FetcherError: the status's error class (see :meth:`check_response`).
        """
        async with self.limiter.slot(page=page) as ticket:
            sent = time.monotonic()
            response = await self._transport.send(request)
            self.timeouts.observe(time.monotonic() - sent)
            try:
                self.check_response(response, ref)
            except RateLimitedError as exc:
                self.limiter.refused(exc.retry_after, response.headers, ticket)
                exc.probe = ticket.probe
                raise
            except FetcherError:
                self.limiter.observe(response.status, response.headers, ticket)
                raise
            self.limiter.observe(response.status, response.headers, ticket)
        return response

    async def team_members(self) -> list[TeamMember]:
        """Every member of the team, from ``GET /v1/user/team-member-list``.

        The response shape is undocumented; entries that cannot be understood
        are skipped and logged once, with what they held.

        Raises:
            FetcherError: when the list cannot be fetched or holds no members.
        """
        request = Request(
            method="GET",
            url=self.base_url + TEAM_MEMBERS_PATH,
            headers=self._headers(),
            page=PageRef("team-member-list", 1),
        )
        ref = request.page
        assert ref is not None
        async for attempt in self.retry.retrying(rng=self._rng):
            with attempt:
                response = await self._send(request, ref, page=False)
                members, problems = parse_team_members(response.content)
        if problems:
            log.warning(
                "team.entries_skipped",
                skipped=len(problems),
                understood=len(members),
                examples=problems[:3],
            )
        if not members:
            raise ShapeError(
                "the team member list holds no member ids fetcher understands; "
                "pass --users or --users-file instead",
                page=ref,
            )
        return members


def _is_auth_body(content: bytes, lowered_message: str) -> bool:
    if "invalid token" in lowered_message or "unauthori" in lowered_message:
        return True
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return False
    return isinstance(body, dict) and body.get("type") == "auth"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, APIError):
        return f"HTTP {exc.status}"
    return type(exc).__name__
