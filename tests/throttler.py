"""A throttling server in virtual time, to run the limiter against on a fake clock.

It is not the simulator (which serves HTTP on a real port): it is the same
arithmetic a fixed- or sliding-window throttler does, driven by
:class:`tests.fakes.FakeClock`, so a whole run of hundreds of requests at the
limit takes milliseconds and gives the same figures every time.

:func:`drive` sends ``n`` requests through a :class:`~fetcher.http.limiter.Limiter`
the way :class:`~fetcher.http.client.PageClient` does (a slot, the request's latency,
the answer's headers, a refusal's ``Retry-After``, retries until admitted) and
returns what the server saw.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import anyio

from fetcher.http.limiter import Limiter
from fetcher.http.quota import Ticket
from tests.fakes import FakeClock


@dataclass
class Throttler:
    """A server's rate limit: ``limit`` per ``window_s``.

    Args:
        limit: requests per window.
        window_s: the window's length.
        phase_s: fixed windows start at ``phase_s + k * window_s`` (virtual time).
        reset: how ``x-ratelimit-reset`` is written: ``"whole"`` seconds left
            rounded up (at least 1), ``"fraction"`` (milliseconds), ``"epoch"``
            (epoch seconds with milliseconds), or ``None`` (no rate headers).
        sliding: a sliding log instead of fixed windows.
        foreign_per_window: requests another client spends per window, evenly spaced.
        retry_after: refusals carry ``Retry-After`` (whole seconds, rounded up).
        count_on_answer: a request is checked on arrival against the hits counted
            so far, and its hit counted only when it is answered (:meth:`answered`),
            in the window in force then, as the simulator's ``rate_count_on="answer"``
            does: requests in flight are invisible to the check and to ``remaining``.
    """

    limit: int
    window_s: float
    phase_s: float = 0.0
    reset: Literal["whole", "fraction", "epoch"] | None = "whole"
    sliding: bool = False
    foreign_per_window: int = 0
    retry_after: bool = True
    count_on_answer: bool = False
    hits: list[float] = field(default_factory=list)
    refused: int = 0
    foreign_refused: int = 0

    def _window(self, now: float) -> tuple[float, float]:
        k = math.floor((now - self.phase_s) / self.window_s)
        start = self.phase_s + k * self.window_s
        return start, start + self.window_s

    def decide(self, now: float) -> tuple[bool, int, float]:
        """Admit or refuse one request at ``now``: (admitted, remaining, seconds to reset)."""
        if self.sliding:
            recent = [t for t in self.hits if t > now - self.window_s]
            admitted = len(recent) < self.limit
            if admitted:
                self.hits.append(now)
                recent.append(now)
            reset_in = (min(recent) + self.window_s - now) if recent else self.window_s
            return admitted, self.limit - len(recent), reset_in
        start, end = self._window(now)
        used = sum(1 for t in self.hits if start <= t < end)
        admitted = used < self.limit
        if admitted:
            if not self.count_on_answer:
                self.hits.append(now)
            used += 1
        return admitted, self.limit - used, end - now

    def answered(self, now: float, *, admitted: bool) -> None:
        """An answer goes out at ``now``: with :attr:`count_on_answer` its hit counts now."""
        if self.count_on_answer and admitted:
            self.hits.append(now)

    def headers(self, clock: FakeClock, remaining: int, reset_in: float) -> dict[str, str]:
        """The answer's rate-limit headers."""
        if self.reset is None:
            return {}
        if self.reset == "whole":
            reset = str(max(1, math.ceil(reset_in - 1e-9)))
        elif self.reset == "fraction":
            reset = f"{max(reset_in, 0.001):.3f}"
        else:
            reset = f"{clock.wall() + reset_in:.3f}"
        return {
            "x-ratelimit-limit": str(self.limit),
            "x-ratelimit-remaining": str(max(remaining, 0)),
            "x-ratelimit-reset": reset,
        }

    def most_in_any_window(self) -> int:
        """The most admitted requests in one window (any span of one, for a sliding log)."""
        if not self.hits:
            return 0
        if self.sliding:
            return max(sum(1 for t in self.hits if s <= t < s + self.window_s) for s in self.hits)
        counts: dict[float, int] = {}
        for t in self.hits:
            key = self._window(t)[0]
            counts[key] = counts.get(key, 0) + 1
        return max(counts.values())

    async def foreign(self, clock: FakeClock, until: float) -> None:
        """Another client on the same key: ``foreign_per_window`` evenly spaced requests."""
        if not self.foreign_per_window:
            return
        step = self.window_s / self.foreign_per_window
        while clock() < until:
            admitted, _, _ = self.decide(clock())
            self.foreign_refused += not admitted
            await clock.sleep(step)


