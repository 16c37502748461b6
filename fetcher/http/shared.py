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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import urlsplit

import structlog

from fetcher.errors import ConfigError

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["Grant", "SharedWindow", "shared_key"]

_log = structlog.get_logger("fetcher.http.shared")

_N = TypeVar("_N", int, float)

#: How long the shared state outlives the last process that touched it.
_TTL_MS: Final = 3_600_000

# KEYS[1]: the hash. ARGV:
#  1 limit: > 0 the server's limit per window; 0 not known yet (nothing answered);
#    -1 the server answered without advertising one (no budget to share).
#  2 the window (its number in the hash) the caller's report is about; 0: no report.
#  3 1 if the report gives the window's end, 0 if not; 4 seconds from now to that end
#    (the latest moment the server's window may end: a sure end, never a guess).
#  5 the lowest remaining the server said in that window (-1: none).
#  6 a window length to assume while no one has reported the current window's end.
#  7 a pause in seconds to impose on every process (0: none).
#  8 how long the one request let go while the limit is unknown holds the others.
#  9 1 to take a turn, 0 only to report.  10 TTL of the hash, ms.
#  11 the caller's round trip, seconds: a request granted less than that before the
#     window's end is answered after it, and servers that count a hit when they
#     answer count it in the next window; it is charged to both.
#  12 requests granted in the reported window that the server counted in a later
#     one: charged to the window after the reported one.
#  13 1 if the report gives the earliest moment the window may end, 0 if not; 14
#     seconds from now to it. A request granted once an answer has told that, and
#     answered after it, may be counted in the server's next window (a reset of "1"
#     in whole seconds: the end is anywhere in the next second): it is charged to
#     the next window too. The burst at a window's opening, granted before any
#     answer, is not.
#  15 1 if answers the server counted in a later window (see 12) give that window's
#     sure end, 0 if not; 16 seconds from now to it.  17 1 if they give its earliest
#     end, 0 if not; 18 seconds from now to it.  19 the lowest remaining they said
#     (-1: none). They describe the window after the reported one: its end and its
#     budget once it opens, so that it need not be guessed (no request of its own
#     may go to tell them: the requests counted there may have spent it).
#  20 requests of the reported window charged to the next one too (see 11, 13) that
#     the server counted in the reported one: the next one gets them back.
# Returns {granted 0/1, seconds to wait before asking again, the window number,
#   1 if the grant was charged to the next window too, the lowest remaining said of the
#   window before it (-1: none), seconds from now to the window's sure end (-1: none)}.
_TAKE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local h = redis.call('HMGET', KEYS[1], 'pause', 'end', 'used', 'limit', 'win', 'start', 'probe',
  'next', 'lo', 'rem', 'nend', 'nlo', 'nrem')
local pause = tonumber(h[1]) or 0
local wend = tonumber(h[2])
local used = tonumber(h[3]) or 0
local limit = tonumber(h[4]) or 0
local win = tonumber(h[5]) or 0
local start = tonumber(h[6]) or now
local probe = tonumber(h[7]) or 0
local nxt = tonumber(h[8]) or 0
local lo = tonumber(h[9])
local rem = tonumber(h[10])  -- the lowest remaining said of the current window
-- What answers counted in the next window said of it (see ARGV 15-19).
local nend = tonumber(h[11])
local nlo = tonumber(h[12])
local nrem = tonumber(h[13])
local fallback = tonumber(ARGV[6])
if tonumber(ARGV[1]) ~= 0 then limit = tonumber(ARGV[1]) end
local function lower(a, b) if a == nil or b < a then return b end return a end
local function higher(a, b) if a == nil or b > a then return b end return a end
-- What the server said of a window, as a floor under what it has used.
local function floor_of(r) if r ~= nil and limit > 0 then return limit - r end return 0 end
local later_end, later_lo, later_rem = nil, nil, nil
if ARGV[15] == '1' then later_end = now + tonumber(ARGV[16]) end
if ARGV[17] == '1' then later_lo = now + tonumber(ARGV[18]) end
if tonumber(ARGV[19]) >= 0 then later_rem = tonumber(ARGV[19]) end
local refund = tonumber(ARGV[20])
if win > 0 and tonumber(ARGV[2]) == win then
  if ARGV[3] == '1' then wend = lower(wend, now + tonumber(ARGV[4])) end
  if ARGV[13] == '1' then lo = higher(lo, now + tonumber(ARGV[14])) end
  local seen = tonumber(ARGV[5])
  if seen >= 0 then rem = lower(rem, seen) end
  used = math.max(used, floor_of(rem))
  nxt = math.max(nxt + tonumber(ARGV[12]) - refund, 0)
  if later_end ~= nil then nend = lower(nend, later_end) end
  if later_lo ~= nil then nlo = higher(nlo, later_lo) end
  if later_rem ~= nil then nrem = lower(nrem, later_rem) end
