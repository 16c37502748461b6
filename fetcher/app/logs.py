"""Logging setup for the command line, and the processor that keeps secrets out of logs.

The library never configures logging; it only asks structlog for loggers. The
CLI calls :func:`configure_logging` once. Secrets are removed by a processor
(:class:`RedactSecrets`) that sees every event, including formatted exception
tracebacks, rather than by hoping nobody logs them.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, Final, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from fetcher.errors import REDACTED

__all__ = ["REDACTED", "RedactSecrets", "configure_logging"]


#: Shorter strings are not treated as secrets (see :class:`RedactSecrets`).
MIN_SECRET_LENGTH: Final = 6

#: Keys whose values are secret whatever they hold.
SECRET_KEYS: Final = frozenset(
    {"x-api-key", "x_api_key", "api_key", "apikey", "authorization", "password", "dsn"}
)


class RedactSecrets:
    """A structlog processor that replaces secret values anywhere in an event.

    Args:
        secrets: exact strings to hide wherever they appear (the API key).
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # A secret of a few characters would turn every word containing them into
        # asterisks; no real API key or password is that short.
        self.secrets = tuple(s for s in secrets if len(s) >= MIN_SECRET_LENGTH)

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self.secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {
                k: REDACTED if str(k).lower() in SECRET_KEYS else self._clean(v)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return type(value)(self._clean(v) for v in value)
        if value is None or isinstance(value, int | float):
            return value
        # Anything else (an exception, a path, a model) is checked as text.
        text = str(value)
        if any(secret in text for secret in self.secrets):
            return self._clean(text)
        return value

    def __call__(self, logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
        """Redact ``event`` in place and return it."""
        for key in list(event):
            if str(key).lower() in SECRET_KEYS:
                event[key] = REDACTED
            else:
                event[key] = self._clean(event[key])
        return event


LogFormat = Literal["console", "json"]


def configure_logging(
    *,
    fmt: LogFormat = "console",
    level: str = "info",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
    debug: bool = False,
) -> None:
    """Configure structlog for the command line.

    Args:
        fmt: ``console`` (human, key=value) or ``json`` (one object per line).
        level: the lowest level shown.
        secrets: strings that must never appear in a log line.
        stream: where logs go (default: standard error).
        debug: include tracebacks of logged exceptions.
    """
    stream = stream or sys.stderr
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if debug:
        # Render tracebacks to text first, so the redactor sees them too.
        shared.append(structlog.processors.format_exc_info)
    else:
        shared.append(_drop_exc_info)
    shared.append(RedactSecrets(secrets))
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=stream.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def _drop_exc_info(
    logger: WrappedLogger, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    event.pop("exc_info", None)
    return event
