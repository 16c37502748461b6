"""Dramatiq on Redis: the broker, fetcher's queue and actor, and a worker's life.

Why Dramatiq: at-least-once delivery, retries with exponential backoff, async
actors (``AsyncIO`` middleware: one event loop per worker process, ``--threads``
units on it at once), Redis and RabbitMQ brokers, and a Redis broker that puts
the messages of a dead worker back on the queue once its heartbeat is older
than the heartbeat timeout; its ``StubBroker`` runs the same actors in tests.

A message names a job and a unit (:func:`~fetcher.distributed.units.message_args`)
and nothing else: each worker reads the query from the ledger and the key from
its own environment.

The Redis broker does maintenance (requeueing dead workers' messages) on a
share of its commands; fetcher raises that share from Dramatiq's 1 in 1,000 to
1 in 10, so a killed worker's unit goes back on the queue within about a
second of its heartbeat timeout rather than whenever a thousand commands have
run.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from fetcher.distributed.units import message_args
from fetcher.errors import ConfigError

if TYPE_CHECKING:
    import dramatiq

__all__ = [
    "ACTOR_NAME",
    "DEFAULT_BROKER_URL",
    "QUEUE",
    "StopFlag",
    "UnitRetry",
    "declare_actor",
    "redis_broker",
    "require_dramatiq",
    "send_units",
]

#: Dramatiq's queue for fetcher's units.
QUEUE: Final = "fetcher"
#: The actor that works one unit.
ACTOR_NAME: Final = "fetcher_unit"
#: Where the broker is when neither ``--broker``, ``FETCHER_BROKER_URL`` nor ``broker =`` says.
DEFAULT_BROKER_URL: Final = "redis://127.0.0.1:6379/0"
#: Seconds without a heartbeat before a worker's messages are given to others.
DEFAULT_HEARTBEAT_TIMEOUT_S: Final = 60.0
#: Commands out of a million that run the Redis broker's maintenance (see the docstring).
MAINTENANCE_CHANCE: Final = 100_000
#: A unit's longest run (Dramatiq's time limit): a long backfill under a slow limit.
UNIT_TIME_LIMIT_MS: Final = 24 * 3600 * 1000
#: Backoff between a unit's attempts (Dramatiq doubles it from the minimum).
MIN_BACKOFF_MS: Final = 500
MAX_BACKOFF_MS: Final = 60_000
#: Dramatiq's own retry ceiling; the ledger decides first (``unit_attempts``).
MAX_RETRIES: Final = 1_000


class UnitRetry(Exception):  # noqa: N818  (Dramatiq retries what the actor raises)
    """Raised by the actor so that Dramatiq retries the unit with backoff."""


def require_dramatiq() -> None:
    """Check that Dramatiq is installed.

    Raises:
        ConfigError: it is not, with the command that installs it.
    """
    try:
        import dramatiq  # noqa: F401, PLC0415  (optional dependency)
        import redis  # noqa: F401, PLC0415
    except ImportError:
        raise ConfigError(
            "distributed mode needs Dramatiq and redis, which are not installed: "
            "pip install 'fetcher[distributed]'",
            field="broker",
        ) from None


def check_broker_url(url: str) -> str:
    """A Redis URL, or a ConfigError naming ``--broker``."""
    if not url.startswith(("redis://", "rediss://")):
        raise ConfigError(
            f"{url!r} is not a Redis URL; write redis://HOST:PORT/DB (or rediss:// for TLS)",
            field="--broker",
        )
    return url


def redis_broker(
    url: str, *, heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S
) -> dramatiq.Broker:
    """Dramatiq's Redis broker at ``url`` with the async middleware, not yet checked.

    Raises:
        ConfigError: Dramatiq is not installed, or the URL is not a Redis URL.
    """
    require_dramatiq()
    check_broker_url(url)
    from dramatiq.brokers.redis import RedisBroker  # noqa: PLC0415
    from dramatiq.middleware import AsyncIO  # noqa: PLC0415

    broker = RedisBroker(  # type: ignore[no-untyped-call]
        url=url,
        heartbeat_timeout=max(1, int(heartbeat_timeout_s * 1000)),
        maintenance_chance=MAINTENANCE_CHANCE,
    )
    broker.add_middleware(AsyncIO())
    return broker


def ping(broker: dramatiq.Broker, url_shown: str) -> None:
    """Check that Redis answers.

    Raises:
        ConfigError: it does not (exit 2: nothing was sent).
    """
    client = getattr(broker, "client", None)
    if client is None:
        return
    try:
        client.ping()
    except Exception as exc:
        raise ConfigError(
            f"cannot reach the broker at {url_shown}: {type(exc).__name__}; start Redis there "
            "or pass --broker redis://HOST:PORT/DB (or set FETCHER_BROKER_URL)",
            field="--broker",
        ) from None


def send_units(broker: dramatiq.Broker, job_id: str, unit_ids: list[str]) -> int:
    """One message per unit on fetcher's queue; returns how many were sent."""
    from dramatiq import Message  # noqa: PLC0415

    broker.declare_queue(QUEUE)
    for unit_id in unit_ids:
        broker.enqueue(
            Message(
                queue_name=QUEUE,
                actor_name=ACTOR_NAME,
                args=message_args(job_id, unit_id),
                kwargs={},
                options={},
            )
        )
    return len(unit_ids)


class StopFlag:
    """Set when the worker is shutting down; units check it between pages."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        """Ask every unit in hand to stop after its current page."""
        self._event.set()

    def __call__(self) -> bool:
        """Whether a stop was asked for."""
        return self._event.is_set()


def declare_actor(
    broker: dramatiq.Broker, work: Callable[[str, str], Awaitable[None]]
) -> dramatiq.Actor[Any, Any]:
    """Declare fetcher's actor on ``broker``: ``work(job_id, unit_id)``, retried on UnitRetry.

    Raises:
        ConfigError: Dramatiq is not installed.
    """
    require_dramatiq()
    import dramatiq  # noqa: PLC0415

    async def fetcher_unit(job_id: str, unit_id: str) -> None:
        await work(job_id, unit_id)

    declare = dramatiq.actor(
        broker=broker,
        actor_name=ACTOR_NAME,
        queue_name=QUEUE,
        max_retries=MAX_RETRIES,
        min_backoff=MIN_BACKOFF_MS,
        max_backoff=MAX_BACKOFF_MS,
        time_limit=UNIT_TIME_LIMIT_MS,
        retry_when=lambda retries, exc: isinstance(exc, UnitRetry) and retries < MAX_RETRIES,
    )
    return declare(fetcher_unit)