elseif win > 1 and tonumber(ARGV[2]) == win - 1 then
  -- About the window before this one: what it says of its next is about this one.
  if later_end ~= nil then wend = lower(wend, later_end) end
  if later_lo ~= nil then lo = higher(lo, later_lo) end
  if later_rem ~= nil then rem = lower(rem, later_rem) end
  used = math.max(used + tonumber(ARGV[12]) - refund, floor_of(rem), 0)
end
local ask = tonumber(ARGV[7])
if ask > 0 and now + ask > pause then pause = now + ask end
local function put(field, value)
  if value == nil then redis.call('HDEL', KEYS[1], field)
  else redis.call('HSET', KEYS[1], field, tostring(value)) end
end
local function save()
  redis.call('HSET', KEYS[1], 'pause', tostring(pause), 'used', used, 'limit', limit,
    'win', win, 'start', tostring(start), 'probe', tostring(probe), 'next', nxt)
  put('end', wend)
  put('lo', lo)
  put('rem', rem)
  put('nend', nend)
  put('nlo', nlo)
  put('nrem', nrem)
  redis.call('PEXPIRE', KEYS[1], ARGV[10])
end
-- A window ends at its sure end, or, when no one said where that is and its
-- budget is spent, one assumed length after it began.
if win == 0 or (wend ~= nil and now >= wend)
   or (wend == nil and limit > 0 and used >= limit and now >= start + fallback) then
  win = win + 1
  if wend ~= nil and win > 1 then start = wend else start = now end
  wend, lo, rem = nend, nlo, nrem
  nend, nlo, nrem = nil, nil, nil
  used = math.max(nxt, floor_of(rem))
  nxt = 0
end
if ARGV[9] ~= '1' then
  save()
  return {0, '0', win, 0}
end
if now < pause then
  save()
  return {0, tostring(pause - now), win, 0}
end
if limit == 0 then
  -- Nothing answered yet: one request goes to learn the limit, the others wait for it.
  if now < probe then
    save()
    return {0, tostring(math.min(probe - now, 0.05)), win, 0}
  end
  probe = now + tonumber(ARGV[8])
elseif limit > 0 and used >= limit then
  local wait = 0.05
  if wend ~= nil then wait = wend - now
  else wait = math.max(math.min(start + fallback - now, 0.05), 0.001) end
  save()
  return {0, tostring(wait), win, 0}
end
used = used + 1
local rtt = tonumber(ARGV[11])
local twice = 0
if (wend ~= nil and now + rtt >= wend) or (lo ~= nil and now + rtt >= lo) then
  nxt = nxt + 1
  twice = 1
