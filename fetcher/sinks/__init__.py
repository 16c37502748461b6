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

from fetcher.sinks._protocol import ResumableSink, Sink
from fetcher.sinks.csv import CsvSink
from fetcher.sinks.duckdb import DuckDBSink
from fetcher.sinks.factory import make_sink
from fetcher.sinks.jsonl import JsonlSink
from fetcher.sinks.memory import MemorySink
from fetcher.sinks.parquet import ParquetSink
from fetcher.sinks.postgres import PostgresSink
from fetcher.sinks.tee import TeeSink

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
