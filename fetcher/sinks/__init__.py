"""Sinks: where pages go as they arrive.

A sink is any object that is an async context manager and has an async
``write(page)`` method (:class:`Sink`). The runner enters it before the first
request, calls ``write`` once per page from a single task (so a sink needs no
locks), and exits it when the run ends: without an exception only when every
page was fetched and written. A sink must therefore finalise its output (rename
the file into place, commit) only on a clean exit, and leave what it wrote
intact otherwise, so that a failed run never leaves output that looks complete.

Example, a sink that counts records per user::

    class CountingSink:
        def __init__(self) -> None:
            self.per_user: dict[str, int] = {}

        async def __aenter__(self) -> "CountingSink":
            return self

        async def __aexit__(self, *exc_info: object) -> None:
            pass

        async def write(self, page: fetcher.Page) -> None:
            for record in page.records:
                user = record["userId"]
                self.per_user[user] = self.per_user.get(user, 0) + 1
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from fetcher.sinks.csv import CsvSink
from fetcher.sinks.duckdb import DuckDBSink
from fetcher.sinks.factory import make_sink
from fetcher.sinks.jsonl import JsonlSink
from fetcher.sinks.memory import MemorySink
from fetcher.sinks.parquet import ParquetSink
from fetcher.sinks.postgres import PostgresSink
from fetcher.sinks.tee import TeeSink

if TYPE_CHECKING:
    from fetcher.models import Page

__all__ = [
    "CsvSink",
    "DuckDBSink",
    "JsonlSink",
    "MemorySink",
    "ParquetSink",
    "PostgresSink",
    "ResumableSink",
    "Sink",
    "TeeSink",
    "make_sink",
]


@runtime_checkable
class Sink(Protocol):
    """The sink protocol: an async context manager that writes pages."""

    async def __aenter__(self) -> Any:
        """Open the output; raise here (before any request) if it cannot be written."""
        ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Finalise the output on a clean exit; keep it, unfinalised, on an exception."""
        ...

    async def write(self, page: Page) -> None:
        """Write one page. Called from one task at a time, in arrival order."""
        ...


@runtime_checkable
class ResumableSink(Sink, Protocol):
    """A sink whose output can be checkpointed and continued after a crash.

    The runner calls :meth:`checkpoint` now and then and records the pages
    written before it as done, with the token it returns. A later run of the
    same export calls :meth:`resume_from` with that token before entering the
    sink; the sink then discards anything written after the checkpoint (those
    pages are fetched again) and appends after it.
    """

    async def checkpoint(self) -> dict[str, Any]:
        """Make every page written so far durable; return a JSON-able token."""
        ...

    def resume_from(self, token: Mapping[str, Any]) -> None:
        """Continue from ``token`` instead of starting afresh (before ``__aenter__``).

        Raises:
            SinkError: when the output cannot be continued; the run then starts over.
        """
        ...