end
save()
local ends_in = -1
if wend ~= nil then ends_in = math.max(wend - now, 0) end
return {1, '0', win, twice, rem or -1, tostring(ends_in)}
"""


def shared_key(api_key: str, base_url: str) -> str:
    """The Redis key for one API key on one host: a digest, never the key itself."""
    host = urlsplit(base_url).netloc.lower()
    digest = hashlib.sha256(f"{host}\0{api_key}".encode()).hexdigest()[:32]
    return f"fetcher:limiter:{digest}"


@dataclass(frozen=True, slots=True)
class Grant:
    """The shared budget's answer: go now, or wait ``wait_s`` and ask again.

    Attributes:
        granted: the request may go.
        wait_s: how long to wait before asking again, when not granted.
        window: the shared window's number; an answer's report names it
            (see :meth:`SharedWindow.saw`).
        charged_next: granted so near the window's end that the server may count
            it in the next one: it was charged to both (the answer may say which).
        said_remaining: the lowest ``remaining`` any process's answers had said of
            the window when it was granted (``None``: none yet).
        ends_in_s: seconds from the grant to the window's sure end (``None``: no
            one knows it yet). An answer whose window cannot end before it was
            counted in a later window.
    """

    granted: bool
    wait_s: float
    window: int = 0
    charged_next: bool = False
    said_remaining: int | None = None
    ends_in_s: float | None = None


@dataclass(slots=True)
class _Report:
    """What the answers to one shared window's requests said, not yet sent to Redis."""

    window: int
    remaining: int | None = None
    ends_at: float | None = None  # the caller's clock: the latest the window may end
    ends_after: float | None = None  # the caller's clock: the earliest it may end
    later: int = 0  # requests the server counted in a later window than this one
    refund: int = 0  # charged to the next window too, counted in this one
    # What the answers counted in a later window said of it (the next one).
    next_remaining: int | None = None
    next_ends_at: float | None = None
    next_ends_after: float | None = None

    def merge(self, other: _Report) -> None:
        """Add what ``other`` (a report of the same window) says to this one."""
        self.remaining = _lowest(self.remaining, other.remaining)
        self.ends_at = _lowest(self.ends_at, other.ends_at)
        self.ends_after = _highest(self.ends_after, other.ends_after)
        self.later += other.later
        self.refund += other.refund
        self.next_remaining = _lowest(self.next_remaining, other.next_remaining)
        self.next_ends_at = _lowest(self.next_ends_at, other.next_ends_at)
        self.next_ends_after = _highest(self.next_ends_after, other.next_ends_after)


