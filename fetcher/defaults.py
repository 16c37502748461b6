"""Every default of fetcher, in one place, importing nothing.

The settings model (:mod:`fetcher.app.settings`), the library's signatures
(the client, the retry policy, the transport, the paging plan, the sinks) and
the CLI's help read their defaults from here; ``tests/test_defaults.py`` checks
that the README's option table says the same. A module of plain constants, so
``fetcher --help`` can show a default without loading pydantic or aiohttp.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "BASE_URL",
    "CHECKPOINT_INTERVAL_S",
    "CONCURRENCY",
    "COUNT_BY",
    "LOG_FORMAT",
    "LOG_LEVEL",
    "MAX_ATTEMPTS",
    "MAX_BODY_BYTES",
    "MAX_DEFAULT_CONCURRENCY",
    "MAX_PAGES",
    "MAX_RETRY_AFTER_S",
    "PAGE_SIZE",
    "REPAIR_ROUNDS",
    "SORT_ORDER",
    "TABLE",
    "TIMEOUT_S",
    "TIMEZONE",
    "TYPE",
    "UNIT_ATTEMPTS",
    "USER_BATCH_SIZE",
    "USER_ID_FIELD",
]

#: The Saleshandy Open API.
BASE_URL: Final = "https://open-api.saleshandy.com"
#: Requests in flight when none is asked for (see ``fetcher.http.defaults.default_concurrency``).
CONCURRENCY: Final = 16
#: The most requests in flight a configured rate raises the default to.
MAX_DEFAULT_CONCURRENCY: Final = 64
#: Seconds the longest wait for one response may take.
TIMEOUT_S: Final = 30.0
#: Tries per page, retries included.
MAX_ATTEMPTS: Final = 6
#: The longest ``Retry-After`` waited for; a page asked to wait longer gives up.
MAX_RETRY_AFTER_S: Final = 300.0
#: Responses larger than this are refused.
MAX_BODY_BYTES: Final = 16 * 1024 * 1024
#: The most pages one query may have.
MAX_PAGES: Final = 10_000
#: Records per page.
PAGE_SIZE: Final = 50
#: Users per query; longer lists are split.
USER_BATCH_SIZE: Final = 1000
#: Re-reads of a query whose users did not all arrive before it fails.
REPAIR_ROUNDS: Final = 3
#: The record field that holds the user id.
USER_ID_FIELD: Final = "userId"
#: The report type.
TYPE: Final = "prospect"
#: How the API counts.
COUNT_BY: Final = "absolute"
#: The sort order.
SORT_ORDER: Final = "desc"
#: The zone of days, slices and relative windows.
TIMEZONE: Final = "UTC"
#: The table of the database sinks.
TABLE: Final = "team_stats"
#: Seconds between checkpoints, at most.
CHECKPOINT_INTERVAL_S: Final = 1.0
#: Tries of one unit of a distributed job (``fetcher worker``), its pages resumed each time.
UNIT_ATTEMPTS: Final = 3
#: Log lines for people, from ``info`` up.
LOG_FORMAT: Final = "console"
LOG_LEVEL: Final = "info"
