"""Several page clients behind one: each query goes to its workspace's client.

With ``[[workspaces]]`` one run asks for pages under several API keys, each
with its own limiter (its own rate limit, its own learned window). The worker
pool (:mod:`fetcher.run.pool`) runs one set of queries against one client;
:class:`WorkspaceClients` is that client: :meth:`~WorkspaceClients.fetch_page`
hands each query to the client of its ``workspace``, so every key keeps its
own pace while all of them share one pool, one sink and one checkpoint.

:class:`PageSource` is what the pool needs of a client; a
:class:`~fetcher.http.client.PageClient` is one, and so is this router.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from fetcher.errors import ConfigError
from fetcher.http.limiter import LimiterStats

if TYPE_CHECKING:
    from fetcher.http.client import PageClient
    from fetcher.models import Page, ResponseShape
    from fetcher.spec import QuerySpec

__all__ = ["Pacing", "PageSource", "WorkspaceClients"]


class Pacing(Protocol):
    """What the pool reads of a limiter: its counts and whether it holds the workers."""

    @property
    def stats(self) -> LimiterStats:
        """What the limiter did."""
        ...

    @property
    def waiting_until(self) -> float | None:
        """The monotonic time workers are held until, if they are."""
        ...

    @property
    def interval_s(self) -> float:
        """The current average interval between requests."""
        ...


class PageSource(Protocol):
    """What the pool needs of a client: pages, how many at once, the shape, the pace."""

    @property
    def concurrency(self) -> int:
        """Requests in flight at once."""
        ...

    @property
    def max_in_flight(self) -> int:
        """The most requests in flight the limiter may raise ``concurrency`` to."""
        ...

    @property
    def shape(self) -> ResponseShape:
        """Where the records are and which field holds the user id."""
        ...

    @property
    def limiter(self) -> Pacing:
        """The limiter (or limiters) pacing the requests."""
        ...

    async def fetch_page(self, spec: QuerySpec, number: int) -> Page:
        """Fetch and parse one page."""
        ...


class _Limiters:
    """The limiters of several clients, read as one (sums, the soonest wait)."""

    def __init__(self, clients: Mapping[str, PageClient]) -> None:
        self._clients = clients

    @property
    def stats(self) -> LimiterStats:
        total = LimiterStats()
        for client in self._clients.values():
            for field in dataclasses.fields(LimiterStats):
                name = field.name
                mine, theirs = getattr(total, name), getattr(client.limiter.stats, name)
                setattr(
                    total, name, max(mine, theirs) if name == "max_in_flight" else mine + theirs
                )
        return total

    @property
    def waiting_until(self) -> float | None:
        # The run waits only while every key waits; then until the first one goes on.
        waits = [client.limiter.waiting_until for client in self._clients.values()]
        if not waits or any(wait is None for wait in waits):
            return None
        return min(wait for wait in waits if wait is not None)

    @property
    def interval_s(self) -> float:
        # Keys run side by side: their rates add up.
        rates = [1 / i for i in (c.limiter.interval_s for c in self._clients.values()) if i > 0]
        if len(rates) < len(self._clients):
            return 0.0
        return 1 / sum(rates) if rates else 0.0


class WorkspaceClients:
    """One client per workspace, routed by each query's ``workspace``.

    Args:
        clients: workspace name -> its open client (entered by the caller); at
            least one.

    Raises:
        ValueError: no clients.
    """

    def __init__(self, clients: Mapping[str, PageClient]) -> None:
        if not clients:
            raise ValueError("WorkspaceClients needs at least one client")
        self.clients = dict(clients)
        first = next(iter(self.clients.values()))
        self.shape: ResponseShape = first.shape
        self.concurrency = sum(client.concurrency for client in self.clients.values())
        self.max_in_flight = sum(client.max_in_flight for client in self.clients.values())
        self.limiter = _Limiters(self.clients)

    def __repr__(self) -> str:
        return f"WorkspaceClients({', '.join(self.clients)})"

    async def fetch_page(self, spec: QuerySpec, number: int) -> Page:
        """Fetch one page with the client of the query's workspace.

        Raises:
            ConfigError: the query names no workspace, or one without a client.
        """
        client = self.clients.get(spec.workspace or "")
        if client is None:
            raise ConfigError(
                f"query {spec.key} names workspace {spec.workspace!r}, which has no client "
                f"here (workspaces: {', '.join(self.clients)}); check [[workspaces]]",
                field="workspaces",
            )
        return await client.fetch_page(spec, number)
