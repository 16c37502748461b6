"""What to do about an error: the one table the CLI's error line and ``fetcher check`` share.

An error says what happened and to which page or setting; this module adds
what a person can do about it, by the error's kind. Two places used to say it
(the CLI's hint table and ``fetcher check``'s sentences) and drifted apart:
the key's advice named ``--api-key-file`` in one and not the other. Now both
call :func:`what_to_do`, in one of two situations:

* ``"run"``: an export or a plan stopped; what is already written is kept, so
  transient failures end in "run the same command again to fetch what is
  missing";
* ``"check"``: ``fetcher check`` sent its one request; nothing is missing.

The library's errors stay free of command-line flags: advice is the
application's business, so it lives here, in ``fetcher.app``.
"""

from __future__ import annotations

import math
import re
import socket
from typing import Final, Literal

from fetcher.errors import (
    AuthError,
    ConnectError,
    ConnectionLostError,
    FetcherError,
    RateLimitedError,
    RequestRejectedError,
    RequestTimeoutError,
    ResponseError,
    ResponseTooLargeError,
    ServerError,
    SinkError,
    TLSError,
)

__all__ = ["Situation", "actionable", "os_error", "what_to_do"]

Situation = Literal["run", "check"]

#: The last words of advice for a failure that may pass: what was written is kept.
AGAIN: Final = "run the same command again to fetch what is missing"

#: A message that names a flag or says what to do needs no advice added.
_SAYS_WHAT_TO_DO: Final = re.compile(
    r"--|\b(check|use|set|pass|run|close|choose|swap|raise|narrow|move)\b", re.IGNORECASE
)


def os_error(error: FetcherError) -> BaseException | None:
    """The operating system's (or ssl's) error under the transport's, if any."""
    cause = error.__cause__
    found = getattr(cause, "os_error", None) or cause
    return found if isinstance(found, BaseException) else None


def _tls(error: TLSError) -> str:
    """What went wrong in the handshake, and what to do about it."""
    under = os_error(error)
    reason = str(getattr(under, "reason", None) or "")
    detail = str(getattr(under, "verify_message", None) or "")
    if reason == "WRONG_VERSION_NUMBER":
        return (
            "the server there does not speak TLS; use http:// for a plain-HTTP server, "
            "or the https port"
        )
    if reason == "CERTIFICATE_VERIFY_FAILED":
        return (
            f"its certificate is not trusted ({detail or 'verification failed'}); check the "
            "host name in --base-url and the system's CA certificates"
        )
    said = reason or str(under or error.message)
    return f"{said}; check the host name in --base-url, its port, and the system's CA certificates"


def _then(advice: str, situation: Situation) -> str:
    return f"{advice}; then {AGAIN}" if situation == "run" else advice


def what_to_do(error: FetcherError, *, situation: Situation = "run") -> str:  # noqa: PLR0911, PLR0912
    """What a person can do about ``error`` (most specific kind first); ``""`` if nothing."""
    match error:
        case AuthError():
            return (
                "set SALESHANDY_API_KEY (or --api-key-file) to a current Saleshandy Open API "
                "key; if the key is right, check that --base-url is the Saleshandy API"
            )
        case TLSError():
            return _tls(error)
        case ConnectError() if isinstance(os_error(error), socket.gaierror):
            return "check the host name in --base-url, and this machine's network and DNS"
        case ConnectError():
            said = "check the host and port in --base-url, and the network"
            return f"{said} (`fetcher check` tests both)" if situation == "run" else said
        case RequestTimeoutError():
            return _then("check --base-url and the network, or raise --timeout", situation)
        case ConnectionLostError():
            return AGAIN if situation == "run" else "try again: the connection dropped"
        case ResponseTooLargeError():
            return "use a smaller --page-size"
        case RateLimitedError() if situation == "check":
            wait = error.retry_after
            return (
                f"retry after {math.ceil(wait)} s" if wait is not None and wait > 0 else
                "retry in a minute"
            ) + ". An export would wait for it"  # fmt: skip
        case RateLimitedError():
            return "lower --rate-limit or --concurrency, or run the same command again later"
        case ServerError():
            return _then("the API is failing: wait a while", situation)
        case RequestRejectedError():
            return (
                "check the query options (--type, --order-by, --count-by, the dates); "
                "`fetcher plan` shows the queries"
            )
        case ResponseError():
            return "if the records are elsewhere in the response, name them with --records-path"
        case SinkError():
            return "check that the output can be written (path, permissions, free space)"
    return ""


def actionable(error: FetcherError) -> str:
    """The error as one line: what happened, to which page or setting, and what to do."""
    text = str(error)
    if _SAYS_WHAT_TO_DO.search(error.message):
        return text
    advice = what_to_do(error)
    return f"{text}; {advice}" if advice else text
