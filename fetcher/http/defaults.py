"""The client's defaults and the rule for requests in flight, without the HTTP stack.

Settings, the CLI's help and the client read them from here, so ``fetcher
--help`` and a config error need not load aiohttp to show a default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from fetcher import defaults
from fetcher.http.limiter import one_second_of

if TYPE_CHECKING:
    from fetcher.http.limiter import Rate

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_CONCURRENCY",
    "MAX_DEFAULT_CONCURRENCY",
    "TEAM_MEMBERS_PATH",
    "TEAM_STATS_PATH",
    "default_concurrency",
    "max_auto_in_flight",
]

DEFAULT_BASE_URL: Final = defaults.BASE_URL
TEAM_STATS_PATH: Final = "/v1/analytics/team/stats"
TEAM_MEMBERS_PATH: Final = "/v1/user/team-member-list"
DEFAULT_CONCURRENCY: Final = defaults.CONCURRENCY
#: The most requests in flight a configured rate raises the default to.
MAX_DEFAULT_CONCURRENCY: Final = defaults.MAX_DEFAULT_CONCURRENCY


def default_concurrency(rate: Rate | None) -> int:
    """Requests in flight when none is asked for: 16, or one second of a configured rate.

    A rate such as ``40/1s`` says the API takes 40 requests in any second, so
    they may go at once; with 16 in flight the last of them wait for two more
    round trips at every window's edge (on a 200-page run at 40/s and 150 ms,
    0.87-0.88 of the rate used instead of 0.94). So the default rises to what
    the rate allows in one second, at most its window and at most
    :data:`MAX_DEFAULT_CONCURRENCY`, and is never lowered. A slow rate
    (``30/min``, ``20/2s``) keeps 16: a round trip or two at the edge of a
    long window costs little, and every request in flight costs a connection,
    two workers and buffered pages.
    """
    if rate is None:
        return DEFAULT_CONCURRENCY
    return min(max(one_second_of(*rate.window), DEFAULT_CONCURRENCY), MAX_DEFAULT_CONCURRENCY)


def max_auto_in_flight(concurrency: int) -> int:
    """The most requests in flight a client nobody fixed may be raised to.

    When no concurrency and no rate are given, the limiter starts at
    ``concurrency`` and raises it once the server's headers show a window that
    allows more in one second, as far as a configured rate's default would go
    (:data:`MAX_DEFAULT_CONCURRENCY`): 40 a second then go at once, the first
    window's included. Held at 32, the last 6 of a 40-request window waited a
    round trip, and in the run's first window (page 1 already took one) that
    pushed them into the next window and the run a whole window longer.
    """
    return max(2 * concurrency, MAX_DEFAULT_CONCURRENCY)
