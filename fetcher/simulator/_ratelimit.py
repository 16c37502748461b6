"""A request limit per API key, laid out and counted as common server throttlers do.

One :class:`RateLimiter` holds the policy (how many hits per window, when a hit is
counted, whether refusals count) and, per key, one *window* object that only
counts hits. There is one small window class per layout (``mode``):

- :class:`FirstRequestWindow` (``"first-request"``, the default): a window opens
  with the first counted hit after the previous one expired and lasts ``window_s``,
  as NestJS's throttler and express-rate-limit's memory store do.
- :class:`AlignedWindow` (``"aligned"``): fixed windows on the wall clock,
  ``[phase + k*W, phase + (k+1)*W)``, as limiters keyed on ``floor(now / W)`` (Redis
  counters, gateways) do. They start at a phase unrelated to the client's first
  request, and agree across restarts and processes.
- :class:`SlidingLog` (``"sliding"``): a request is admitted while fewer than
  ``limit`` counted hits lie in the last W seconds (a sliding-log limiter).

Two switches say what is counted. ``count_on="arrival"`` (the default) checks and
counts a request when it arrives. ``count_on="answer"`` checks on arrival against
the hits counted so far, but counts the hit only when the answer is sent (call
:meth:`RateLimiter.answered`), in the window in force then: requests still being
answered are invisible to the check, as on servers that record the hit in an
on-finish hook. ``count_refused=False`` (the default) leaves refused requests
uncounted, so a client that keeps hammering gets a fresh quota when the window
ends; ``True`` counts them, so hammering keeps a sliding log full.

Both clocks are injectable so every switch is tested without sleeping: the
monotonic ``clock`` measures first-request and sliding windows; aligned windows
use ``wall_clock``, since they must agree with the wall clock of other processes.
Either clock must never go backwards.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from fetcher.simulator._config import CountOn, ResetFormat, SimulatorConfig, WindowMode
from fetcher.simulator._team import stable_unit

__all__ = [
    "AlignedWindow",
    "Decision",
    "FirstRequestWindow",
    "FixedWindowLimiter",
    "RateLimiter",
    "SlidingLog",
    "aligned_phase",
]


def _ceil(value: float, digits: int = 0) -> float:
    """Round ``value`` up to ``digits`` decimals, ignoring float noise below a microsecond.

    ``start + W - now`` can come out as ``30.000000000004`` for an exact 30 s; that
    must read ``30``, not ``31``.
    """
    scale = 10.0**digits
    return math.ceil(round(value * scale, 6 - digits)) / scale


@dataclass(frozen=True, slots=True)
class Decision:
    """The limiter's answer for one request.

    Attributes:
        allowed: whether the request is admitted.
        limit: requests per window.
        remaining: requests left in the current window after this one (0 when refused).
        reset_in: seconds until the reset (> 0): the end of the current fixed window,
            or for a sliding log the moment a slot frees.
        reset_at: the reset on the wall clock, in epoch seconds.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_in: float
    reset_at: float

    @property
    def retry_after(self) -> int:
        """Whole seconds until the reset, rounded up, at least 1."""
        return max(1, int(_ceil(self.reset_in)))

    def reset_header(self, reset_format: ResetFormat) -> str:
        """The value of ``x-ratelimit-reset`` in ``reset_format``."""
        match reset_format:
            case "seconds":
                return str(self.retry_after)
            case "fractional":
                # Rounded up: a client that waits exactly this long is never early.
                return f"{max(0.001, _ceil(self.reset_in, 3)):.3f}"
            case "epoch":
                # Milliseconds, as several APIs send them: a client can then resume
                # right at the reset instead of up to a second late.
                return f"{self.reset_at:.3f}"
            case "epoch-seconds":
                return str(int(_ceil(self.reset_at)))
            case "http-date":
                return email.utils.formatdate(_ceil(self.reset_at), usegmt=True)

    def headers(self, reset_format: ResetFormat) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers for this decision."""
        return {
            "x-ratelimit-limit": str(self.limit),
            "x-ratelimit-remaining": str(self.remaining),
            "x-ratelimit-reset": self.reset_header(reset_format),
        }


class _Window(Protocol):
    """The hits of one key, as one layout counts them (``now`` never goes backwards)."""

    def count(self, now: float) -> int:
        """Counted hits in force at ``now``."""
        ...

    def add(self, now: float) -> int:
        """Count one hit at ``now``; return the hits now in force (this one included)."""
        ...

    def reset_in(self, now: float) -> float:
        """Seconds from ``now`` until the reset (> 0)."""
        ...


class FirstRequestWindow:
    """One key's window: opens with its first counted hit, lasts ``window_s``.

    Args:
        window_s: window length in seconds.
    """

    __slots__ = ("_hits", "_start", "_window_s")

    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        self._start = -math.inf
        self._hits = 0

    def _open(self, now: float) -> bool:
        return now < self._start + self._window_s

    def count(self, now: float) -> int:
        """Counted hits in the open window, 0 if none is open."""
        return self._hits if self._open(now) else 0

    def add(self, now: float) -> int:
        """Count a hit, opening a window at ``now`` if none is open."""
        if not self._open(now):
            self._start, self._hits = now, 0
        self._hits += 1
        return self._hits

    def reset_in(self, now: float) -> float:
        """Until the open window ends; a full window if none is open (a hit now opens one)."""
        return self._start + self._window_s - now if self._open(now) else self._window_s


class AlignedWindow:
    """One key's hits in fixed windows ``[phase + k*W, phase + (k+1)*W)`` of wall-clock time.

    Args:
        window_s: window length W in seconds.
        phase_s: where windows start, in [0, W).
    """

    __slots__ = ("_hits", "_index", "_phase_s", "_window_s")

    def __init__(self, window_s: float, phase_s: float) -> None:
        self._window_s = window_s
        self._phase_s = phase_s
        self._index: int | None = None
        self._hits = 0

    def _index_at(self, now: float) -> int:
        index = math.floor((now - self._phase_s) / self._window_s)
        # The division may land a hair off at a boundary; the window must contain now.
        if now < self._start(index):
            index -= 1
        elif now >= self._start(index + 1):
            index += 1
        return index

    def _start(self, index: int) -> float:
        return self._phase_s + index * self._window_s

    def count(self, now: float) -> int:
        """Counted hits in the window containing ``now``."""
        return self._hits if self._index == self._index_at(now) else 0

    def add(self, now: float) -> int:
        """Count a hit in the window containing ``now``."""
        index = self._index_at(now)
        if index != self._index:
            self._index, self._hits = index, 0
        self._hits += 1
        return self._hits

    def reset_in(self, now: float) -> float:
        """Until the window containing ``now`` ends."""
        return self._start(self._index_at(now) + 1) - now


class SlidingLog:
    """One key's hits of the last ``window_s`` seconds, each leaving W after it was counted.

    Args:
        window_s: the span W in seconds.
        limit: hits admitted in any span of W (decides when a slot frees).
    """

    __slots__ = ("_hits", "_limit", "_window_s")

    def __init__(self, window_s: float, limit: int) -> None:
        self._window_s = window_s
        self._limit = limit
        self._hits: deque[float] = deque()

    def _prune(self, now: float) -> None:
        # A hit at t lies in the last W seconds while now - t < W.
        while self._hits and self._hits[0] <= now - self._window_s:
            self._hits.popleft()

    def count(self, now: float) -> int:
        """Counted hits in ``(now - W, now]``."""
        self._prune(now)
        return len(self._hits)

    def add(self, now: float) -> int:
        """Log a hit at ``now``."""
        self._prune(now)
        self._hits.append(now)
        return len(self._hits)

    def reset_in(self, now: float) -> float:
        """Until a slot frees: the oldest hit leaves; W if the log is empty.

        With counted refusals the log may hold more than ``limit`` hits; a slot then
        frees only when all but ``limit - 1`` of them have left.
        """
        self._prune(now)
        if not self._hits:
            return self._window_s
        oldest = self._hits[max(0, len(self._hits) - self._limit)]
        return oldest + self._window_s - now


def aligned_phase(window_s: float, phase_s: float | None, seed: int) -> float:
    """The phase aligned windows start at, in [0, ``window_s``).

    Args:
        window_s: window length W.
        phase_s: the configured phase (taken modulo W), or ``None`` to draw it from ``seed``.
        seed: the simulator's seed; the same seed always draws the same phase.
    """
    if phase_s is None:
        return stable_unit(seed, "rate-window-phase") * window_s
    phase = phase_s % window_s
    # -1e-17 % 1.0 is 1.0 in floats; the phase must stay below W.
    return 0.0 if phase >= window_s else phase


class RateLimiter:
    """Admit up to ``limit`` counted hits per window per key, as ``mode`` lays windows out.

    Args:
        limit: hits per window.
        window_s: window length W in seconds.
        mode: ``"first-request"``, ``"aligned"`` or ``"sliding"`` (see the module docstring).
        phase_s: where aligned windows start, in [0, W); ignored by the other modes.
        count_on: ``"arrival"``: :meth:`check` counts; ``"answer"``: :meth:`answered` counts.
        count_refused: count refused requests as hits too.
        clock: a monotonic clock in seconds (first-request and sliding windows).
        wall_clock: epoch seconds (aligned windows, and ``reset_at``).
        key_limits: keys with a limit of their own (each key's plan), in the order
            the stats list them; a key not named has ``limit``.
    """

    def __init__(
        self,
        limit: int,
        window_s: float,
        *,
        mode: WindowMode = "first-request",
        phase_s: float = 0.0,
        count_on: CountOn = "arrival",
        count_refused: bool = False,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        key_limits: Mapping[str, int] | None = None,
    ) -> None:
        self._limit = limit
        self._key_limits = dict(key_limits or {})
        self._max_by_key: dict[str, int] = {}
        self._window_s = window_s
        self._mode = mode
        self._phase_s = phase_s
        self._count_on = count_on
        self._count_refused = count_refused
        self._clock = clock
        self._wall_clock = wall_clock
        self._windows: dict[str, _Window] = {}
        self._max_in_window = 0
        # With count_on="answer": the admitted requests by arrival, in windows of their own.
        self._arrivals: dict[str, _Window] = {}
        self._max_arrived = 0

    @classmethod
    def from_config(cls, config: SimulatorConfig) -> RateLimiter:
        """The limiter ``config`` describes, on the real clocks.

        Raises:
            ValueError: if ``config.rate_limit`` is ``None`` (no limit to enforce).
        """
        if config.rate_limit is None:
            raise ValueError("rate_limit is None: there is no limit to enforce")
        key_limits = dict(zip(config.api_keys, config.key_rate_limits, strict=False))
        return cls(
            config.rate_limit,
            config.rate_window_s,
            mode=config.rate_window_mode,
            phase_s=aligned_phase(config.rate_window_s, config.rate_window_phase_s, config.seed),
            count_on=config.rate_count_on,
            count_refused=config.rate_count_refused,
            key_limits=key_limits,
        )

    def limit_for(self, key: str) -> int:
        """The limit of ``key``: its own, or the default."""
        return self._key_limits.get(key, self._limit)

    @property
    def phase_s(self) -> float | None:
        """Where aligned windows start on the wall clock (modulo W); ``None`` in other modes."""
        return self._phase_s if self._mode == "aligned" else None

    @property
    def max_in_window(self) -> int:
        """The most counted hits of one key that ever fell in one window (any span of W, sliding).

        With ``count_on="answer"`` this can exceed ``limit``: requests in flight at the
        check all land. Since the last :meth:`reset`.
        """
        return self._max_in_window

    @property
    def max_arrived_in_window(self) -> int:
        """The most admitted requests of one key that *arrived* in one window.

        What the client controls: how many it sent into one window. With
        ``count_on="arrival"`` it is :attr:`max_in_window` (refusals aside); with
        ``"answer"``, requests that arrive before a window's end and are answered
        after it count in the next one, so :attr:`max_in_window` also measures the
        server's own latency at the boundary. Since the last :meth:`reset`.
        """
        return self._max_arrived if self._count_on == "answer" else self._max_in_window

    def describe(self) -> dict[str, Any]:
        """The settings and the busiest window, as JSON-able data for the stats.

        With per-key limits, ``keys`` lists each key's limit and busiest window, in
        the order of ``api_keys`` (the keys themselves are secrets: never shown).
        """
        described: dict[str, Any] = {
            "limit": self._limit,
            "window_s": self._window_s,
            "mode": self._mode,
            "phase_s": self.phase_s,
            "count_on": self._count_on,
            "count_refused": self._count_refused,
            "max_in_window": self._max_in_window,
            "max_arrived_in_window": self.max_arrived_in_window,
        }
        if self._key_limits:
            described["keys"] = [
                {"limit": limit, "max_in_window": self._max_by_key.get(key, 0)}
                for key, limit in self._key_limits.items()
            ]
        return described

    def _now(self) -> tuple[float, float]:
        """(the mode's clock, the wall clock): one reading, so aligned resets are exact."""
        wall = self._wall_clock()
        return (wall if self._mode == "aligned" else self._clock()), wall

    def _window(self, key: str, windows: dict[str, _Window] | None = None) -> _Window:
        windows = self._windows if windows is None else windows
        window = windows.get(key)
        if window is None:
            match self._mode:
                case "first-request":
                    window = FirstRequestWindow(self._window_s)
                case "aligned":
                    window = AlignedWindow(self._window_s, self._phase_s)
                case "sliding":
                    window = SlidingLog(self._window_s, self.limit_for(key))
            windows[key] = window
        return window

    def _count(self, key: str, window: _Window, now: float) -> None:
        hits = window.add(now)
        self._max_in_window = max(self._max_in_window, hits)
        self._max_by_key[key] = max(self._max_by_key.get(key, 0), hits)

    def check(self, key: str) -> Decision:
        """Decide whether a request for ``key`` is admitted; count it if ``count_on="arrival"``.

        Whatever ``count_on`` says, call :meth:`answered` when the answer is sent.
        """
        now, wall = self._now()
        window = self._window(key)
        counted = window.count(now)
        limit = self.limit_for(key)
        allowed = counted < limit
        if self._count_on == "arrival" and (allowed or self._count_refused):
            self._count(key, window, now)
        elif allowed:
            arrived = self._window(key, self._arrivals).add(now)
            self._max_arrived = max(self._max_arrived, arrived)
        reset_in = window.reset_in(now)
        return Decision(
            allowed=allowed,
            limit=limit,
            remaining=limit - counted - 1 if allowed else 0,
            reset_in=reset_in,
            reset_at=wall + reset_in,
        )

    def answered(self, key: str, decision: Decision) -> None:
        """The answer to a request decided by :meth:`check` is being sent now.

        With ``count_on="answer"`` this counts its hit (if it counts), in the window in
        force now; with ``"arrival"`` it does nothing, the hit was counted at the check.
        """
        if self._count_on == "answer" and (decision.allowed or self._count_refused):
            now, _ = self._now()
            self._count(key, self._window(key), now)

    def hit(self, key: str) -> Decision:
        """Check a request that is answered at once: :meth:`check`, then :meth:`answered`."""
        decision = self.check(key)
        self.answered(key, decision)
        return decision

    def reset(self) -> None:
        """Forget every window (a fresh quota for every key) and the busiest window."""
        self._windows.clear()
        self._max_in_window = 0
        self._arrivals.clear()
        self._max_arrived = 0
        self._max_by_key.clear()


#: The name of the limiter when it had one mode; its defaults are still that mode,
#: first-request windows counted on arrival.
FixedWindowLimiter = RateLimiter
