"""``fetcher check``: is the key good and the base URL right? One request says.

The request is the one an export would send first, so that a passing check
means the export can start:

* with ``--users``/``--users-file``: page 1 of a one-user, one-day team-stats
  query (the first user, yesterday in UTC, one row per page);
* otherwise (``--all-users``, or no users at all): the team member list,
  ``GET /v1/user/team-member-list``.

It is never retried (:class:`~fetcher.http.retry.RetryPolicy` with one attempt), and
the answer is classified into one plain sentence with what to do:

* ``ok`` (exit 0): the host answered and accepted the key;
* ``bad_key`` (exit 3): the API refused the key;
* ``unreachable`` (exit 5): the host name does not resolve, or nothing
  accepts connections at host:port (wrong host or port);
* ``tls`` (exit 5): the TLS handshake or the certificate check failed (e.g.
  ``https://`` to a plain-HTTP port);
* ``timeout`` (exit 5): no answer within ``--timeout``;
* ``rate_limited`` (exit 5): the key is over its rate limit right now; the
  message says when to retry;
* ``error`` (exit 5): anything else, in the error's own words.

A successful check also reports the ``x-ratelimit-*`` headers when the
server sent them, so one run shows the limit an export will live under.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from fetcher.app.advice import os_error, what_to_do
from fetcher.app.connect import Observed, open_api
from fetcher.app.settings import ExportSettings
from fetcher.dates import resolve_window
from fetcher.errors import (
    AuthError,
    ConnectError,
    FetcherError,
    RateLimitedError,
    RequestTimeoutError,
    TLSError,
)
from fetcher.http.client import DEFAULT_BASE_URL
from fetcher.http.retry import RetryPolicy

if TYPE_CHECKING:
    from pydantic import SecretStr
from fetcher.spec import QuerySpec

__all__ = ["CheckResult", "CheckStatus", "check_api", "classify", "host_port"]

CheckStatus = Literal["ok", "bad_key", "unreachable", "tls", "timeout", "rate_limited", "error"]


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of ``fetcher check``.

    Attributes:
        status: the class of outcome (see the module docstring).
        message: one sentence for people: what happened and what to do.
        base_url: the API checked (the simulator's address for ``simulator``).
        error: the error, when it failed.
    """

    status: CheckStatus
    message: str
    base_url: str
    error: FetcherError | None = None

    @property
    def ok(self) -> bool:
        """The key works at this base URL."""
        return self.status == "ok"


def host_port(base_url: str) -> str:
    """``host:port`` of a URL, with the scheme's default port filled in."""
    parts = urlsplit(base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or base_url
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _limits(observed: list[Observed]) -> str:
    last = observed[-1] if observed else None
    if last is None or last.limit is None:
        return "the server sent no rate-limit headers"
    parts = [f"rate limit {last.limit} requests per window"]
    if last.remaining is not None:
        parts.append(f"{last.remaining} left")
    if last.reset_in_s is not None:
        parts.append(f"the window resets in {max(last.reset_in_s, 0):.1f} s")
    return ", ".join(parts)


def _reason(error: ConnectError) -> str:
    """Why the connection failed, in the system's words: "Connection refused", ..."""
    under = os_error(error)
    number = getattr(under, "errno", None)
    if isinstance(number, int) and number > 0:
        return os.strerror(number)
    return str(getattr(under, "strerror", None) or under or error.message)


def classify(error: FetcherError, *, base_url: str, timeout: float) -> CheckResult:
    """One plain sentence for the error the check request got: what happened, what to do.

    What to do comes from :func:`fetcher.app.advice.what_to_do`, the advice an
    export's error line gives too.
    """
    where = host_port(base_url)
    advice = what_to_do(error, situation="check")
    status: CheckStatus
    if isinstance(error, AuthError):
        status = "bad_key"
        message = f"bad key: {base_url} refused the API key (HTTP {error.status}). {advice}"
    elif isinstance(error, TLSError):
        status = "tls"
        message = f"TLS failed with {where}: {advice}"
    elif isinstance(error, ConnectError) and isinstance(os_error(error), socket.gaierror):
        status = "unreachable"
        host = urlsplit(base_url).hostname
        message = f"unknown host: cannot resolve {host} ({_reason(error)}). {advice}"
    elif isinstance(error, ConnectError):
        status = "unreachable"
        elsewhere = (
            "" if base_url == DEFAULT_BASE_URL else f"; the Saleshandy API is {DEFAULT_BASE_URL}"
        )
        message = (
            f"wrong host or port: cannot connect to {where} ({_reason(error)}). {advice}{elsewhere}"
        )
    elif isinstance(error, RequestTimeoutError):
        status = "timeout"
        message = f"no answer from {where} within {timeout:g} s. {advice}"
    elif isinstance(error, RateLimitedError):
        status = "rate_limited"
        message = (
            f"rate-limited right now: {base_url} refused the request for its rate limit "
            f"(HTTP {error.status}); {advice}"
        )
    else:
        status = "error"
        message = f"the check request to {base_url} failed: {error}"
    return CheckResult(status, message, base_url, error)


def _probe_spec(user: str, *, now: dt.datetime) -> QuerySpec:
    """Yesterday (UTC) for one user, one row per page: the smallest real query."""
    start, end = resolve_window("yesterday", zone=dt.UTC, now=now)
    return QuerySpec(user_ids=(user,), start=start, end=end, type="prospect", page_size=1)


async def check_api(
    settings: ExportSettings, *, now: dt.datetime | None = None, key: SecretStr | None = None
) -> CheckResult:
    """Send one request to the settings' API and say whether the key and URL work.

    Args:
        settings: the base URL, key, users and timeout come from here.
        now: the moment "yesterday" is taken from (default: now).
        key: the API key, if the caller resolved it (default: the settings').

    Raises:
        ConfigError: no key, or an unreadable users file; nothing was sent.
    """
    explicit = settings.users is not None or settings.users_file is not None
    spec = None
    if explicit:
        spec = _probe_spec(settings.user_ids()[0], now=now or dt.datetime.now(dt.UTC))
    retry = RetryPolicy(attempts=1, max_retry_after_s=settings.max_retry_after)
    async with open_api(settings, retry=retry, concurrency=1, key=key) as api:
        base_url = api.base_url
        try:
            if spec is not None:
                await api.client.fetch_page(spec, 1)
                what = "a one-user, one-day team-stats page"
            else:
                members = await api.client.team_members()
                what = f"the team member list ({len(members)} members)"
        except FetcherError as exc:
            return classify(exc, base_url=base_url, timeout=settings.timeout)
        limits = _limits(api.transport.observed if api.transport else [])
    return CheckResult(
        "ok",
        f"OK: {base_url} answered and the key works (read {what}); {limits}",
        base_url,
    )
