"""The library's client: the page client, and every page of a query as an async iterator.

:meth:`Client.pages` runs the worker pool (:mod:`fetcher.run.pool`) in the
client's own task group and hands pages out as they arrive::

    async with Client(api_key=key) as client:
        async for page in client.pages(spec):
            ...

Everything about one page (the key, the limiter, the transport, retries) is
:class:`~fetcher.http.client.PageClient`'s; this layer adds the run.
"""

from __future__ import annotations

from collections.abc import Iterable

from fetcher.http.client import PageClient
from fetcher.run.pool import PageStream, Paginator
from fetcher.run.router import PageSource
from fetcher.spec import QuerySpec

__all__ = ["Client"]


class Client(PageClient):
    """An async client for the team-stats endpoint: one page, or every page of a query.

    Takes the arguments of :class:`~fetcher.http.client.PageClient`.
    """

    def pages(
        self, queries: QuerySpec | Iterable[QuerySpec], *, via: PageSource | None = None
    ) -> PageStream:
        """Every page of one or more queries, concurrently, each exactly once.

        Pages arrive in completion order, each tagged with its query and page
        number. Use inside ``async with client:``; iterate with ``async for``.
        Errors that stop the run (a refused key, a page that ran out of
        retries) are raised from the iteration.

        Args:
            queries: one query or several; they share this client's limiter.
            via: fetch the pages through this source instead, in this client's
                task group: a :class:`~fetcher.run.router.WorkspaceClients` of
                which this client is one, for the queries of several keys.
        """
        if self._task_group is None:
            raise RuntimeError("use the client as `async with Client(...) as client:` first")
        specs = [queries] if isinstance(queries, QuerySpec) else list(queries)
        source = self if via is None else via
        paginator = Paginator(source, specs)
        return PageStream.start(self._task_group, paginator, buffer=source.concurrency * 2)