class SharedWindow:
    """The shared budget of one key, in Redis.

    Windows are numbered in Redis. A request granted in window ``k`` was sent
    after window ``k - 1`` surely ended, so its answer describes window ``k``
    (or a later one: then the end it reports is later than ``k``'s, which only
    makes ``k`` last longer than it had to, never admits too many). A window's
    end in Redis is the earliest sure end any process reported for it, never a
    guess; until one is reported, the window's budget bounds it.

    Args:
        url: ``redis://HOST:PORT/DB`` or ``rediss://...``.
        key: the hash's name (:func:`shared_key`).
        client: a ready redis-py asyncio client (tests); built from ``url`` otherwise.
        probe_s: while no answer has told any process the limit, one request
            goes and the others wait for its answer, at most this long.
    """

    def __init__(
        self, url: str, key: str, *, client: Redis | None = None, probe_s: float = 10.0
    ) -> None:
        if not url.startswith(("redis://", "rediss://")):
            raise ConfigError(
                f"{url!r} is not a Redis URL; write redis://HOST:PORT/DB (or rediss:// for TLS)",
                field="shared_limiter",
            )
        self.url = url
        self.key = key
        self.probe_s = probe_s
        self._client = client
        self._script: object = None
        self.failed = False
        #: What answers said, by shared window, not yet sent (the last two windows:
        #: the script reads reports of its current window and the one before).
        self._reports: dict[int, _Report] = {}
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

    async def aclose(self, *, now: float | None = None, limit: int | None = None) -> None:
        """Send what is left to report (other processes may be waiting on it), then close.

        Args:
            now: the caller's clock (the one :meth:`saw`'s ``ends_at`` is on).
            limit: the limit the answers told, as for :meth:`take`. A process whose
                first request was the key's probe (the one let go while the limit
                is unknown) and that has nothing more to send tells it here;
                else every other process waits out the probe's hold.
        """
        if (self._reports or limit is not None) and now is not None:
            await self._call(limit=limit, fallback_s=1.0, now=now, take=False)
        if self._client is not None:
            await self._client.aclose()

    def saw(
        self,
        window: int,
        *,
        remaining: int | None,
        ends_at: float | None,
        later: bool = False,
        ends_after: float | None = None,
        charged_next: bool = False,
        surely_here: bool = False,
    ) -> None:
        """Remember what an answer said of shared window ``window``; sent with the next call.

        Args:
            window: the :attr:`Grant.window` its request was granted in.
            remaining: the ``x-ratelimit-remaining`` it carried.
            ends_at: the latest moment (the caller's clock) the server's window may
                end, from its reset header; ``None`` when it had none.
            later: the server counted it in a later window than the one it was
                granted in (it was in flight when the server's window turned,
                before anyone knew): it is charged to the next shared window
                (unless it already was: ``charged_next``), and what it says
                describes that one, not ``window``.
            ends_after: the earliest moment (the caller's clock) the window may
                end, from its reset header less its rounding.
            charged_next: its :attr:`Grant.charged_next`.
            surely_here: the server counted it in the window it was granted in
                (its ``remaining`` is below one said of that window before it was
                sent): charged to the next window too, it is given back there.
        """
        if window <= 0:
            return
        if self._reports and window < max(self._reports) - 1:
            return  # about a window long over
        report = self._reports.get(window)
        if report is None:
            report = self._reports[window] = _Report(window)
            for old in [w for w in self._reports if w < window - 1]:
                del self._reports[old]
        if later:
            said = _Report(
                window,
                later=0 if charged_next else 1,
                next_remaining=remaining,
                next_ends_at=ends_at,
                next_ends_after=ends_after,
            )
        else:
            said = _Report(
                window,
                remaining=remaining,
                ends_at=ends_at,
                ends_after=ends_after,
                refund=1 if charged_next and surely_here else 0,
            )
        report.merge(said)

    def pause(self, seconds: float) -> None:
        """Ask every process to pause; sent with the next call."""
        self._pause_s = max(self._pause_s, seconds)

    @property
    def telling(self) -> bool:
        """Something is waiting to be sent: a report of answers, or a pause."""
        return bool(self._reports) or self._pause_s > 0

    async def tell(self, *, limit: int | None, fallback_s: float, now: float) -> None:
        """Send what is waiting (:attr:`telling`) now, taking no turn.

        A process that has spent its share of a window asks for no turn until the
        next, and its answers' reports (where the window ends) would wait with it,
        while the others, not knowing the end, fall back on a guessed length: with
        a 2 s window and a guess of 1 s, the next window's quota went 1 s early and
        was refused. Arguments as for :meth:`take`.
        """
        await self._call(limit=limit, fallback_s=fallback_s, now=now, take=False)

    async def take(
        self, *, limit: int | None, fallback_s: float, now: float, rtt_s: float = 0.0
    ) -> Grant:
        """One request's turn from the shared budget.

        Args:
            limit: the server's limit per window if known; ``None`` before any
                answer; ``-1`` when answers came without one.
            fallback_s: the window length to assume while no one knows its end.
            now: the caller's clock (the one :meth:`saw`'s ``ends_at`` is on).
            rtt_s: the caller's round trip to the API.

        Returns:
            The grant. When Redis has gone away: granted (the local limiter
            alone decides), after one warning.
        """
        return await self._call(limit=limit, fallback_s=fallback_s, now=now, take=True, rtt_s=rtt_s)

    async def _call(
        self, *, limit: int | None, fallback_s: float, now: float, take: bool, rtt_s: float = 0.0
    ) -> Grant:
        if self.failed or self._script is None:
            return Grant(True, 0.0)
        # Taken before the call, not after: calls of one process overlap (each waits
        # on Redis), and a report must be counted once (a refund twice admits one
        # too many; a later request twice charges one too many). A report of the
        # window before goes first, on its own: the script reads one report a call.
        reports = [self._reports[w] for w in sorted(self._reports)] or [_Report(0)]
        pause_s = self._pause_s
        self._reports, self._pause_s = {}, 0.0
        try:
            for n, report in enumerate(reports):
                last = n == len(reports) - 1
                answer = await self._run(
                    report,
                    limit=limit,
                    fallback_s=fallback_s,
                    now=now,
                    take=take and last,
                    rtt_s=rtt_s,
                    pause_s=pause_s if last else 0.0,
                )
                reports[n] = _Report(0)  # sent
        except BaseException as exc:
            # Not sent (cancelled, or Redis failed): kept for the next call.
            for report in reports:
                if report.window > 0:
                    self._keep(report)
            self._pause_s = max(self._pause_s, pause_s)
            if not self._gone(exc):
                raise
            return Grant(True, 0.0)
        if answer is None:
            return Grant(True, 0.0)
        granted, wait, window, twice, *more = answer
        said_remaining = int(more[0]) if more and int(more[0]) >= 0 else None
        ends_in = float(more[1]) if len(more) > 1 and float(more[1]) >= 0 else None
        return Grant(
            bool(int(granted)),
            max(float(wait), 0.0),
            int(window),
            bool(int(twice)),
            said_remaining,
            ends_in,
        )

    def _keep(self, report: _Report) -> None:
        """Put back a report that was not sent, with what came meanwhile."""
        kept = self._reports.get(report.window)
        if kept is None:
            self._reports[report.window] = report
        else:
            kept.merge(report)

    def _gone(self, exc: BaseException) -> bool:
        """Whether ``exc`` says Redis went away: warn once, carry on with the local limiter."""
        from redis.exceptions import RedisError  # noqa: PLC0415

        if not isinstance(exc, RedisError | OSError):
            return False
        if not self.failed:
            self.failed = True
            _log.warning(
                "shared limiter unreachable; carrying on with this process's own limiter",
                url=self.display_url,
                error=type(exc).__name__,
            )
        return True

    async def _run(
        self,
        report: _Report,
        *,
        limit: int | None,
        fallback_s: float,
        now: float,
        take: bool,
        rtt_s: float,
        pause_s: float,
    ) -> list[Any] | None:
        """One run of the script with one report; ``None`` when Redis already went away."""
        if self.failed or self._script is None:
            return None
        ends, after = report.ends_at, report.ends_after
        next_ends, next_after = report.next_ends_at, report.next_ends_after
        args = [
            limit or 0,
            report.window,
            0 if ends is None else 1,
            repr(0.0 if ends is None else ends - now),
            -1 if report.remaining is None else report.remaining,
            repr(max(fallback_s, 0.05)),
            repr(pause_s),
            repr(self.probe_s),
            1 if take else 0,
            _TTL_MS,
            repr(max(rtt_s, 0.0)),
            report.later,
            0 if after is None else 1,
            repr(0.0 if after is None else after - now),
            0 if next_ends is None else 1,
            repr(0.0 if next_ends is None else next_ends - now),
            0 if next_after is None else 1,
            repr(0.0 if next_after is None else next_after - now),
            -1 if report.next_remaining is None else report.next_remaining,
            report.refund,
        ]
        answer: list[Any] = await self._script(keys=[self.key], args=args)  # type: ignore[operator]
        return answer


def _lowest(old: _N | None, new: _N | None) -> _N | None:
    """The lower of two readings, either of which may be missing."""
    return new if old is None else old if new is None else min(old, new)


def _highest(old: _N | None, new: _N | None) -> _N | None:
    """The higher of two readings, either of which may be missing."""
    return new if old is None else old if new is None else max(old, new)
