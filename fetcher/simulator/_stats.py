"""What the simulator saw: counters a test or benchmark asserts on.

Every API request ends in exactly one *outcome*: the HTTP status it was answered
with (``"200"``, ``"429"``, ...), ``"reset"`` when the connection was dropped on
purpose, ``"stall"`` when a stalled request never got its answer (the client
gave up or the server shut down), or ``"aborted"`` when any other request lost
its connection before the answer. Outcomes are counted in ``responses``; the
request's *kind* (why it was answered so) in ``kinds``.

Per-page counters are keyed by ``(query key, page)``: the query key is a short
hash of the request body without ``page``, so two exports of different windows
do not mix, while ``requests_for(page)`` and ``successes_for(page)`` sum over
queries for the common one-query case.

With a rate limit, the snapshot also has a ``"rate"`` object: the limiter's
settings and busiest window (``max_in_window``), and how many requests it
admitted and refused, for real clients and for the foreign client apart.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

from fetcher.simulator._config import FaultKind

__all__ = ["EventKind", "RateLimitView", "RequestEvent", "SimulatorStats"]

#: Why a request was answered the way it was.
EventKind = Literal["ok", "rate_limited", "auth", "invalid"] | FaultKind


@dataclass(frozen=True, slots=True)
class RequestEvent:
    """One finished API request.

    Attributes:
        t: ``time.monotonic()`` when the request arrived.
        page: the body's ``page`` if it was an integer, else ``None``.
        status: the HTTP status answered, ``None`` if no answer was sent (reset, or a
            stalled/delayed request whose connection went away).
        kind: why it was answered so: ``"ok"``, ``"rate_limited"``, ``"auth"``,
            ``"invalid"`` or a fault kind.
        query: the query key (``None`` without a JSON-object body, or for the member list).
    """

    t: float
    page: int | None
    status: int | None
    kind: EventKind
    query: str | None = None


class RateLimitView(Protocol):
    """What the stats read from a rate limiter."""

    def describe(self) -> dict[str, Any]:
        """Its settings and busiest window, as JSON-able data."""
        ...


@dataclass(slots=True)
class _PageCounts:
    requests: int = 0
    successes: int = 0


class SimulatorStats:
    """Counters of one simulator; a fresh instance starts at zero.

    Attributes:
        requests: API requests received (the ``/_simulator`` endpoints are not counted).
        responses: outcomes by HTTP status (as a string), or ``"reset"``/``"stall"``/``"aborted"``.
        kinds: requests by kind (see :class:`RequestEvent`).
        rate_limited: requests refused by the rate limit.
        rate_admitted: requests of real clients the rate limit admitted.
        rate_refused: requests of real clients the rate limit refused.
        foreign_admitted: hits of the foreign client the rate limit admitted.
        foreign_refused: hits of the foreign client the rate limit refused.
        faults: faults injected, by kind (counted when injected).
        in_flight: requests being handled right now.
        max_in_flight: the most requests handled at once.
        events: every finished request, in completion order (sort by ``t`` for arrival order).

    Args:
        rate: the rate limiter whose settings the snapshot's ``"rate"`` object shows;
            ``None`` (no rate limit) leaves that object out.
    """

    def __init__(self, rate: RateLimitView | None = None) -> None:
        self.in_flight = 0
        self._rate = rate
        self.reset()

    def reset(self) -> None:
        """Zero every counter (``in_flight`` is live, so it stays; the maximum restarts from it)."""
        self.requests = 0
        self.responses: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()
        self.rate_limited = 0
        self.rate_admitted = 0
        self.rate_refused = 0
        self.foreign_admitted = 0
        self.foreign_refused = 0
        self.faults: Counter[str] = Counter()
        self.max_in_flight = self.in_flight
        self.events: list[RequestEvent] = []
        self._pages: dict[tuple[str, int], _PageCounts] = {}

    # -- recording (called by the app) ---------------------------------------------------------

    def started(self) -> None:
        """A request arrived."""
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def page_requested(self, query: str, page: int) -> None:
        """An authenticated request named ``page`` of ``query``."""
        self._page(query, page).requests += 1

    def rate_decided(self, *, allowed: bool, foreign: bool = False) -> None:
        """The rate limit admitted (or refused) a request, or a hit of the foreign client."""
        if foreign:
            if allowed:
                self.foreign_admitted += 1
            else:
                self.foreign_refused += 1
        elif allowed:
            self.rate_admitted += 1
        else:
            self.rate_refused += 1

    def fault_injected(self, kind: FaultKind) -> None:
        """A fault replaced the normal answer."""
        self.faults[kind] += 1

    def finished(self, event: RequestEvent, *, success: bool) -> None:
        """A request ended; ``success`` marks a 200 with a complete body."""
        self.in_flight -= 1
        if event.status is not None:
            outcome = str(event.status)
        elif event.kind in ("reset", "stall"):
            outcome = event.kind
        else:
            outcome = "aborted"
        self.responses[outcome] += 1
        self.kinds[event.kind] += 1
        if event.kind == "rate_limited":
            self.rate_limited += 1
        if success and event.query is not None and event.page is not None:
            self._page(event.query, event.page).successes += 1
        self.events.append(event)

    def _page(self, query: str, page: int) -> _PageCounts:
        counts = self._pages.get((query, page))
        if counts is None:
            counts = self._pages[(query, page)] = _PageCounts()
        return counts

    # -- reading ---------------------------------------------------------------------------------

    def requests_for(self, page: int) -> int:
        """Authenticated requests that named ``page``, summed over queries."""
        return sum(c.requests for (_, p), c in self._pages.items() if p == page)

    def successes_for(self, page: int) -> int:
        """Complete 200 answers for ``page``, summed over queries."""
        return sum(c.successes for (_, p), c in self._pages.items() if p == page)

    def pages_fetched_twice(self) -> list[tuple[str, int]]:
        """Every ``(query key, page)`` answered successfully more than once, sorted."""
        return sorted(key for key, c in self._pages.items() if c.successes > 1)

    def snapshot(self, *, include_events: bool = False) -> dict[str, Any]:
        """All counters as plain JSON-able data.

        Args:
            include_events: also list every event (large for long runs).
        """
        snapshot: dict[str, Any] = {
            "requests": self.requests,
            "responses": dict(sorted(self.responses.items())),
            "kinds": dict(sorted(self.kinds.items())),
            "rate_limited": self.rate_limited,
            "faults": dict(sorted(self.faults.items())),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "pages": [
                {"query": query, "page": page, "requests": c.requests, "successes": c.successes}
                for (query, page), c in sorted(self._pages.items())
            ],
            "pages_fetched_twice": [list(key) for key in self.pages_fetched_twice()],
            "event_count": len(self.events),
        }
        if self._rate is not None:
            snapshot["rate"] = {
                **self._rate.describe(),
                "admitted": self.rate_admitted,
                "refused": self.rate_refused,
                "foreign_admitted": self.foreign_admitted,
                "foreign_refused": self.foreign_refused,
            }
        if include_events:
            snapshot["events"] = [asdict(event) for event in self.events]
        return snapshot