@dataclass
class Outcome:
    """What one driven run did."""

    done_at: list[float]
    refused: int
    started: float

    @property
    def elapsed(self) -> float:
        return max(self.done_at) - self.started


async def drive(
    limiter: Limiter,
    server: Throttler,
    clock: FakeClock,
    n: int,
    *,
    latency_s: float = 0.15,
    workers: int = 64,
    foreign_until: float | None = None,
    first_alone: bool = False,
    first: int = 1,
    decided_at: float = 0.5,
    delayed: Callable[[Ticket], float] | None = None,
) -> Outcome:
    """Fetch ``n`` pages through ``limiter`` from ``workers`` tasks, each retried until admitted.

    The server decides each request ``decided_at`` of the latency after it is
    sent (half: it counts requests as they arrive; 1: as it answers them, the
    answer at once) and the answer arrives the rest of the latency later.
    ``delayed(ticket)`` adds that many seconds before the decision of the
    request of ``ticket`` (a new connection's handshake, a busy event loop):
    the delay from send to decision varies.
    """
    started = clock()
    done_at: list[float] = []
    # first_alone: page 1 alone (it says how many there are), then the rest, as
    # fetcher's paginator does; ``first`` queries: page 1 of each at once.
    queue = list(range(first if first_alone else n))
    refused = 0

    async def worker() -> None:
        nonlocal refused
        while queue:
            queue.pop()
            while True:
                async with limiter.slot() as ticket:
                    extra = delayed(ticket) if delayed is not None else 0.0
                    await clock.sleep(latency_s * decided_at + extra)
                    admitted, remaining, reset_in = server.decide(clock())
                    headers = server.headers(clock, remaining, reset_in)
                    await clock.sleep(latency_s * (1 - decided_at))
                    server.answered(clock(), admitted=admitted)
                    if admitted:
                        limiter.observe(200, headers, ticket)
                    else:
                        after = math.ceil(reset_in) if server.retry_after else None
                        limiter.refused(after, headers, ticket)
                if admitted:
                    done_at.append(clock())
                    break
                refused += 1
                if server.retry_after and not ticket.probe:  # as the client's retry waits
                    await clock.sleep(max(1, math.ceil(reset_in)))

    async with anyio.create_task_group() as tg:
        if foreign_until is not None:
            tg.start_soon(server.foreign, clock, foreign_until)
        if first_alone:
            async with anyio.create_task_group() as firsts:
                for _ in range(first):
                    firsts.start_soon(worker)
            queue.extend(range(n - first))
        async with anyio.create_task_group() as workers_tg:
            for _ in range(min(workers, n)):
                workers_tg.start_soon(worker)
        tg.cancel_scope.cancel()
    return Outcome(done_at, refused, started)


def ideal_s(server: Throttler, n: int, started: float, latency_s: float) -> float:
    """The least time ``n`` requests take under ``server`` from ``started``.

    Every window's quota sent the moment it opens, the first window's from
    ``started`` (it may be partly over), less what a foreign client spends.
    """
    share = server.limit - server.foreign_per_window
    first_end = server._window(started)[1]
    windows = math.ceil(n / share)
    return (
        (first_end - started) + (windows - 2) * server.window_s + latency_s
        if windows > 1
        else latency_s
    )
