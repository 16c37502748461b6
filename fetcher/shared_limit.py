"""One window budget for every process on one API key, kept in Redis.

Several ``fetcher export`` processes on one key (a nightly job and an ad-hoc
export, many workers) each see the others only as a smaller
``x-ratelimit-remaining``, one round trip late: at a window's opening all of
them would take the whole quota at once. With ``--shared-limiter
redis://HOST:PORT/DB`` they share, through one Redis hash per key and host:

- **the window's budget**: how many requests all of them have let go in the
  current window, and when it ends; a request goes only if the count is below
  the limit;
- **what the server said**: the lowest ``remaining`` any of them saw in the
  window (other tools on the key count too);
- **the pause**: after a refusal every process waits, not only the refused one.

Each step is one Lua script (atomic in Redis; Redis's own ``TIME`` is the
clock, so hosts need not agree on theirs; it answers in seconds from now, which
each process maps to its own monotonic clock). We use redis-py's asyncio client
and a script of our own rather than a library such as ``limits``: its windows
are fixed-length from a moving start or sliding, it cannot adopt the window end
the server's headers reveal nor fold in a ``remaining`` seen by one process, and
those are the point here.

The Redis key is a digest of the API key and the host, never the key itself. If
Redis cannot be reached when the run starts the command stops (exit 2, naming
the URL); if it goes away mid-run, the run goes on with its local limiter and
says so once.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import structlog

from fetcher.errors import ConfigError

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["Grant", "SharedWindow", "shared_key"]

_log = structlog.get_logger("fetcher.shared_limit")

#: How long the shared state outlives the last process that touched it.
_TTL_MS: Final = 3_600_000

# KEYS[1]: the hash. ARGV: limit (0: the stored one), seconds to the caller's window
# end (<= 0: unknown), a fallback window length, the lowest remaining the caller saw
# since it last asked (-1: none), and a pause in seconds to impose (0: none).
# Returns {granted 0/1, seconds to wait or to the window's end}.
_TAKE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local h = redis.call('HMGET', KEYS[1], 'pause', 'end', 'used', 'limit')
local pause = tonumber(h[1]) or 0
local wend = tonumber(h[2])
local used = tonumber(h[3]) or 0
local limit = tonumber(ARGV[1])
if limit <= 0 then limit = tonumber(h[4]) or 0 end
local ask = tonumber(ARGV[5])
if ask > 0 and now + ask > pause then
  pause = now + ask
  redis.call('HSET', KEYS[1], 'pause', tostring(pause))
end
if now < pause then
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
  return {0, tostring(pause - now)}
end
if wend == nil or now >= wend then
  local e = tonumber(ARGV[2])
  if e <= 0 then e = tonumber(ARGV[3]) end
  wend = now + e
  used = 0
end
local seen = tonumber(ARGV[4])
if seen >= 0 and limit > 0 and limit - seen > used then used = limit - seen end
if limit > 0 and used >= limit then
  redis.call('HSET', KEYS[1], 'end', tostring(wend), 'used', used, 'limit', limit)
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
  return {0, tostring(wend - now)}
end
used = used + 1
redis.call('HSET', KEYS[1], 'end', tostring(wend), 'used', used, 'limit', limit)
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return {1, tostring(wend - now)}
"""


def shared_key(api_key: str, base_url: str) -> str:
    """The Redis key for one API key on one host: a digest, never the key itself."""
    host = urlsplit(base_url).netloc.lower()
    digest = hashlib.sha256(f"{host}\0{api_key}".encode()).hexdigest()[:32]
    return f"fetcher:limiter:{digest}"


@dataclass(frozen=True, slots=True)
class Grant:
    """The shared budget's answer: go now, or wait ``wait_s`` and ask again."""

    granted: bool
    wait_s: float


class SharedWindow:
    """The shared budget of one key, in Redis.

    Args:
        url: ``redis://HOST:PORT/DB`` or ``rediss://...``.
        key: the hash's name (:func:`shared_key`).
        client: a ready redis-py asyncio client (tests); built from ``url`` otherwise.
    """

    def __init__(self, url: str, key: str, *, client: Redis | None = None) -> None:
        if not url.startswith(("redis://", "rediss://")):
            raise ConfigError(
                f"{url!r} is not a Redis URL; write redis://HOST:PORT/DB (or rediss:// for TLS)",
                field="shared_limiter",
            )
        self.url = url
        self.key = key
        self._client = client
        self._script: object = None
        self.failed = False
        self._seen: int | None = None
        self._pause_s = 0.0

    @property
    def display_url(self) -> str:
        """The URL without a password, for messages."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}"

    async def connect(self) -> None:
        """Reach Redis once; the run does not start without it.

        Raises:
            ConfigError: Redis cannot be reached (naming the URL, never a password).
        """
        from redis.asyncio import Redis  # noqa: PLC0415  (only with --shared-limiter)
        from redis.exceptions import RedisError  # noqa: PLC0415

        if self._client is None:
            self._client = Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=5)
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            raise ConfigError(
                f"cannot reach Redis at {self.display_url} ({type(exc).__name__}); start it, "
                "fix the URL, or leave --shared-limiter out",
                field="shared_limiter",
            ) from None
        self._script = self._client.register_script(_TAKE)

    async def aclose(self) -> None:
        """Close the connection."""
        if self._client is not None:
            await self._client.aclose()

    def saw(self, remaining: int) -> None:
        """Remember a ``remaining`` seen; it goes to Redis with the next :meth:`take`."""
        self._seen = remaining if self._seen is None else min(self._seen, remaining)

    def pause(self, seconds: float) -> None:
        """Ask every process to pause; sent with the next :meth:`take`."""
        self._pause_s = max(self._pause_s, seconds)

    def new_window(self) -> None:
        """The caller's window changed: what it saw of the old one no longer counts."""
        self._seen = None

    async def take(self, *, limit: int | None, ends_in_s: float | None, period_s: float) -> Grant:
        """One request's turn from the shared budget.

        Args:
            limit: the server's limit per window, if known.
            ends_in_s: seconds until the caller's current window ends, if known.
            period_s: the window's length to assume when no one knows its end.

        Returns:
            The grant. When Redis has gone away: granted (the local limiter
            alone decides), after one warning.
        """
        if self.failed or self._script is None:
            return Grant(True, 0.0)
        from redis.exceptions import RedisError  # noqa: PLC0415

        seen = -1 if self._seen is None else self._seen
        args = [
            limit or 0,
            repr(ends_in_s if ends_in_s is not None and math.isfinite(ends_in_s) else -1.0),
            repr(max(period_s, 0.05)),
            seen,
            repr(self._pause_s),
            _TTL_MS,
        ]
        try:
            granted, wait = await self._script(keys=[self.key], args=args)  # type: ignore[operator]
        except (RedisError, OSError) as exc:
            self.failed = True
            _log.warning(
                "shared limiter unreachable; carrying on with this process's own limiter",
                url=self.display_url,
                error=type(exc).__name__,
            )
            return Grant(True, 0.0)
        self._seen = None
        self._pause_s = 0.0
        return Grant(bool(int(granted)), max(float(wait), 0.0))
