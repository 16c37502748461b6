"""Moving bytes: the only module that imports aiohttp.

The client holds the policy (auth, retries, limits, parsing); a transport only
sends one :class:`Request` and returns one :class:`Response`. That split keeps
most tests free of sockets (:class:`MockTransport`) and keeps aiohttp's
exceptions from leaking: :func:`map_aiohttp_errors` turns each into the most
specific :class:`~fetcher.errors.TransportError`, chained to the original.

Redirects are never followed: a 3xx is returned to the client, which reports
it, so the API key is never replayed to a host the user did not name.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol, Self

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from fetcher import defaults
from fetcher.errors import (
    ConfigError,
    ConnectError,
    ConnectionLostError,
    PageRef,
    RequestTimeoutError,
    ResponseTooLargeError,
    TLSError,
    TransportError,
)

__all__ = [
    "AiohttpTransport",
    "MockTransport",
    "Request",
    "Response",
    "Transport",
    "map_aiohttp_errors",
    "tls_context",
]

#: Default cap on one response body; a team-stats page of 1,000 rows is ~0.5 MB.
DEFAULT_MAX_BODY_BYTES: Final = defaults.MAX_BODY_BYTES


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request, fully formed by the client.

    Attributes:
        method: ``"POST"`` or ``"GET"``.
        url: the absolute URL.
        headers: request headers, the API key among them.
        content: the encoded body.
        page: which page this is for, so transport errors can name it.
        timeout: seconds for this request; the transport's default when ``None``.
    """

    method: str
    url: str
    headers: Mapping[str, str]
    content: bytes = b""
    page: PageRef | None = None
    timeout: float | None = None

    def __repr__(self) -> str:
        # Headers hold the API key: never show them.
        return f"Request({self.method} {self.url}, page={self.page})"


@dataclass(frozen=True, slots=True)
class Response:
    """One HTTP response: status, case-insensitive headers and the whole body."""

    status: int
    headers: Mapping[str, str] = field(default_factory=CIMultiDict)
    content: bytes = b""


class Transport(Protocol):
    """Sends a request and returns the response, or raises a TransportError."""

    async def send(self, request: Request) -> Response:
        """Send ``request`` and return its complete response.

        Raises:
            TransportError: when no usable response arrived.
        """
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


@contextlib.contextmanager
def map_aiohttp_errors(page: PageRef | None = None) -> Iterator[None]:
    """Translate aiohttp and socket exceptions into fetcher's TransportErrors.

    Args:
        page: the page the request was for, attached to the error.
    """
    try:
        yield
    except (aiohttp.ClientSSLError, ssl.SSLError) as exc:
        raise TLSError(
            f"TLS failed: {exc}. Check the host name and, for a private CA, the CA bundle setting",
            page=page,
        ) from exc
    except aiohttp.ClientConnectorError as exc:
        reason = exc.os_error.strerror or (
            os.strerror(exc.os_error.errno) if exc.os_error.errno else str(exc)
        )
        raise ConnectError(
            f"cannot connect to {exc.host}:{exc.port} ({reason}); check --base-url and the network",
            page=page,
        ) from exc
    except TimeoutError as exc:
        raise RequestTimeoutError("no response within the timeout", page=page) from exc
    except aiohttp.InvalidURL as exc:
        raise ConfigError(f"invalid URL {exc}", field="base_url") from exc
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
        raise ConnectionLostError(f"connection lost mid-response ({exc})", page=page) from exc
    except aiohttp.ClientError as exc:
        raise ConnectionLostError(f"{type(exc).__name__}: {exc}", page=page) from exc
    except ConnectionError as exc:
        raise ConnectionLostError(f"connection error: {exc}", page=page) from exc


def tls_context(ca_bundle: str | os.PathLike[str] | None) -> ssl.SSLContext | None:
    """Verification stays on; with a CA bundle, trust exactly the certificates in it.

    Raises:
        ConfigError: the bundle cannot be read or is not a certificate file.
    """
    if ca_bundle is None:
        return None
    try:
        return ssl.create_default_context(cafile=os.fspath(ca_bundle))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot use CA bundle {ca_bundle}: {exc}", field="ca_bundle") from None


class AiohttpTransport:
    """The production transport: one pooled :class:`aiohttp.ClientSession`.

    Args:
        timeout: seconds for one whole request (connect, send, read).
        max_connections: size of the connection pool.
        max_body_bytes: a larger response body is refused, not buffered.
        ssl_context: TLS settings; the default verifies certificates.
    """

    def __init__(
        self,
        *,
        timeout: float = defaults.TIMEOUT_S,
        max_connections: int = 100,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_connections = max_connections
        self._max_body_bytes = max_body_bytes
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def for_client(
        cls,
        *,
        timeout: float,
        concurrency: int,
        max_in_flight: int | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        ca_bundle: str | os.PathLike[str] | None = None,
    ) -> AiohttpTransport:
        """The transport a client with ``concurrency`` requests in flight uses by default.

        The pool holds twice as many connections as requests in flight, as the
        runner has twice as many workers (see :mod:`fetcher.run.pool`), and at
        least ``max_in_flight``, the most the limiter may raise the requests in
        flight to.
        """
        return cls(
            timeout=timeout,
            max_connections=max(max(concurrency, 1) * 2, max_in_flight or 0),
            max_body_bytes=max_body_bytes,
            ssl_context=tls_context(ca_bundle),
        )

    def _get_session(self) -> aiohttp.ClientSession:
        # Created on first use so that it binds to the running event loop.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._max_connections, ssl=self._ssl)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                auto_decompress=True,
                trust_env=False,
            )
        return self._session

    async def send(self, request: Request) -> Response:
        """Send one request; see :meth:`Transport.send`."""
        session = self._get_session()
        with map_aiohttp_errors(request.page):
            async with session.request(
                request.method,
                request.url,
                data=request.content or None,
                headers=dict(request.headers),
                allow_redirects=False,
                timeout=(
                    self._timeout
                    if request.timeout is None
                    else aiohttp.ClientTimeout(total=request.timeout)
                ),
            ) as resp:
                declared = resp.content_length
                if declared is not None and declared > self._max_body_bytes:
                    raise _too_large(declared, self._max_body_bytes, request.page)
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    size += len(chunk)
                    if size > self._max_body_bytes:
                        raise _too_large(size, self._max_body_bytes, request.page)
                    chunks.append(chunk)
                return Response(
                    status=resp.status,
                    headers=CIMultiDictProxy(CIMultiDict(resp.headers)),
                    content=b"".join(chunks),
                )

    async def aclose(self) -> None:
        """Close the session and its connections."""
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _too_large(size: int, cap: int, page: PageRef | None) -> TransportError:
    return ResponseTooLargeError(
        f"response body of at least {size:,} bytes exceeds the {cap:,}-byte cap "
        "(max_body_bytes); refusing to buffer it",
        page=page,
    )


Handler = Callable[[Request], Awaitable[Response] | Response]


class MockTransport:
    """A transport that answers from a function, for tests without sockets.

    Args:
        handler: called with each request; returns a :class:`Response` (or an
            awaitable of one) or raises a :class:`~fetcher.errors.FetcherError`.
    """

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.requests: list[Request] = []

    async def send(self, request: Request) -> Response:
        """Record the request and answer it with the handler."""
        self.requests.append(request)
        result = self._handler(request)
        if isinstance(result, Response):
            return result
        return await result

    async def aclose(self) -> None:
        """Nothing to release."""
