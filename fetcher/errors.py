"""Every error fetcher raises, under one root.

::

    FetcherError                      root: catch this to catch everything of ours
    ├── ConfigError                   invalid settings or query, found before any request
    ├── TransportError                no usable HTTP response arrived            (retried)
    │   ├── ConnectError              could not connect: wrong host or port, refused, DNS
    │   │   └── TLSError              the TLS handshake or certificate check failed (not retried)
    │   ├── RequestTimeoutError       the response took longer than the timeout
    │   ├── ConnectionLostError       the connection dropped before the response was complete
    │   └── ResponseTooLargeError     the body exceeded the size cap (not retried)
    ├── APIError                      the API answered with an error status
    │   ├── AuthError                 the API key was refused                    (never retried)
    │   ├── RateLimitedError          429, or a 400 whose message says "Rate Limit" (retried)
    │   ├── ServerError               5xx or 408                                 (retried)
    │   └── RequestRejectedError      any other 4xx, e.g. a validation 400       (not retried)
    ├── ResponseError                 a 2xx whose body is not a usable page
    │   ├── InvalidJSONError          not valid JSON (e.g. cut short)            (retried)
    │   └── ShapeError                valid JSON, but not a shape we recognise    (retried)
    ├── SinkError                     a sink could not write a page
    └── IncompleteRunError            the run ended with pages missing (carries the summary)

aiohttp's exceptions never leave :mod:`fetcher.http.transport`; it maps each to the
most specific class here, chaining the original (``raise ... from exc``).
Errors about one page carry a :class:`PageRef` so messages and reports can say
which page of which query failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "REDACTED",
    "APIError",
    "AuthError",
    "ConfigError",
    "ConnectError",
    "ConnectionLostError",
    "FetcherError",
    "IncompleteRunError",
    "InvalidJSONError",
    "PageRef",
    "RateLimitedError",
    "RequestRejectedError",
    "RequestTimeoutError",
    "ResponseError",
    "ResponseTooLargeError",
    "ServerError",
    "ShapeError",
    "SinkError",
    "TLSError",
    "TransportError",
]

#: What a secret (the API key, a password in a URL) is replaced with wherever it
#: could be shown: logs, error messages, reports.
REDACTED: Final = "***"


@dataclass(frozen=True, slots=True)
class PageRef:
    """Which page of which query an error or event is about."""

    query: str
    page: int

    def __str__(self) -> str:
        return f"page {self.page} of query {self.query}"


class FetcherError(Exception):
    """Root of every error fetcher raises.

    Args:
        message: what happened and, where we know it, what to do about it.
        page: the page the error is about, if any.
    """

    def __init__(self, message: str, *, page: PageRef | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.page = page
        #: requests made for the page before giving up (set by the client).
        self.attempts = 0
        #: the run's summary up to the error (a :class:`fetcher.RunSummary`), when a
        #: run was stopped by it. Typed loosely: errors sit below the run, and
        #: know nothing of it.
        self.summary: Any = None

    def __str__(self) -> str:
        if self.page is None:
            return self.message
        return f"{self.page}: {self.message}"

    @property
    def retryable(self) -> bool:
        """Whether trying the same request again may succeed."""
        return False


class ConfigError(FetcherError):
    """An invalid setting or query; raised before any request is sent.

    Args:
        message: what is wrong and how to fix it.
        field: the setting's name as the user wrote it (flag, config key), if known.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class ValueConfigError(ConfigError, ValueError):
    """A value a library class refused (a rate, a retry policy): also a ``ValueError``.

    ``Rate(0, 60)`` or ``RetryPolicy(attempts=0)`` raise it, so that every error a
    library user can get derives from :class:`FetcherError`, while code (and
    pydantic validators) that expect a ``ValueError`` keep working.
    """


class TransportError(FetcherError):
    """No usable HTTP response arrived."""

    @property
    def retryable(self) -> bool:  # noqa: D102
        return True


class ConnectError(TransportError):
    """Could not connect to the API host (wrong host or port, refused, DNS)."""


class TLSError(ConnectError):
    """The TLS handshake or the certificate check failed; retrying will not help."""

    @property
    def retryable(self) -> bool:  # noqa: D102
        return False


class RequestTimeoutError(TransportError):
    """The response did not arrive within the configured timeout."""


class ConnectionLostError(TransportError):
    """The connection dropped before the response was complete."""


class ResponseTooLargeError(TransportError):
    """The response body exceeded the configured cap; not retried."""

    @property
    def retryable(self) -> bool:  # noqa: D102
        return False


class APIError(FetcherError):
    """The API answered with an error status.

    Args:
        message: a description including the API's own message.
        status: the HTTP status code.
        page: the page the request was for.
        retry_after: seconds the server asked us to wait, if it said.
        body: the start of the response body, for diagnosis (never contains the key).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        page: PageRef | None = None,
        retry_after: float | None = None,
        body: str = "",
    ) -> None:
        super().__init__(message, page=page)
        self.status = status
        self.retry_after = retry_after
        self.body = body


class AuthError(APIError):
    """The API refused the key (the API answers 400 "Invalid token", not 401)."""


class RateLimitedError(APIError):
    """Over the rate limit: a 429, or a 400 whose message says "Rate Limit".

    Attributes:
        probe: the request was the limiter's probe of where the server's window
            ends, sent with the window's quota spent: the limiter, not the
            ``Retry-After``, says when the page goes again.
    """

    probe: bool = False

    @property
    def retryable(self) -> bool:  # noqa: D102
        return True


class ServerError(APIError):
    """A 5xx or 408: the server failed; the same request may succeed later."""

    @property
    def retryable(self) -> bool:  # noqa: D102
        return True


class RequestRejectedError(APIError):
    """A 4xx other than auth and rate limit, e.g. a validation error; not retried."""


class ResponseError(FetcherError):
    """A successful status whose body is not a usable page.

    Args:
        message: what was wrong with the body.
        page: the page the request was for.
        found: a short description of what the body held instead.
    """

    def __init__(self, message: str, *, page: PageRef | None = None, found: str = "") -> None:
        super().__init__(message, page=page)
        self.found = found

    @property
    def retryable(self) -> bool:  # noqa: D102
        # A body cut short by a dropped connection or a proxy is transient.
        return True


class InvalidJSONError(ResponseError):
    """The body is not valid JSON (often: cut short)."""


class ShapeError(ResponseError):
    """The body is JSON but not a page shape fetcher recognises."""


class SinkError(FetcherError):
    """A sink could not write a page; the run stops, what was written is kept."""


class IncompleteRunError(FetcherError):
    """The run finished but some pages are missing.

    Args:
        summary: the run's summary; ``summary.failed_pages`` lists what is missing.
    """

    summary: Any  # a fetcher.RunSummary (errors sit below the run)

    def __init__(self, summary: Any) -> None:
        missing = len(summary.failed_pages) + len(summary.failed_queries)
        super().__init__(f"run incomplete: {missing} page(s) or queries failed")
        self.summary = summary

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.summary,))
